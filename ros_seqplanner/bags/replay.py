"""Publish a bag into a live ROS 2 graph with its original timing (like ``ros2 bag play``).

The stored CDR bytes are published unchanged (``Publisher.publish(bytes)`` -> ``publish_raw``), so
no message is deserialized on the way. Options: rate factor, start offset, topic selection and
remapping, optional ``/clock`` publication (bag time), and per-topic QoS derived from the bag's
offered QoS profiles the way rosbag2's player adapts them:

- reliability: RELIABLE if every recorded publisher offered it, else BEST_EFFORT;
- durability: TRANSIENT_LOCAL if every recorded publisher offered it, else VOLATILE;
- history: KEEP_LAST with depth ``max(10, recorded depth)`` (rosbag2 plays with its own depth, 10).

This is the only module of ``bags/`` that imports rclpy.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import Qos, QosDurability, QosReliability

from ros_seqplanner.bags.reader import Bag, BagError, TopicInfo, open_bag
from ros_seqplanner.spinning import SpinThread


@dataclass
class ReplayOptions:
    """How to play. ``topics`` None = all; ``remap`` maps bag topic -> published topic."""

    rate: float = 1.0
    start_offset_s: float = 0.0
    topics: Sequence[str] | None = None
    remap: dict[str, str] = field(default_factory=dict)
    publish_clock: bool = False
    clock_topic: str = "/clock"
    clock_hz: float = 100.0  # /clock rate while waiting between messages (also one per message)
    wait_for_subscribers: Sequence[str] = ()  # published topic names that must be matched before start
    wait_timeout_s: float = 10.0
    skip_unknown_types: bool = True  # ros2 bag play fails; here a topic without Python type is skipped
    # Pacing by the system under test (not in ros2 bag play): once a message on ``pace_trigger_topic``
    # (default: the first of ``pace_topics``) was published, no message on a ``pace_topics`` topic is
    # published until one arrives on ``pace_response_topic`` (or ``pace_timeout_s`` passes, then that
    # trigger is given up); the rest of the schedule shifts by the wait. Replaying states + rewards into
    # a controller this way never overwrites an unanswered state, however loaded the machine is.
    pace_topics: Sequence[str] = ()
    pace_response_topic: str | None = None
    pace_trigger_topic: str | None = None
    pace_timeout_s: float = 1.0


@dataclass
class ReplayStats:
    """What was published, and how late each publish was against its scheduled time."""

    published: dict[str, int] = field(default_factory=dict)
    skipped_topics: dict[str, str] = field(default_factory=dict)
    clock_messages: int = 0
    lateness_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    paced: int = 0  # paced messages that waited for a response
    pace_timeouts: int = 0  # ... and got none within pace_timeout_s
    bag_span_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.published.values())

    def lateness_percentiles(self) -> tuple[float, float]:
        if not self.lateness_ms:
            return 0.0, 0.0
        arr = np.asarray(self.lateness_ms)
        return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def message_class(msgtype: str) -> type:
    """'std_msgs/msg/Float64MultiArray' -> the rclpy Python message class (raises BagError)."""
    parts = msgtype.split("/")
    if len(parts) != 3:
        raise BagError(f"message type {msgtype!r} is not 'package/msg/Name'")
    pkg, sub, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{sub}"), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"message type {msgtype} is not installed in this ROS 2 environment ({exc})") from exc


def playback_qos(offered: Sequence[Qos], default_depth: int = 10) -> QoSProfile:
    """rosbag2-style adaptation of the recorded publishers' offered QoS (see module doc)."""
    if not offered:
        return QoSProfile(depth=default_depth)
    reliable = all(q.reliability == QosReliability.RELIABLE for q in offered)
    transient = all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
    depth = max([default_depth] + [int(q.depth) for q in offered])
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
    )


def _clock_bytes(t_ns: int) -> bytes:
    from rclpy.serialization import serialize_message
    from rosgraph_msgs.msg import Clock

    msg = Clock()
    msg.clock.sec, msg.clock.nanosec = divmod(int(t_ns), 1_000_000_000)
    return serialize_message(msg)


