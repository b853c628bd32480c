"""Live record and replay on a real rclpy graph (loopback): bytes, timing, QoS, remapping, /clock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ros_seqplanner.bags.reader import BagError, open_bag
from ros_seqplanner.bags.writer import BagWriter, default_qos

pytestmark = pytest.mark.ros

T0 = 1_700_000_000_000_000_000
PERIOD_NS = 20_000_000  # 50 Hz


def _make_bag(path: Path, n: int = 30, **kw) -> Path:
    """n Float64MultiArray states at 50 Hz (best effort) and a reliable Float64 after each."""
    with BagWriter(path, **kw) as w:
        w.add_topic("/state", "std_msgs/msg/Float64MultiArray", offered_qos=[default_qos(1, reliable=False)])
        w.add_topic("/value", "std_msgs/msg/Float64", offered_qos=[default_qos(10)])
        T = w.typestore.types
        lay = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        for i in range(n):
            t = T0 + i * PERIOD_NS
            w.write_message("/state", t, T["std_msgs/msg/Float64MultiArray"](layout=lay, data=np.array([i, -i], float)))
            w.write_message("/value", t + 1_000_000, T["std_msgs/msg/Float64"](data=float(i)))
    return path


class Sink:
    """A node that keeps (arrival time, raw bytes) per topic, spun on its own executor thread."""

    def __init__(self, ctx, topics: dict[str, type], reliable: bool = True) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.node = rclpy.create_node("sink", context=ctx)
        self.got: dict[str, list[tuple[float, bytes]]] = {t: [] for t in topics}
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        for topic, cls in topics.items():
            self.node.create_subscription(cls, topic, lambda d, _t=topic: self.got[_t].append(
                (time.monotonic(), d)), qos, raw=True)
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)
        from ros_seqplanner.spinning import SpinThread

        self.spinner = SpinThread(self.executor).start()

    def close(self) -> None:
        self.spinner.stop(timeout_s=5.0)
        self.node.destroy_node()


def test_replay_publishes_the_stored_bytes_with_scaled_timing(tmp_path: Path, ros_context) -> None:
    from std_msgs.msg import Float64, Float64MultiArray

    from ros_seqplanner.bags.replay import ReplayOptions, replay_bag

    bag = _make_bag(tmp_path / "bag", max_bag_duration_ns=200_000_000)  # split into 3 files
    with open_bag(bag) as b:
        stored = {t: [r.data for r in b.raw_messages([t])] for t in ("/state", "/value")}
        assert len(b.info.files) == 3
    sink = Sink(ros_context, {"/robot/state": Float64MultiArray, "/value": Float64}, reliable=False)
    try:
        opts = ReplayOptions(rate=2.0, remap={"/state": "/robot/state"},
                             wait_for_subscribers=["/robot/state", "/value"])
        stats = replay_bag(bag, opts, context=ros_context)
        time.sleep(0.2)
    finally:
        sink.close()
    assert stats.published == {"/state": 30, "/value": 30}
    assert [d for _, d in sink.got["/robot/state"]] == stored["/state"]
    assert [d for _, d in sink.got["/value"]] == stored["/value"]
    span = 29 * PERIOD_NS / 1e9 / 2.0  # bag span at rate 2
    assert span <= stats.wall_s < span + 0.25
    arrivals = np.array([t for t, _ in sink.got["/robot/state"]])
    np.testing.assert_allclose(arrivals[-1] - arrivals[0], span, atol=0.1)
    p50, _ = stats.lateness_percentiles()
    assert p50 < 5.0


def test_start_offset_clock_and_topic_selection(tmp_path: Path, ros_context) -> None:
    from rclpy.serialization import deserialize_message
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import Float64

    from ros_seqplanner.bags.replay import ReplayOptions, replay_bag

    bag = _make_bag(tmp_path / "bag", storage="sqlite3")
    sink = Sink(ros_context, {"/value": Float64, "/clock": Clock}, reliable=False)
    try:
        opts = ReplayOptions(topics=["/value"], start_offset_s=0.3, publish_clock=True, clock_hz=200.0,
                             wait_for_subscribers=["/value"])
        stats = replay_bag(bag, opts, context=ros_context)
        time.sleep(0.2)
    finally:
        sink.close()
    values = [deserialize_message(d, Float64).data for _, d in sink.got["/value"]]
    assert values == [float(i) for i in range(15, 30)]  # messages before T0 + 0.3 s skipped
    assert stats.published == {"/value": 15}
    clock = [deserialize_message(d, Clock).clock for _, d in sink.got["/clock"]]
    ns = np.array([c.sec * 1_000_000_000 + c.nanosec for c in clock])
    assert len(ns) >= 15 and np.all(np.diff(ns) >= 0)
    assert ns[0] >= T0 + 300_000_000 and ns[-1] <= T0 + 29 * PERIOD_NS + 1_000_000


def test_playback_qos_follows_the_recorded_offers() -> None:
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    from ros_seqplanner.bags.replay import playback_qos

    q = playback_qos([default_qos(1, reliable=False)])
    assert (q.reliability, q.durability, q.depth) == (ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE, 10)
    q = playback_qos([default_qos(20, transient_local=True)] * 2)
    assert (q.reliability, q.durability, q.depth) == (ReliabilityPolicy.RELIABLE,
                                                      DurabilityPolicy.TRANSIENT_LOCAL, 20)
    mixed = playback_qos([default_qos(5, transient_local=True), default_qos(5, reliable=False)])
    assert (mixed.reliability, mixed.durability) == (ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE)


def test_replay_skips_types_this_install_lacks(ros_context) -> None:
    """test_msgs is not installed: that topic is reported, not silently dropped or crashing."""
    from ros_seqplanner.bags.replay import ReplayOptions, replay_bag

    fixtures = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "rosbag2"
    if not fixtures.is_dir():
        pytest.skip(f"rosbag2 fixtures not found at {fixtures}")
    talker = fixtures / "rosbag2_py/test/resources/sqlite3/talker/talker.db3"  # a bare storage file
    stats = replay_bag(talker, ReplayOptions(rate=50.0), context=ros_context)
    assert stats.published["/topic"] == 10 and stats.published["/rosout"] == 10
    cdr = fixtures / "rosbag2_tests/resources/mcap/cdr_test"
    stats = replay_bag(cdr, ReplayOptions(rate=50.0), context=ros_context)
    assert set(stats.skipped_topics) == {"/test_topic", "/array_topic"} and stats.total == 0
    with pytest.raises(BagError, match="not installed"):
        replay_bag(cdr, ReplayOptions(skip_unknown_types=False), context=ros_context)


def test_record_live_topics_with_offered_qos(tmp_path: Path, ros_context) -> None:
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Float64, String

    from ros_seqplanner.bags.record import record_topics

    pub_node = rclpy.create_node("talker", context=ros_context)
    fast = pub_node.create_publisher(Float64, "/fast", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    latched = pub_node.create_publisher(String, "/latched", QoSProfile(
        depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    latched.publish(String(data="configured"))  # before the recorder exists: transient local delivers it
    sent: list[bytes] = []
    stop = threading.Event()

    def talk() -> None:
        deadline = time.monotonic() + 5.0
        while not fast.get_subscription_count() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        for i in range(20):
            msg = Float64(data=i * 0.5)
            fast.publish(msg)
            sent.append(serialize_message(msg))
            time.sleep(0.01)
        time.sleep(0.2)
        stop.set()

    rec_node = rclpy.create_node("recorder", context=ros_context)
    thread = threading.Thread(target=talk)
    thread.start()
    try:
        out = record_topics(tmp_path / "rec", ["/fast", "/latched"], node=rec_node, stop=stop, storage="sqlite3")
    finally:
        thread.join()
        rec_node.destroy_node()
        pub_node.destroy_node()
    with open_bag(out) as bag:
        got = [r.data for r in bag.raw_messages(["/fast"])]
        latched_msgs = [m.data for _, m in bag.messages(["/latched"])]
        stamps = [r.timestamp_ns for r in bag.raw_messages()]
    assert got == sent
    assert latched_msgs == ["configured"]
    assert stamps == sorted(stamps)
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    qos = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"][0]
           for t in meta["topics_with_message_count"]}
    assert qos["/fast"]["reliability"] == "best_effort"
    assert qos["/latched"]["durability"] == "transient_local"
    assert meta["message_count"] == 21 and meta["storage_identifier"] == "sqlite3"


def test_replay_cli_reports_what_it_published(tmp_path: Path, capsys) -> None:
    from ros_seqplanner.cli import main

    bag = _make_bag(tmp_path / "bag", n=10)
    assert main(["replay", str(bag), "--rate", "10", "--remap", "/state:=/s2"]) == 0
    out = capsys.readouterr().out
    assert "published 20 messages" in out and "/state: 10" in out
    assert main(["replay", str(tmp_path / "missing")]) == 1


def test_record_cli_records_live_topics(tmp_path: Path, ros_context, capsys) -> None:
    import rclpy
    from std_msgs.msg import String

    from ros_seqplanner.cli import main

    node = rclpy.create_node("chatter", context=ros_context)
    pub = node.create_publisher(String, "/chatter", 10)
    stop = threading.Event()

    def talk() -> None:
        i = 0
        while not stop.is_set():
            pub.publish(String(data=f"hello {i}"))
            i += 1
            time.sleep(0.02)

    thread = threading.Thread(target=talk)
    thread.start()
    try:
        rc = main(["record", str(tmp_path / "rec"), "--topics", "/chatter", "--duration", "1.5", "--storage",
                   "sqlite3"])
    finally:
        stop.set()
        thread.join()
        node.destroy_node()
    assert rc == 0
    with open_bag(tmp_path / "rec") as bag:
        texts = [m.data for _, m in bag.messages(["/chatter"])]
    assert len(texts) >= 20
    numbers = [int(t.split()[1]) for t in texts]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # none lost, in order
    assert "/chatter [std_msgs/msg/String]" in capsys.readouterr().out
    assert main(["record", str(tmp_path / "x")]) == 2  # neither --topics nor --episode
