"""``seqplanner bench node``: the planner node's own overhead, state received -> command published,
minus planning time (and minus the wait for the paired reward), p50/p99.

A driver node plays the sim bridge (reward, then a JointState; next state once the command arrives)
against a real :class:`~ros_seqplanner.nodes.planner_node.PlannerNode` on loopback DDS, each spun by
its own executor thread. The policy is a fixed linear map (microseconds), or ``--checkpoint`` for a
real model; its act time is subtracted either way. Reported:

- ``node overhead``: inside the node, from the state callback's entry to ``publish()`` returning
  (JointState mapping, validation, planning-thread hand-off, safety filter, publish);
- ``round trip``: driver publish -> driver receives the command, minus planning and reward wait
  (adds DDS loopback both ways and both executors' dispatch).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=2000, help="states to send (after --warmup)")
    p.add_argument("--warmup", type=int, default=200, help="states sent before measuring")
    p.add_argument("--checkpoint", default=None, help="use this model instead of the linear test policy")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--state-type", default="joint_state", choices=("joint_state", "array"))
    p.add_argument("--switch-interval-ms", type=float, default=None,
                   help="Python GIL switch interval (default: the node's GIL_SWITCH_INTERVAL_S)")


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


def run(args: argparse.Namespace) -> int:
    from ros_seqplanner.rosenv import apply_safe_ros_env

    apply_safe_ros_env(force_domain=True)
    import numpy as np
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64, Float64MultiArray

    from ros_seqplanner.nodes.obs_layout import builtin_layout
    from ros_seqplanner.nodes.planner_node import (
        COMMAND_QOS,
        EVENT_QOS,
        GIL_SWITCH_INTERVAL_S,
        STATE_QOS,
        PlannerNode,
    )

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
                 Parameter("state_topic", value="/observation" if array else "/joint_states")]
    factory = None if args.checkpoint else (lambda c, d, **o: LinearBenchPolicy())
    planner = PlannerNode(context=ctx, parameter_overrides=overrides, policy_factory=factory)
    driver = Node("bench_driver", context=ctx)
    got = threading.Event()
    t_recv = [0.0]

    def on_cmd(_: Float64MultiArray) -> None:
        t_recv[0] = time.perf_counter()
        got.set()

    driver.create_subscription(Float64MultiArray, "/forward_command_controller/commands", on_cmd, COMMAND_QOS)
    pub_state = driver.create_publisher(Float64MultiArray if array else JointState,
                                        "/observation" if array else "/joint_states", STATE_QOS)
    pub_reward = driver.create_publisher(Float64, "/reward", EVENT_QOS)
    executors = [MultiThreadedExecutor(num_threads=4, context=ctx), SingleThreadedExecutor(context=ctx)]
    executors[0].add_node(planner)
    executors[1].add_node(driver)
    threads = [threading.Thread(target=ex.spin, daemon=True) for ex in executors]
    for t in threads:
        t.start()
    layout = builtin_layout("halfcheetah")
    rng = np.random.default_rng(0)
    round_trip: list[float] = []
    lost = 0
    try:
        planner.trigger_configure()
        planner.trigger_activate()
        deadline = time.monotonic() + 10.0
        while (pub_state.get_subscription_count() == 0 or planner._cmd_pub.get_subscription_count() == 0) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        names = list(layout.joints)
        for i in range(args.warmup + args.samples):
            obs = rng.normal(size=17)
            if array:
                msg = Float64MultiArray(data=obs.tolist())
            else:
                pos = {"rootx": 0.0, **{j: obs[k] for k, (kind, j) in enumerate(layout.entries) if kind == "pos"}}
                vel = {j: obs[k] for k, (kind, j) in enumerate(layout.entries) if kind == "vel"}
                msg = JointState(name=names, position=[float(pos[n]) for n in names],
                                 velocity=[float(vel[n]) for n in names])
                msg.header.stamp.sec, msg.header.stamp.nanosec = 1 + i // 1000, (i % 1000) * 1_000_000
            if i > 0:
                pub_reward.publish(Float64(data=float(i)))
            got.clear()
            n_before = len(planner.plan_latency.samples)
            t0 = time.perf_counter()
            pub_state.publish(msg)
            if not got.wait(timeout=2.0):
                lost += 1
                continue
            if i >= args.warmup and len(planner.plan_latency.samples) > n_before:
                excluded = planner.plan_latency.samples[-1] + planner.reward_wait.samples[-1]
                round_trip.append((t_recv[0] - t0) * 1000.0 - excluded)
        over = list(planner.overhead.samples)[-args.samples:]
        plan = list(planner.plan_latency.samples)[-args.samples:]
        wait = list(planner.reward_wait.samples)[-args.samples:]
        pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
        policy = f"checkpoint {args.checkpoint}" if args.checkpoint else "linear"
        print(f"config: state_type={args.state_type}, policy={policy}"
              f", publish_on=new_state, samples={len(over)} (warmup {args.warmup}), lost={lost}, "
              f"rclpy MultiThreadedExecutor(4) planner + SingleThreadedExecutor driver, one process, "
              f"GIL switch interval {sys.getswitchinterval() * 1e3:g} ms")
        print(f"node overhead (state in -> command out, minus planning): p50 {pct(over, 50):.3f} ms, "
              f"p99 {pct(over, 99):.3f} ms")
        print(f"round trip over DDS minus planning:                     p50 {pct(round_trip, 50):.3f} ms, "
              f"p99 {pct(round_trip, 99):.3f} ms")
        print(f"planning (Policy.act): p50 {pct(plan, 50):.3f} ms, p99 {pct(plan, 99):.3f} ms; "
              f"reward wait p50 {pct(wait, 50):.3f} ms, p99 {pct(wait, 99):.3f} ms")
        return 0 if lost == 0 else 1
    finally:
        if planner.current_state_label() in ("active", "inactive"):
            planner.trigger_shutdown()
        for ex in executors:
            ex.shutdown(timeout_sec=2.0)
        for t in threads:
            t.join(timeout=2.0)
        planner.destroy_node()
        driver.destroy_node()
        rclpy.shutdown(context=ctx)