class _Pacer:
    """Counts responses on a topic (own node + executor thread) for :class:`ReplayOptions` pacing."""

    def __init__(self, context: Any, topic: str, timeout_s: float) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node("seqplanner_replay_pacer", context=context)
        self.last_response = -1.0
        deadline = time.monotonic() + timeout_s
        types = None
        while types is None:  # the response topic's type, from whoever publishes it
            types = dict(self.node.get_topic_names_and_types()).get(topic)
            if types is None:
                if time.monotonic() > deadline:
                    self.node.destroy_node()
                    raise BagError(f"pacing: nothing publishes {topic} within {timeout_s} s")
                time.sleep(0.02)
        self.sub = self.node.create_subscription(message_class(types[0]), topic, self._on_response,
                                                 QoSProfile(depth=10), raw=True)
        while self.sub.get_publisher_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # matched before the first trigger, so no answer is missed
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.spinner = SpinThread(self.executor).start()

    def _on_response(self, _data: bytes) -> None:
        self.last_response = time.monotonic()

    def wait_answer(self, since: float, timeout_s: float, stop: threading.Event | None) -> bool:
        """True once a response arrived after ``since``; False on timeout or stop."""
        deadline = time.monotonic() + timeout_s
        while self.last_response <= since:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                return False
            time.sleep(0.0005)
        return True

    def close(self) -> None:
        self.spinner.stop(timeout_s=5.0)
        self.node.destroy_node()


