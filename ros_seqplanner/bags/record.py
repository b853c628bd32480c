"""Record live topics into a rosbag2 bag (like ``ros2 bag record``), from a running rclpy graph.

Subscriptions are raw (``raw=True``): the CDR bytes arrive untouched and go straight into the
:class:`~ros_seqplanner.bags.writer.BagWriter`, stamped with the recording node's clock at receipt
(``use_sim_time`` makes that /clock time). Each topic's type and the QoS its publishers offer are
read from the graph; the offers are stored in metadata.yaml and the subscription requests QoS
compatible with all of them (rosbag2's rule: RELIABLE only if every publisher offers it,
TRANSIENT_LOCAL likewise). Topics not yet published are picked up when they appear.

Imports rclpy (recording needs a live graph); the rest of ``bags/`` is ROS-free.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from ros_seqplanner.bags.reader import BagError
from ros_seqplanner.bags.replay import message_class
from ros_seqplanner.bags.writer import BagWriter

_INFINITE_NS = 9223372036854775807  # RMW_DURATION_INFINITE as nanoseconds


def _qos_time(duration) -> QosTime:
    ns = int(duration.nanoseconds)
    if ns >= _INFINITE_NS or ns < 0:  # rosbag2 stores 'infinite' as the rmw sentinel
        return QosTime(9223372036, 854775807)
    return QosTime(*divmod(ns, 1_000_000_000))


def qos_to_rosbags(profile: QoSProfile) -> Qos:
    """An rclpy QoSProfile as rosbags' Qos (the enum values are rmw's on both sides)."""
    return Qos(
        QosHistory(int(profile.history)), int(profile.depth), QosReliability(int(profile.reliability)),
        QosDurability(int(profile.durability)), _qos_time(profile.deadline), _qos_time(profile.lifespan),
        QosLiveliness(int(profile.liveliness)), _qos_time(profile.liveliness_lease_duration),
        bool(profile.avoid_ros_namespace_conventions),
    )


def request_qos(offers: Sequence[QoSProfile], depth: int = 100) -> QoSProfile:
    """A subscription QoS compatible with every offer (rosbag2 recorder's adaptation)."""
    reliable = bool(offers) and all(o.reliability == ReliabilityPolicy.RELIABLE for o in offers)
    transient = bool(offers) and all(o.durability == DurabilityPolicy.TRANSIENT_LOCAL for o in offers)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
    )


