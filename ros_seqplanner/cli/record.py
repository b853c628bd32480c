"""``seqplanner record OUT``: record live topics, or a whole closed-loop episode, into a rosbag2 bag.

Two modes:

- ``--topics /a /b ...``: subscribe (raw CDR) to those topics in the running graph and record until
  ``--duration`` elapses or Ctrl-C (like ``ros2 bag record``);
- ``--episode --checkpoint CKPT``: start the MuJoCo sim bridge (lockstep) and the planner node
  in-process, record one episode's state, observation, reward, commands, plan, diagnostics, episode
  events and /clock, then stop.

Like ``cli/demo.py`` this command starts nodes, so it imports ``ros_seqplanner.nodes`` lazily
(inside :func:`record_closed_loop`), the one deliberate exception to "cli never imports nodes".
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# What a closed-loop episode produces (topic names of nodes/sim_bridge_node.py and nodes/planner_node.py
# with its default parameters and node name 'seqplanner').
EPISODE_TOPICS = (
    "/joint_states", "/observation", "/reward", "/episode_events", "/episode_return", "/clock",
    "/forward_command_controller/commands", "/seqplanner/plan", "/diagnostics",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="new bag directory (must not exist)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="storage plugin (default mcap)")
    p.add_argument("--max-bag-size", type=int, default=0, metavar="BYTES", help="split after this many bytes")
    live = p.add_argument_group("live topics")
    live.add_argument("--topics", nargs="+", default=None, help="topics to record from the running graph")
    live.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    ep = p.add_argument_group("closed-loop episode")
    ep.add_argument("--episode", action="store_true", help="run sim bridge + planner and record one episode")
    ep.add_argument("--checkpoint", default="", help="policy checkpoint for the planner node")
    ep.add_argument("--planner", default="auto", choices=("tt", "dt", "bc", "auto"), help="expected kind")
    ep.add_argument("--env", default="halfcheetah", help="env name or id")
    ep.add_argument("--seed", type=int, default=0, help="reset seed of the episode")
    ep.add_argument("--steps", type=int, default=200, help="episode length limit")
    ep.add_argument("--device", default="cpu", help="planner device")
    ep.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    ep.add_argument("-p", "--param", nargs="+", action="extend", default=[], metavar="NAME:=VALUE",
                    help="planner node parameters, e.g. diagnostics_period_s:=0.1 horizon:=5 (repeatable)")


def _parse_params(items: list[str]) -> dict[str, Any]:
    """['name:=value', ...] -> {name: value} with YAML typing (5 -> int, 0.1 -> float, true -> bool)."""
    import yaml

    out = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"parameter {item!r} must look like name:=value")
        out[name] = yaml.safe_load(value)
    return out


def record_closed_loop(out: str | Path, *, env: str = "halfcheetah", checkpoint: str = "", planner: str = "auto",
                       device: str = "cpu", seed: int = 0, max_steps: int = 200, storage: str = "mcap",
                       topics: tuple[str, ...] = EPISODE_TOPICS, policy_factory: Callable[..., Any] | None = None,
                       planner_params: dict[str, Any] | None = None, timeout_s: float = 300.0,
                       context: Any = None, max_bag_size: int = 0) -> dict[str, Any]:
    """Run one lockstep episode (bridge + planner) and record ``topics`` to a new bag at ``out``.

    ``policy_factory`` (checkpoint, device, **options) -> Policy replaces checkpoint loading (tests).
    Returns {'bag', 'return', 'steps', 'received'}. Raises RuntimeError on configure failure/timeout.
    """
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from ros_seqplanner.bags.record import TopicRecorder
    from ros_seqplanner.bags.writer import BagWriter
    from ros_seqplanner.nodes.planner_node import PlannerNode, autostart
    from ros_seqplanner.nodes.sim_bridge_node import SimBridgeNode
    from ros_seqplanner.spinning import SpinThread

    params = {"checkpoint": checkpoint or "injected", "planner": planner, "device": device, "env": env,
              "publish_on": "new_state", **(planner_params or {})}
    # the planner node's parameter overrides travel with the bag, so its episode can be reproduced
    custom = {"seqplanner": "closed-loop episode", "env": env, "seed": str(seed), "checkpoint": str(checkpoint),
              "planner_params": json.dumps(params, sort_keys=True)}
    writer = BagWriter(out, storage=storage, max_bag_size=max_bag_size, custom_data=custom,  # fails fast
                       background=True)
    own_ctx = context is None
    if own_ctx:
        context = rclpy.Context()
        rclpy.init(context=context)
    nodes: list[Any] = []
    executor = spin = recorder = None
    ok = False
    try:
        bridge = SimBridgeNode(context=context, parameter_overrides=[
            Parameter("env", value=env), Parameter("seed", value=seed), Parameter("max_steps", value=max_steps),
            Parameter("autostart", value=False)])
        nodes.append(bridge)
        node = PlannerNode(context=context, policy_factory=policy_factory,
                           parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        nodes.append(node)
        rec_node = rclpy.create_node("seqplanner_recorder", context=context)
        nodes.append(rec_node)
        executor = MultiThreadedExecutor(num_threads=4, context=context)
        for n in nodes:
            executor.add_node(n)
        spin = SpinThread(executor)  # stopped before any entity is destroyed (see spinning.py)
        if not autostart(node):
            raise RuntimeError(f"planner node failed to configure/activate (checkpoint {checkpoint!r}); see its log")
        spin.start()
        recorder = TopicRecorder(rec_node, writer, topics)
        missing = recorder.wait_subscribed(10.0)
        if missing:
            raise RuntimeError(f"no publisher appeared on {missing}")
        _wait_matched(recorder, 5.0)
        bridge.start_episode()
        deadline = time.monotonic() + timeout_s
        while bridge.running or not bridge.returns:
            if time.monotonic() > deadline:
                raise RuntimeError(f"episode did not finish within {timeout_s} s ({bridge.steps} steps)")
            time.sleep(0.01)
        # Let the last state's command, plan and events arrive, and at least one diagnostics message
        # (bounded: a loaded machine can delay them well past one diagnostics period). In lockstep every
        # state (the initial one and one per step) is answered by one command, the last one after the bridge
        # has finished: wait for it too, or the bag can end one command short.
        settle = time.monotonic() + 3.0
        time.sleep(0.3)
        cmd_topic = node.p("command_topic")

        def pending() -> bool:
            got = recorder.received
            return ("/diagnostics" in got and got["/diagnostics"] < 1) or \
                (cmd_topic in got and got[cmd_topic] < bridge.steps + 1)

        while pending() and time.monotonic() < settle:
            time.sleep(0.02)
        ok = True
        return {"bag": Path(out), "return": bridge.returns[-1], "steps": bridge.steps,
                "received": dict(recorder.received)}
    finally:
        if recorder is not None:
            recorder.stop()  # the episode ends here: the planner's shutdown command is not part of it
        # Stop spinning before destroying any entity (the planner's shutdown destroys its own): destroying a
        # subscription while another thread's executor waits on it raises InvalidHandle in that thread, and a
        # callback in flight fails with "cannot use Destroyable" (printed at exit as never retrieved).
        if spin is not None:
            spin.stop(timeout_s=30.0)
        elif executor is not None:
            executor.shutdown()
        if len(nodes) > 1 and nodes[1].current_state_label() in ("active", "inactive"):
            nodes[1].trigger_shutdown()
        if recorder is not None:
            recorder.close()
        if ok:
            writer.close()
        else:
            writer.abort()
        for n in reversed(nodes):
            n.destroy_node()
        if nodes:
            nodes[0].env.close()
        if own_ctx:
            rclpy.shutdown(context=context)


def _wait_matched(recorder: Any, timeout_s: float) -> None:
    """Until every recording subscription has matched its publisher(s) (no message lost at start)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(s.get_publisher_count() > 0 for s in recorder.subscriptions.values()):
            return
        time.sleep(0.02)