class BagPlayer:
    """Plays one bag through publishers created on ``node``. Call :meth:`play` (blocking)."""

    def __init__(self, bag: Bag, node: Node, options: ReplayOptions | None = None) -> None:
        self.bag, self.node = bag, node
        self.opts = options or ReplayOptions()
        if self.opts.rate <= 0:
            raise BagError(f"rate must be > 0, got {self.opts.rate}")
        self.stats = ReplayStats()
        self.topics: list[TopicInfo] = self._select()
        self.publishers: dict[str, Any] = {}
        for t in self.topics:
            try:
                cls = message_class(t.msgtype)
            except BagError as exc:
                if not self.opts.skip_unknown_types:
                    raise
                self.stats.skipped_topics[t.name] = str(exc)
                node.get_logger().warning(f"not replaying {t.name}: {exc}")
                continue
            out = self.opts.remap.get(t.name, t.name)
            self.publishers[t.name] = node.create_publisher(cls, out, playback_qos(t.offered_qos))
            self.stats.published[t.name] = 0
        self.clock_pub = None
        if self.opts.publish_clock:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = node.create_publisher(Clock, self.opts.clock_topic, QoSProfile(depth=10))

    def _select(self) -> list[TopicInfo]:
        if self.opts.topics is None:
            return list(self.bag.info.topics.values())
        missing = [t for t in self.opts.topics if t not in self.bag.info.topics]
        if missing:
            raise BagError(f"topics {missing} not in {self.bag.path}; it has {sorted(self.bag.info.topics)}")
        return [self.bag.info.topics[t] for t in self.opts.topics]

    def wait_for_subscribers(self) -> None:
        """Block until each topic in ``options.wait_for_subscribers`` has a matched subscription."""
        want = list(self.opts.wait_for_subscribers)
        by_out = {self.opts.remap.get(k, k): p for k, p in self.publishers.items()}
        unknown = [w for w in want if w not in by_out]
        if unknown:
            raise BagError(f"cannot wait for subscribers on {unknown}: not published by this replay")
        deadline = time.monotonic() + self.opts.wait_timeout_s
        while any(by_out[w].get_subscription_count() == 0 for w in want):
            if time.monotonic() > deadline:
                lacking = [w for w in want if by_out[w].get_subscription_count() == 0]
                raise BagError(f"no subscriber appeared on {lacking} within {self.opts.wait_timeout_s} s")
            time.sleep(0.01)

    def _sleep_until(self, wall_target: float, bag_time_at: Callable[[float], int],
                     stop: threading.Event | None) -> None:
        period = 1.0 / self.opts.clock_hz if self.clock_pub is not None and self.opts.clock_hz > 0 else None
        while True:
            if stop is not None and stop.is_set():
                return
            now = time.monotonic()
            if now >= wall_target:
                return
            step = wall_target - now if period is None else min(period, wall_target - now)
            time.sleep(step)
            if period is not None and time.monotonic() < wall_target:
                self._publish_clock(bag_time_at(time.monotonic()))

    def _publish_clock(self, t_ns: int) -> None:
        if self.clock_pub is not None:
            self.clock_pub.publish(_clock_bytes(t_ns))
            self.stats.clock_messages += 1

    def play(self, stop: threading.Event | None = None) -> ReplayStats:
        """Publish every selected message at its bag time (scaled by ``rate``), starting now."""
        if self.opts.wait_for_subscribers:
            self.wait_for_subscribers()
        pacer = None
        if self.opts.pace_topics:
            if not self.opts.pace_response_topic:
                raise BagError("pace_topics needs pace_response_topic")
            pacer = _Pacer(self.node.context, self.opts.pace_response_topic, self.opts.wait_timeout_s)
        try:
            return self._play(stop, pacer)
        finally:
            if pacer is not None:
                pacer.close()

    def _play(self, stop: threading.Event | None, pacer: _Pacer | None) -> ReplayStats:
        t0_bag = self.bag.info.start_time_ns + int(self.opts.start_offset_s * 1e9)
        start = time.monotonic()
        shift = [start]  # wall time of bag time t0_bag; pacing waits move it later
        rate = self.opts.rate
        paced = set(self.opts.pace_topics)
        trigger = self.opts.pace_trigger_topic or (self.opts.pace_topics[0] if self.opts.pace_topics else None)
        last_trigger: float | None = None  # publish time of the unanswered trigger message
        last_trigger_data: bytes | None = None

        def bag_time_at(wall: float) -> int:
            return t0_bag + int((wall - shift[0]) * rate * 1e9)

        last_ts = t0_bag
        for msg in self.bag.raw_messages(list(self.publishers)):
            if msg.timestamp_ns < t0_bag:
                continue
            if stop is not None and stop.is_set():
                break
            target = shift[0] + (msg.timestamp_ns - t0_bag) / 1e9 / rate
            self._sleep_until(target, bag_time_at, stop)
            if pacer is not None and msg.topic in paced and last_trigger is not None:
                t_wait = time.monotonic()
                self.stats.paced += 1
                if not pacer.wait_answer(last_trigger, self.opts.pace_timeout_s, stop):
                    self.stats.pace_timeouts += 1
                    last_trigger = None  # give that one up (e.g. a state the node rejected)
                waited = time.monotonic() - max(t_wait, target)
                if waited > 0:
                    shift[0] += waited
                    target += waited
            if stop is not None and stop.is_set():
                break
            self._publish_clock(msg.timestamp_ns)
            if msg.topic == trigger:
                data = bytes(msg.data)
                # A byte-identical repeat (e.g. a lockstep bridge's heartbeat) gets no answer of its own:
                # waiting on it would only stall the replay for pace_timeout_s.
                if data != last_trigger_data:
                    last_trigger = time.monotonic()  # before publishing: the answer may come at once
                last_trigger_data = data
            self.publishers[msg.topic].publish(msg.data)
            self.stats.lateness_ms.append((time.monotonic() - target) * 1e3)
            self.stats.published[msg.topic] += 1
            last_ts = msg.timestamp_ns
        self.stats.wall_s = time.monotonic() - start
        self.stats.bag_span_s = (last_ts - t0_bag) / 1e9
        return self.stats

    def flush(self, timeout_s: float = 2.0) -> None:
        """Wait until reliable subscribers acknowledged everything published (best effort: no wait)."""
        deadline = time.monotonic() + timeout_s
        for p in self.publishers.values():
            if p.qos_profile.reliability == ReliabilityPolicy.RELIABLE:
                left = max(0.0, deadline - time.monotonic())
                p.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9)))

    def destroy(self) -> None:
        for p in self.publishers.values():
            self.node.destroy_publisher(p)
        if self.clock_pub is not None:
            self.node.destroy_publisher(self.clock_pub)
        self.publishers.clear()


def replay_bag(bag_path: str | Path, options: ReplayOptions | None = None, *, node: Node | None = None,
               context: Any = None, stop: threading.Event | None = None) -> ReplayStats:
    """Open ``bag_path`` and play it. Creates (and destroys) a node ``seqplanner_replay`` if none given."""
    own = node is None
    if own:
        node = rclpy.create_node("seqplanner_replay", context=context)
    try:
        with open_bag(bag_path) as bag:
            player = BagPlayer(bag, node, options)
            try:
                stats = player.play(stop)
                player.flush()
                return stats
            finally:
                player.destroy()
    finally:
        if own:
            node.destroy_node()