class TopicRecorder:
    """Subscribes ``node`` (raw) to ``topics`` and writes every message into ``writer``.

    The node must be spun by the caller's executor. :meth:`discover` subscribes to topics that have
    appeared since; it runs on a timer every ``discovery_period_s``. ``types`` pins a topic's type
    (otherwise the graph's type is used once a publisher exists). ``stamp``: 'receive' (DDS reception
    time, the default) or 'node' (the node's clock at the callback; the default under use_sim_time).
    """

    def __init__(self, node: Node, writer: BagWriter, topics: Sequence[str], *,
                 types: dict[str, str] | None = None, discovery_period_s: float = 0.1,
                 stamp: str | None = None) -> None:
        if not topics:
            raise BagError("nothing to record: give at least one topic")
        self.node, self.writer = node, writer
        self.topics = [node.resolve_topic_name(t) for t in topics]
        self.types = dict(types or {})
        sim_time = node.has_parameter("use_sim_time") and node.get_parameter("use_sim_time").value
        self.stamp = stamp or ("node" if sim_time else "receive")
        if self.stamp not in ("node", "receive"):
            raise BagError(f"stamp must be 'receive' or 'node', got {self.stamp!r}")
        self.subscriptions: dict[str, object] = {}
        self.received: dict[str, int] = dict.fromkeys(self.topics, 0)
        self._lock = threading.Lock()
        self._closed = False
        self.discover()
        self._timer = node.create_timer(discovery_period_s, self.discover)

    def discover(self) -> None:
        """Subscribe to every wanted topic that now has a publisher (or a pinned type)."""
        pending = [t for t in self.topics if t not in self.subscriptions]
        if not pending or self._closed:
            return
        graph = dict(self.node.get_topic_names_and_types())
        for topic in pending:
            infos = [i for i in self.node.get_publishers_info_by_topic(topic)]
            msgtype = self.types.get(topic) or (graph.get(topic) or [None])[0]
            if msgtype is None or (topic not in self.types and not infos):
                continue
            offers = [i.qos_profile for i in infos]
            cls = message_class(msgtype)
            self.writer.add_topic(topic, msgtype, offered_qos=[qos_to_rosbags(q) for q in offers] or None)
            # No QoS event handlers: the recorder's subscriptions are destroyed while another thread may
            # still be spinning, and a destroyed event handler in a wait set raises InvalidHandle there.
            self.subscriptions[topic] = self.node.create_subscription(
                cls, topic, self._callback(topic), request_qos(offers), raw=True,
                event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False))

    def _callback(self, topic: str):
        def on_message(data: bytes, info: dict) -> None:
            self._on_message(topic, data, info)

        return on_message

    def _stamp(self, info: dict) -> int:
        """Bag timestamp: the DDS reception time (system clock) as ``ros2 bag record`` stores it, so
        executor scheduling never reorders messages; the node clock under use_sim_time or if missing."""
        received = int(info.get("received_timestamp") or 0) if info else 0
        if self.stamp == "node" or received <= 0:
            return self.node.get_clock().now().nanoseconds
        return received

    def _on_message(self, topic: str, data: bytes, info: dict | None = None) -> None:
        stamp = self._stamp(info or {})
        with self._lock:
            if self._closed:
                return
            self.writer.write(topic, stamp, data)
            self.received[topic] += 1

    def missing(self) -> list[str]:
        """Wanted topics not subscribed yet (no publisher seen)."""
        return [t for t in self.topics if t not in self.subscriptions]

    def wait_subscribed(self, timeout_s: float) -> list[str]:
        """Poll discovery (the caller spins elsewhere) until all topics are subscribed or timeout."""
        deadline = time.monotonic() + timeout_s
        while self.missing() and time.monotonic() < deadline:
            time.sleep(0.05)
            self.discover()
        return self.missing()

    def stop(self) -> None:
        """Stop writing: messages arriving from now on are dropped (safe while another thread spins)."""
        with self._lock:
            self._closed = True

    def close(self) -> None:
        """Stop recording and destroy the subscriptions (the writer is closed by its owner). Call it
        after the executor has stopped spinning, or after :meth:`stop` when it cannot be stopped."""
        self.stop()
        self.node.destroy_timer(self._timer)
        for sub in self.subscriptions.values():
            self.node.destroy_subscription(sub)
        self.subscriptions.clear()


def record_topics(bag_path: str | Path, topics: Sequence[str], *, node: Node, duration_s: float | None = None,
                  storage: str = "mcap", stop: threading.Event | None = None, max_messages: int | None = None,
                  types: dict[str, str] | None = None, max_bag_size: int = 0) -> Path:
    """Record ``topics`` until ``duration_s`` elapses, ``stop`` is set or ``max_messages`` arrived.

    The node is spun here (a private single-threaded executor); returns the closed bag directory.
    """
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    writer = BagWriter(bag_path, storage=storage, max_bag_size=max_bag_size, background=True)
    recorder = None
    try:
        recorder = TopicRecorder(node, writer, topics, types=types)
        t_end = None if duration_s is None else time.monotonic() + duration_s
        try:
            while node.context.ok():
                executor.spin_once(timeout_sec=0.02)
                if stop is not None and stop.is_set():
                    break
                if t_end is not None and time.monotonic() >= t_end:
                    break
                if max_messages is not None and sum(recorder.received.values()) >= max_messages:
                    break
        except KeyboardInterrupt:  # Ctrl-C ends a recording normally: keep what was recorded
            pass
    except BaseException:
        if recorder is not None:
            recorder.close()
        writer.abort()
        executor.remove_node(node)
        raise
    if recorder.missing():
        node.get_logger().warning(f"never saw a publisher on {recorder.missing()}: not in the bag")
    recorder.close()
    executor.remove_node(node)
    return writer.close()
