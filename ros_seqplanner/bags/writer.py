"""Write rosbag2 bags (MCAP by default, sqlite3 on request), optionally split, without ROS.

Storage files are written by ``rosbags``' Writer (one per split, named ``<bag>_<k>.<ext>`` like
``ros2 bag record``); this module adds splitting and writes the combined ``metadata.yaml``
(version 9: message counts per topic, offered QoS profiles, serialization format, start time,
duration, per-file info) that ``ros2 bag info`` and :func:`~ros_seqplanner.bags.reader.open_bag` read.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.errors import WriterError
from rosbags.rosbag2.metadata import dump_qos_v9
from rosbags.typesys import get_typestore

from ros_seqplanner.bags.reader import BASE_STORE, BagError

METADATA_VERSION = 9
_PLUGINS = {"mcap": (StoragePlugin.MCAP, ".mcap"), "sqlite3": (StoragePlugin.SQLITE3, ".db3")}


def default_qos(depth: int = 10, *, reliable: bool = True, transient_local: bool = False) -> Qos:
    """A plain QoS profile (keep-last ``depth``) in rosbags' representation."""
    zero = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST, depth,
        QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        zero, zero, QosLiveliness.AUTOMATIC, zero, False,
    )


@dataclass
class _Topic:
    name: str
    msgtype: str
    offered_qos: list[Qos]
    msgdef: str
    type_hash: str
    count: int = 0


@dataclass
class _Split:
    writer: Writer
    file: Path
    conns: dict[str, Any] = field(default_factory=dict)
    count: int = 0
    nbytes: int = 0
    t0: int = 2**63 - 1
    t1: int = 0


