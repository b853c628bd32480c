"""``seqplanner bench node``: the planner node's own overhead, state received -> command published,
minus planning time (and minus the wait for the paired reward), p50/p99.

A driver node plays the sim bridge (reward, then a JointState; the next state once the command arrives)
against a real :class:`~ros_seqplanner.nodes.planner_node.PlannerNode` on loopback DDS. The planner runs
as ``seqplanner_node`` does: a ``MultiThreadedExecutor(4)`` spinning in its own thread, GIL switch
interval :data:`~ros_seqplanner.nodes.planner_node.GIL_SWITCH_INTERVAL_S`. The driver runs

- ``--driver thread`` (default): in this process, spun by its own executor thread, sharing the planner's
  interpreter and GIL (the driver only runs between a command and the next state, so it rarely
  competes with the node's path);
- ``--driver process``: in a child process, like a real robot driver or simulator. On a box with one
  free core its wake-up on each command can preempt the node inside ``publish()``, so this mode also
  measures the OS scheduler (see BENCHMARKS.md).

The policy is a fixed linear map (microseconds), or ``--checkpoint`` for a real model; its act time is
subtracted either way. Reported:

- ``node overhead``: measured inside the node, from the state callback's entry to ``publish()``
  returning (JointState mapping, validation, hand-off to planning, safety filter, publish), minus
  ``Policy.act`` and the reward wait;
- ``round trip``: driver publish -> driver receives the command, minus planning and reward wait (adds
  DDS loopback both ways and both executors' dispatch).

``--json PATH`` also writes the numbers (and the load average) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

COMMAND_TOPIC = "/forward_command_controller/commands"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=2000, help="states to send (after --warmup)")
    p.add_argument("--warmup", type=int, default=200, help="states sent before measuring")
    p.add_argument("--checkpoint", default=None, help="use this model instead of the linear test policy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--state-type", default="joint_state", choices=("joint_state", "array"))
    p.add_argument("--driver", default="thread", choices=("thread", "process"),
                   help="driver node in this process (default; shares the planner's interpreter) or in a child "
                        "process (like a real robot driver; also measures cross-process scheduling)")
    p.add_argument("--switch-interval-ms", type=float, default=None,
                   help="Python GIL switch interval (default: the node's GIL_SWITCH_INTERVAL_S)")
    p.add_argument("--inline-plan-max-ms", type=float, default=None,
                   help="the node's inline_plan_max_ms parameter (default: the node's default; 0 = always hand "
                        "states to the planning thread)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    # Internal: the child process of --driver process.
    p.add_argument("--role", default="bench", choices=("bench", "driver"), help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)


class LinearBenchPolicy:
    """A fixed linear map, clipped: a real Policy whose act time is a few microseconds."""

    def __init__(self, obs_dim: int = 17, act_dim: int = 6) -> None:
        import numpy as np

        self.W = np.random.default_rng(0).normal(size=(act_dim, obs_dim)) * 0.1
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.action_low, self.action_high = -np.ones(act_dim, np.float32), np.ones(act_dim, np.float32)

    def reset(self, **_: Any) -> None:
        pass

    def act(self, observation: Any, reward: float | None) -> Any:
        import numpy as np

        return np.clip(self.W @ observation, -1.0, 1.0).astype(np.float32)


def _state_messages(state_type: str, n: int) -> list[Any]:
    """``n`` distinct states (unique stamps, so none is taken for a heart-beat repeat), built up front
    so that building them is not timed."""
    import numpy as np
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from ros_seqplanner.nodes.obs_layout import builtin_layout

    layout = builtin_layout("halfcheetah")
    names = list(layout.joints)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        obs = rng.normal(size=layout.dim)
        if state_type == "array":
            out.append(Float64MultiArray(data=obs.tolist()))
            continue
        pos = {"rootx": 0.0, **{j: obs[k] for k, (kind, j) in enumerate(layout.entries) if kind == "pos"}}
        vel = {j: obs[k] for k, (kind, j) in enumerate(layout.entries) if kind == "vel"}
        msg = JointState(name=names, position=[float(pos[j]) for j in names], velocity=[float(vel[j]) for j in names])
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1 + i // 1000, (i % 1000) * 1_000_000
        out.append(msg)
    return out


def drive(context: Any, state_type: str, n: int, connect_timeout_s: float = 20.0) -> tuple[list[float], int]:
    """Play the lockstep sim bridge for ``n`` states: publish reward (from the 2nd state on) and state,
    then block until the command arrives. The driver node is spun by its own executor thread; the calling
    thread blocks on an Event right after publishing, so it holds no GIL while the planner works (spinning
    here instead made the driver build its wait set exactly when the planner's executor needs the GIL:
    +0.3 ms round trip p50). Returns (raw round trip per answered state in ms, lost states)."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64, Float64MultiArray

    from ros_seqplanner.nodes.planner_node import COMMAND_QOS, EVENT_QOS, STATE_QOS
    from ros_seqplanner.spinning import SpinThread

    array = state_type == "array"
    node = Node("bench_driver", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    t_recv = [0.0]
    got = threading.Event()

    def on_cmd(_: Float64MultiArray) -> None:
        t_recv[0] = time.perf_counter()
        got.set()

    sub = node.create_subscription(Float64MultiArray, COMMAND_TOPIC, on_cmd, COMMAND_QOS)
    pub_state = node.create_publisher(Float64MultiArray if array else JointState,
                                      "/observation" if array else "/joint_states", STATE_QOS)
    pub_reward = node.create_publisher(Float64, "/reward", EVENT_QOS)
    messages = _state_messages(state_type, n)
    rewards = [Float64(data=float(i)) for i in range(n)]
    round_trip: list[float] = []
    lost = 0
    spinner = SpinThread(executor).start()
    try:
        deadline = time.monotonic() + connect_timeout_s
        while min(pub_state.get_subscription_count(), pub_reward.get_subscription_count(),
                  sub.get_publisher_count()) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the planner node did not connect (state / reward / command topics)")
            time.sleep(0.01)
        for i in range(n):
            if i > 0:
                pub_reward.publish(rewards[i])
            got.clear()
            t0 = time.perf_counter()
            pub_state.publish(messages[i])
            if got.wait(timeout=2.0):
                round_trip.append((t_recv[0] - t0) * 1000.0)
            else:
                lost += 1
    finally:
        spinner.stop(timeout_s=2.0)
        node.destroy_node()
    return round_trip, lost


def _run_driver(args: argparse.Namespace) -> int:
    """The child process of ``--driver process``: drive, then write the round trips to ``--result``."""
    import rclpy

    from ros_seqplanner.nodes.planner_node import GIL_SWITCH_INTERVAL_S
    from ros_seqplanner.rosenv import apply_safe_ros_env

    apply_safe_ros_env()  # keeps the parent's ROS_DOMAIN_ID
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S if args.switch_interval_ms is None else args.switch_interval_ms / 1e3)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        round_trip, lost = drive(ctx, args.state_type, args.warmup + args.samples)
    finally:
        rclpy.shutdown(context=ctx)
    Path(args.result).write_text(json.dumps({"round_trip_raw_ms": round_trip, "lost": lost}))
    return 0


