"""``seqplanner replay BAG``: publish a rosbag2 bag into a live ROS 2 graph with its original timing."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", help="bag directory (with metadata.yaml) or a single .mcap/.db3 storage file")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (2 = twice as fast)")
    p.add_argument("--start-offset", type=float, default=0.0, metavar="S",
                   help="skip the first S seconds of the bag")
    p.add_argument("--topics", nargs="+", default=None, help="only these bag topics (default: all)")
    p.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO", help="publish bag topic FROM on TO")
    p.add_argument("--clock", action="store_true", help="publish /clock with the bag time (for use_sim_time)")
    p.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate between messages (with --clock)")
    p.add_argument("--wait-for", nargs="+", default=[], metavar="TOPIC",
                   help="wait until these (published) topics have a subscriber before starting")
    p.add_argument("--wait-timeout", type=float, default=10.0, help="seconds to wait for --wait-for subscribers")
    p.add_argument("--strict-types", action="store_true",
                   help="fail if a topic's message type is not installed (default: skip that topic)")
    pace = p.add_argument_group("pacing by the system under test (for lockstep controllers)")
    pace.add_argument("--pace-on", nargs="+", default=[], metavar="TOPIC",
                      help="hold messages on these bag topics until the last trigger message was answered")
    pace.add_argument("--pace-trigger", default=None, metavar="TOPIC",
                      help="the topic whose messages must be answered (default: the first --pace-on topic)")
    pace.add_argument("--pace-response", default=None, metavar="TOPIC",
                      help="the answer topic, e.g. /forward_command_controller/commands")
    pace.add_argument("--pace-timeout", type=float, default=1.0, help="seconds to wait for an answer")


def _parse_remap(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise SystemExit(f"--remap entry {item!r} must look like /from:=/to")
        out[src] = dst
    return out


def run(args: argparse.Namespace) -> int:
    from ros_seqplanner.rosenv import apply_safe_ros_env

    apply_safe_ros_env()
    import rclpy

    from ros_seqplanner.bags.reader import BagError
    from ros_seqplanner.bags.replay import ReplayOptions, replay_bag

    opts = ReplayOptions(rate=args.rate, start_offset_s=args.start_offset, topics=args.topics,
                         remap=_parse_remap(args.remap), publish_clock=args.clock, clock_hz=args.clock_hz,
                         wait_for_subscribers=args.wait_for, wait_timeout_s=args.wait_timeout,
                         skip_unknown_types=not args.strict_types, pace_topics=args.pace_on,
                         pace_trigger_topic=args.pace_trigger, pace_response_topic=args.pace_response,
                         pace_timeout_s=args.pace_timeout)
    with rclpy.init():
        try:
            stats = replay_bag(args.bag, opts)
        except BagError as exc:
            print(f"replay failed: {exc}")
            return 1
    p50, p99 = stats.lateness_percentiles()
    print(f"published {stats.total} messages in {stats.wall_s:.2f} s (bag span {stats.bag_span_s:.2f} s, "
          f"rate {args.rate}); publish lateness p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    for topic, n in sorted(stats.published.items()):
        print(f"  {topic}: {n}")
    for topic, why in sorted(stats.skipped_topics.items()):
        print(f"  skipped {topic}: {why}")
    if stats.clock_messages:
        print(f"  /clock: {stats.clock_messages}")
    if stats.paced:
        print(f"  paced: {stats.paced} waits, {stats.pace_timeouts} without an answer")
    return 0