class BagWriter:
    """Create a new bag directory and write serialized (CDR) messages into it.

    ``max_bag_size`` (bytes of message data) and ``max_bag_duration_ns`` start a new storage file
    when exceeded (0 = never), like ``ros2 bag record --max-bag-size/--max-bag-duration``.
    Use as a context manager; metadata.yaml is written on close.

    ``background=True`` (what the recorders use): every storage operation runs on one writer thread
    fed by a queue, so subscription callbacks on any executor thread only enqueue (sqlite3
    connections must stay on the thread that made them, and disk I/O never blocks a callback). An
    error there is raised by the next call or by :meth:`close`.
    """

    def __init__(self, path: str | Path, *, storage: str = "mcap", max_bag_size: int = 0,
                 max_bag_duration_ns: int = 0, custom_data: dict[str, str] | None = None,
                 background: bool = False) -> None:
        self.path = Path(path)
        if storage not in _PLUGINS:
            raise BagError(f"storage must be one of {sorted(_PLUGINS)}, got {storage!r}")
        if self.path.exists():
            raise BagError(f"{self.path} exists already; choose a new bag name (a bag is never overwritten)")
        self.storage = storage
        self.max_bag_size = int(max_bag_size)
        self.max_bag_duration_ns = int(max_bag_duration_ns)
        self.custom_data = dict(custom_data or {})
        self.typestore = get_typestore(BASE_STORE)
        self.topics: dict[str, _Topic] = {}
        self.splits: list[_Split] = []
        self.closed = False
        self.path.mkdir(parents=True)
        self._queue: queue.SimpleQueue | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._drain, name=f"bag-writer:{self.path.name}", daemon=True)
            self._thread.start()

    # -- the writer thread -----------------------------------------------------------------------
    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn`` now, or on the writer thread in background mode."""
        if self._error is not None:
            raise BagError(f"writing {self.path} failed: {self._error!r}") from self._error
        if self._queue is None:
            fn(*args)
        else:
            self._queue.put((fn, args))

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            if self._error is None:
                try:
                    fn(*args)
                except BaseException as exc:  # reported to the caller by _run/close
                    self._error = exc

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    # -- topics ----------------------------------------------------------------------------------
    def add_topic(self, name: str, msgtype: str, *, offered_qos: list[Qos] | None = None,
                  msgdef: str | None = None, type_hash: str | None = None) -> None:
        """Declare a topic. The definition comes from ROS 2 Kilted unless ``msgdef``+``type_hash``."""
        if name in self.topics:
            if self.topics[name].msgtype != msgtype:
                raise BagError(f"topic {name} already added with type {self.topics[name].msgtype}, not {msgtype}")
            return
        if msgdef is None or not type_hash:
            if msgtype not in self.typestore.fielddefs:
                raise BagError(f"unknown message type {msgtype}: not in ROS 2 {BASE_STORE.value}; "
                               "pass msgdef and type_hash")
            msgdef, _ = self.typestore.generate_msgdef(msgtype, ros_version=2)
            type_hash = self.typestore.hash_rihs01(msgtype)
        if self.closed:
            raise BagError(f"bag {self.path} is closed")
        self.topics[name] = _Topic(name, msgtype, list(offered_qos or [default_qos()]), msgdef, type_hash)
        self._run(self._connect_current, self.topics[name])

    def _connect_current(self, t: _Topic) -> None:
        if self.splits:
            self._connect(self.splits[-1], t)

    def _connect(self, split: _Split, t: _Topic) -> None:
        split.conns[t.name] = split.writer.add_connection(
            t.name, t.msgtype, msgdef=t.msgdef, rihs01=t.type_hash, offered_qos_profiles=t.offered_qos)

    # -- writing ---------------------------------------------------------------------------------
    def _new_split(self) -> _Split:
        k = len(self.splits)
        plugin, ext = _PLUGINS[self.storage]
        sub = self.path / f"{self.path.name}_{k}"
        w = Writer(sub, version=METADATA_VERSION, storage_plugin=plugin)
        w.open()
        split = _Split(w, self.path / f"{self.path.name}_{k}{ext}")
        self.splits.append(split)
        for t in self.topics.values():  # every storage file lists every topic, like ros2 bag record
            self._connect(split, t)
        return split

    def _split_for(self, timestamp_ns: int, nbytes: int) -> _Split:
        if not self.splits:
            return self._new_split()
        cur = self.splits[-1]
        full = self.max_bag_size and cur.count and cur.nbytes + nbytes > self.max_bag_size
        long = self.max_bag_duration_ns and cur.count and timestamp_ns - cur.t0 >= self.max_bag_duration_ns
        if full or long:
            self._finish(cur)
            return self._new_split()
        return cur

    def write(self, topic: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        """Append one serialized message (CDR bytes) received at ``timestamp_ns``."""
        if self.closed:
            raise BagError(f"bag {self.path} is closed")
        if topic not in self.topics:
            raise BagError(f"topic {topic} was not added; call add_topic first")
        self._run(self._write_now, self.topics[topic], int(timestamp_ns), bytes(data))

    def _write_now(self, t: _Topic, timestamp_ns: int, data: bytes) -> None:
        topic = t.name
        split = self._split_for(int(timestamp_ns), len(data))
        split.writer.write(split.conns[topic], int(timestamp_ns), bytes(data))
        split.count += 1
        split.nbytes += len(data)
        split.t0, split.t1 = min(split.t0, int(timestamp_ns)), max(split.t1, int(timestamp_ns))
        t.count += 1

    def write_message(self, topic: str, timestamp_ns: int, message: Any) -> None:
        """Serialize a rosbags message object with the Kilted typestore and write it."""
        data = self.typestore.serialize_cdr(message, self.topics[topic].msgtype)
        self.write(topic, timestamp_ns, data)

    def _finish(self, split: _Split) -> None:
        """Close one split's storage and move its file up into the bag directory."""
        sub = split.writer.path
        try:
            split.writer.close()
        except WriterError as exc:
            raise BagError(f"cannot finish {sub}: {exc}") from exc
        produced = sub / (sub.name + split.file.suffix)
        produced.replace(split.file)
        shutil.rmtree(sub)

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> Path:
        """Finish the last storage file and write metadata.yaml. Returns the bag directory."""
        if self.closed:
            return self.path
        self.closed = True
        self._run(self._close_now)
        self._stop_thread()
        if self._error is not None:
            self.abort()
            raise BagError(f"writing {self.path} failed: {self._error!r}") from self._error
        (self.path / "metadata.yaml").write_text(yaml.safe_dump(self.metadata(), sort_keys=False))
        return self.path

    def _close_now(self) -> None:
        if not self.splits:  # an empty bag still gets one (empty) storage file, like ros2 bag record
            self._new_split()
        self._finish(self.splits[-1])

    def metadata(self) -> dict[str, Any]:
        """The metadata.yaml document (version 9) describing what was written."""
        count = sum(s.count for s in self.splits)
        t0 = min((s.t0 for s in self.splits if s.count), default=0)
        t1 = max((s.t1 for s in self.splits if s.count), default=0)
        info = {
            "version": METADATA_VERSION,
            "storage_identifier": self.storage,
            "duration": {"nanoseconds": t1 - t0},
            "starting_time": {"nanoseconds_since_epoch": t0},
            "message_count": count,
            "topics_with_message_count": [
                {"topic_metadata": {
                    "name": t.name, "type": t.msgtype, "serialization_format": "cdr",
                    "offered_qos_profiles": dump_qos_v9(t.offered_qos), "type_description_hash": t.type_hash,
                }, "message_count": t.count}
                for t in self.topics.values()
            ],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [s.file.name for s in self.splits],
            "files": [
                {"path": s.file.name, "starting_time": {"nanoseconds_since_epoch": s.t0 if s.count else 0},
                 "duration": {"nanoseconds": s.t1 - s.t0 if s.count else 0}, "message_count": s.count}
                for s in self.splits
            ],
            "custom_data": self.custom_data or None,
            "ros_distro": "rosbags",
        }
        return {"rosbag2_bagfile_information": info}

    def abort(self) -> None:
        """Drop everything written (used when recording fails)."""
        self.closed = True
        if self._thread is not None:
            self._queue.put((self._abort_now, ()))
            self._stop_thread()
        else:
            self._abort_now()
        shutil.rmtree(self.path, ignore_errors=True)

    def _abort_now(self) -> None:
        for s in self.splits:
            with contextlib.suppress(Exception):  # best effort: the directory is deleted anyway
                s.writer.abort()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
