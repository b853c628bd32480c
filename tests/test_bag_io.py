"""BagWriter -> open_bag round trips: both storages, split bags, single storage files, metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.interfaces import QosDurability, QosReliability
from rosbags.rosbag2 import Reader

from ros_seqplanner.bags.reader import BagError, open_bag
from ros_seqplanner.bags.writer import BagWriter, default_qos


def _write(path: Path, storage: str, n: int = 25, **kw) -> list[tuple[str, int, np.ndarray]]:
    """n observation arrays at 10 Hz and a reward after each; returns what was written."""
    written = []
    with BagWriter(path, storage=storage, **kw) as w:
        w.add_topic("/observation", "std_msgs/msg/Float64MultiArray",
                    offered_qos=[default_qos(1, reliable=False)])
        w.add_topic("/reward", "std_msgs/msg/Float64", offered_qos=[default_qos(10, transient_local=True)])
        w.add_topic("/unused", "std_msgs/msg/String")
        types = w.typestore.types
        for i in range(n):
            t = 1_700_000_000_000_000_000 + i * 100_000_000
            obs = np.arange(3, dtype=np.float64) + i
            w.write_message("/observation", t, types["std_msgs/msg/Float64MultiArray"](
                layout=types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0), data=obs))
            w.write_message("/reward", t + 1000, types["std_msgs/msg/Float64"](data=float(i)))
            written += [("/observation", t, obs), ("/reward", t + 1000, np.array([float(i)]))]
    return written


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_write_then_read_back_exactly(tmp_path: Path, storage: str) -> None:
    written = _write(tmp_path / "bag", storage)
    with open_bag(tmp_path / "bag") as bag:
        assert bag.info.storage == storage and bag.read_count == len(written)
        got = [(raw.topic, raw.timestamp_ns, np.atleast_1d(np.asarray(m.data))) for raw, m in bag.messages()]
    assert [(t, ts) for t, ts, _ in got] == [(t, ts) for t, ts, _ in written]
    for (_, _, a), (_, _, b) in zip(got, written):
        np.testing.assert_array_equal(a, b)


def test_metadata_is_what_ros2_bag_info_reads(tmp_path: Path) -> None:
    written = _write(tmp_path / "bag", "mcap")
    meta = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    stamps = [ts for _, ts, _ in written]
    assert meta["version"] == 9 and meta["storage_identifier"] == "mcap"
    assert meta["message_count"] == len(written)
    assert meta["starting_time"]["nanoseconds_since_epoch"] == min(stamps)
    assert meta["duration"]["nanoseconds"] == max(stamps) - min(stamps)
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    assert {k: v["message_count"] for k, v in topics.items()} == {"/observation": 25, "/reward": 25, "/unused": 0}
    assert all(t["topic_metadata"]["serialization_format"] == "cdr" for t in topics.values())
    assert topics["/observation"]["topic_metadata"]["offered_qos_profiles"][0]["reliability"] == "best_effort"
    assert topics["/reward"]["topic_metadata"]["type_description_hash"].startswith("RIHS01_")
    # rosbags' own directory reader (the reference parser) agrees, QoS included
    with Reader(tmp_path / "bag") as r:
        assert sum(1 for _ in r.messages()) == len(written)
        qos = {c.topic: c.ext.offered_qos_profiles[0] for c in r.connections}
    assert qos["/observation"].reliability == QosReliability.BEST_EFFORT
    assert qos["/reward"].durability == QosDurability.TRANSIENT_LOCAL


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_split_bag_reads_as_one_time_ordered_stream(tmp_path: Path, storage: str) -> None:
    written = _write(tmp_path / "bag", storage, max_bag_duration_ns=1_000_000_000)
    meta = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert len(meta["relative_file_paths"]) == 3
    assert [f["message_count"] for f in meta["files"]] == [20, 20, 10]
    with open_bag(tmp_path / "bag") as bag:
        stamps = [raw.timestamp_ns for raw in bag.raw_messages()]
    assert stamps == sorted(ts for _, ts, _ in written)
    # each split file alone is a readable storage file with its own share of the messages
    for f in meta["files"]:
        with open_bag(tmp_path / "bag" / f["path"]) as part:
            assert part.read_count == f["message_count"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_single_storage_file_without_metadata(tmp_path: Path, storage: str) -> None:
    written = _write(tmp_path / "bag", storage)
    (f,) = [p for p in (tmp_path / "bag").iterdir() if p.suffix in (".mcap", ".db3")]
    alone = tmp_path / f.name
    f.rename(alone)
    with open_bag(alone) as bag:
        assert not bag.info.has_metadata
        assert bag.read_count == len(written)
        assert {t: i.message_count for t, i in bag.info.topics.items() if i.message_count} == {
            "/observation": 25, "/reward": 25}


def test_size_split_and_topic_filter(tmp_path: Path) -> None:
    _write(tmp_path / "bag", "mcap", n=40, max_bag_size=400)
    with open_bag(tmp_path / "bag") as bag:
        assert len(bag.info.files) > 2
        rewards = [m.data for _, m in bag.messages(["/reward"])]
        with pytest.raises(BagError, match="not in bag"):
            bag.raw_messages(["/nope"])
    assert rewards == [float(i) for i in range(40)]


def test_writer_refuses_bad_use(tmp_path: Path) -> None:
    (tmp_path / "exists").mkdir()
    with pytest.raises(BagError, match="exists already"):
        BagWriter(tmp_path / "exists")
    with pytest.raises(BagError, match="storage must be one of"):
        BagWriter(tmp_path / "b1", storage="rosbag1")
    w = BagWriter(tmp_path / "b2")
    with pytest.raises(BagError, match="unknown message type"):
        w.add_topic("/x", "my_msgs/msg/Nope")
    with pytest.raises(BagError, match="was not added"):
        w.write("/x", 0, b"\x00\x01\x00\x00")
    w.close()
    with open_bag(tmp_path / "b2") as bag:  # an empty bag is a valid bag
        assert bag.read_count == 0


def test_failed_recording_leaves_no_half_bag(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), BagWriter(tmp_path / "bag") as w:
        w.add_topic("/reward", "std_msgs/msg/Float64")
        w.write_message("/reward", 1, w.typestore.types["std_msgs/msg/Float64"](data=1.0))
        raise RuntimeError("recorder crashed")
    assert not (tmp_path / "bag").exists()