def run(args: argparse.Namespace) -> int:
    from ros_seqplanner.rosenv import apply_safe_ros_env

    apply_safe_ros_env()
    import rclpy

    from ros_seqplanner.bags.reader import BagError, open_bag

    if args.episode == bool(args.topics):
        print("give either --topics ... (record live topics) or --episode --checkpoint CKPT")
        return 2
    if args.episode:
        if not args.checkpoint:
            print("--episode needs --checkpoint")
            return 2
        try:
            res = record_closed_loop(args.out, env=args.env, checkpoint=args.checkpoint, planner=args.planner,
                                     device=args.device, seed=args.seed, max_steps=args.steps,
                                     storage=args.storage, timeout_s=args.timeout,
                                     planner_params=_parse_params(args.param), max_bag_size=args.max_bag_size)
        except (RuntimeError, BagError, ValueError) as exc:
            print(f"record failed: {exc}")
            return 1
        print(f"episode: return {res['return']:.2f} in {res['steps']} steps")
    else:
        from ros_seqplanner.bags.record import record_topics

        with rclpy.init():
            node = rclpy.create_node("seqplanner_recorder")
            try:
                record_topics(args.out, args.topics, node=node, duration_s=args.duration, storage=args.storage,
                              max_bag_size=args.max_bag_size)
            except KeyboardInterrupt:
                pass
            except BagError as exc:
                print(f"record failed: {exc}")
                return 1
            finally:
                node.destroy_node()
    with open_bag(args.out) as bag:
        info = bag.info
        print(f"wrote {info.path} ({info.storage}, {len(info.files)} file(s)): {info.message_count} messages "
              f"over {info.duration_ns / 1e9:.2f} s")
        for t in info.topics.values():
            print(f"  {t.name} [{t.msgtype}]: {t.message_count}")
    return 0