def _spawn_driver(args: argparse.Namespace, result: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ros_seqplanner.cli", "bench", "node", "--role", "driver",
           "--result", str(result), "--state-type", args.state_type, "--warmup", str(args.warmup),
           "--samples", str(args.samples)]
    if args.switch_interval_ms is not None:
        cmd += ["--switch-interval-ms", str(args.switch_interval_ms)]
    return subprocess.Popen(cmd, env=dict(os.environ))


def _pct(xs: Any, q: float) -> float:
    import numpy as np

    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def _summary(xs: Any) -> dict[str, float]:
    return {"p50": _pct(xs, 50), "p90": _pct(xs, 90), "p99": _pct(xs, 99), "max": float(max(xs)) if len(xs) else
            float("nan")}


def run(args: argparse.Namespace) -> int:
    if args.role == "driver":
        return _run_driver(args)
    if args.samples < 1 or args.warmup < 0:
        print("--samples must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    from ros_seqplanner.rosenv import apply_safe_ros_env
    from ros_seqplanner.spinning import SpinThread

    apply_safe_ros_env(force_domain=True)
    import numpy as np
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from ros_seqplanner.nodes.planner_node import GIL_SWITCH_INTERVAL_S, PlannerNode

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S if args.switch_interval_ms is None else args.switch_interval_ms / 1e3)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    array = args.state_type == "array"
    overrides = [Parameter("checkpoint", value=args.checkpoint or "linear-bench-policy"),
                 Parameter("planner", value="auto"), Parameter("device", value=args.device),
                 Parameter("publish_on", value="new_state"), Parameter("stale_timeout_s", value=30.0),
                 Parameter("reward_wait_ms", value=50.0), Parameter("state_type", value=args.state_type),
                 Parameter("state_topic", value="/observation" if array else "/joint_states"),
                 Parameter("command_topic", value=COMMAND_TOPIC)]
    if args.inline_plan_max_ms is not None:
        overrides.append(Parameter("inline_plan_max_ms", value=float(args.inline_plan_max_ms)))
    factory = None if args.checkpoint else (lambda c, d, **o: LinearBenchPolicy())
    planner = PlannerNode(context=ctx, parameter_overrides=overrides, policy_factory=factory)
    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    executor.add_node(planner)
    spinner = SpinThread(executor).start()
    n = args.warmup + args.samples
    load_before = os.getloadavg()
    try:
        planner.trigger_configure()
        planner.trigger_activate()
        if args.driver == "thread":
            raw, lost = drive(ctx, args.state_type, n)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                result = Path(tmp) / "driver.json"
                child = _spawn_driver(args, result)
                try:
                    rc = child.wait(timeout=60.0 + 2.5 * n)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    rc = -9
                if rc != 0 or not result.exists():
                    print(f"driver process failed (exit {rc})", file=sys.stderr)
                    return 1
                data = json.loads(result.read_text())
                raw, lost = data["round_trip_raw_ms"], int(data["lost"])
        load_after = os.getloadavg()
        over = planner.overhead.samples[-args.samples:]
        plan_all, wait_all = planner.plan_latency.samples, planner.reward_wait.samples
        plan, wait = plan_all[-args.samples:], wait_all[-args.samples:]
        # One plan per answered state, in order, when nothing was lost: subtract each state's own plan time.
        aligned = lost == 0 and len(raw) == n and len(plan_all) == n and len(wait_all) == n
        round_trip = (np.asarray(raw[-args.samples:]) - np.asarray(plan) - np.asarray(wait)).tolist() if aligned else []
        policy = f"checkpoint {args.checkpoint}" if args.checkpoint else "linear"
        driver = "driver in a child process" if args.driver == "process" else "driver in this process (shared GIL)"
        config = (f"state_type={args.state_type}, policy={policy}, publish_on=new_state, inline_plan_max_ms="
                  f"{planner.p('inline_plan_max_ms'):g}, samples={len(over)} (warmup {args.warmup}), lost={lost}, "
                  f"planner MultiThreadedExecutor(4), {driver}, GIL switch interval "
                  f"{sys.getswitchinterval() * 1e3:g} ms")
        print("config: " + config)
        print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
        s_over, s_rt = _summary(over), _summary(round_trip)
        print(f"node overhead (state in -> command out, minus planning): p50 {s_over['p50']:.3f} ms, "
              f"p99 {s_over['p99']:.3f} ms, max {s_over['max']:.3f} ms")
        print(f"round trip over DDS minus planning:                     p50 {s_rt['p50']:.3f} ms, "
              f"p99 {s_rt['p99']:.3f} ms" + ("" if aligned else " (not aligned: states were lost)"))
        print(f"planning (Policy.act): p50 {_pct(plan, 50):.3f} ms, p99 {_pct(plan, 99):.3f} ms; "
              f"reward wait p50 {_pct(wait, 50):.3f} ms, p99 {_pct(wait, 99):.3f} ms")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "config": config, "state_type": args.state_type, "driver": args.driver, "samples": len(over),
                "warmup": args.warmup, "lost": lost, "switch_interval_ms": sys.getswitchinterval() * 1e3,
                "inline_plan_max_ms": planner.p("inline_plan_max_ms"),
                "load_avg_before": list(load_before), "load_avg_after": list(load_after),
                "node_overhead_ms": s_over, "round_trip_ms": s_rt, "plan_ms": _summary(plan),
                "reward_wait_ms": _summary(wait), "counters": dict(planner.counters),
            }, indent=2))
        return 0 if lost == 0 else 1
    finally:
        spinner.stop(timeout_s=2.0)  # stop spinning before the planner's shutdown destroys its entities
        if planner.current_state_label() in ("active", "inactive"):
            planner.trigger_shutdown()
        planner.destroy_node()
        rclpy.shutdown(context=ctx)
