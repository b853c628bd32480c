"""``seqplanner demo``: one closed-loop episode over ROS 2 — the README's main job.

The MuJoCo sim bridge runs as its own process (``python -m ros_seqplanner.nodes.sim_bridge_node``,
started in a scratch directory so MUJOCO_LOG.TXT never lands in the caller's cwd); the planner node
runs in this process in its own MultiThreadedExecutor thread; they talk over DDS on loopback only
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a random ROS_DOMAIN_ID unless one is set). Prints the
return, the D4RL-normalised score, plan latency p50/p99, deadline misses and node overhead, and saves
a latency histogram PNG.
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

# Shipped default checkpoints, relative to the models folder (ros_seqplanner.resources.models_dir()).
# HalfCheetah: the medium-expert TT (since session 14): it plans in ~40 ms on one CPU thread, inside the
# 50 ms control period, and no evaluation episode fails; the medium TT's beam-32 plans take ~115 ms.
DEFAULT_MODELS = {"halfcheetah": "tt_halfcheetah_medium_expert", "hopper": "tt_hopper_medium",
                  "walker2d": "tt_walker2d_medium"}
PERIODS = {"halfcheetah": 0.05, "hopper": 0.008, "walker2d": 0.008}  # gymnasium v5 env dt
REALTIME_BUDGET = 0.7  # realtime: a TT plan's time budget as a fraction of the period (BENCHMARKS.md, session 15)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="halfcheetah", choices=sorted(DEFAULT_MODELS), help="gymnasium v5 env")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint (default: the shipped TT for the env, "
                   + ", ".join(f"{env}: models/{name}" for env, name in DEFAULT_MODELS.items())
                   + "; else any one for the env in models/)")
    p.add_argument("--planner", default="auto", choices=("tt", "dt", "bc", "auto"), help="expected checkpoint kind")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N)")
    p.add_argument("--steps", type=int, default=1000, help="episode length (HalfCheetah: 1000)")
    p.add_argument("--mode", default="lockstep", choices=("lockstep", "realtime"), help="sim bridge mode")
    p.add_argument("--seed", type=int, default=0, help="env reset seed")
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="plan deadline (default: none in lockstep, one env period in realtime)")
    p.add_argument("--fallback", default="continue", choices=("continue", "hold", "zero"))
    p.add_argument("--preset", default="", help="TT planner preset")
    for name in ("horizon", "beam-width", "n-expand", "plan-freq"):
        p.add_argument(f"--{name}", type=int, default=0, help=f"TT {name} (0 = preset default)")
    p.add_argument("--obs-bounds", default="", help="TT state constraint on predicted observations, 'DIM:LO:HI,...' "
                   "(e.g. 1:-1:1: body pitch within +-1 rad; '' = none)")
    p.add_argument("--time-budget-ms", type=float, default=None,
                   help="TT: no plan transition starts after this much wall time; the plan then has a shorter "
                   "horizon (default: none in lockstep, 0.7 of the env period in realtime; 0 = no budget)")
    p.add_argument("--target-return", type=float, default=0.0, help="DT target return (0 = checkpoint default)")
    p.add_argument("--histogram", default="seqplanner_demo_latency.png", help="latency histogram PNG path")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the planner node's torch_threads; "
                   "0 = torch's default)")


def repo_models_dir() -> Path:
    from ros_seqplanner.resources import models_dir

    return models_dir()


def resolve_checkpoint(env: str, checkpoint: str | None) -> tuple[str | None, str]:
    """(checkpoint path or None, message). Prefers ``checkpoint``, then the shipped default, then any
    checkpoint in models/ whose metadata names ``env``."""
    from ros_seqplanner.nets.checkpoint import checkpoint_paths

    if checkpoint:
        return checkpoint, ""
    default = repo_models_dir() / DEFAULT_MODELS[env]
    if checkpoint_paths(default)[1].is_file():
        return str(default), ""
    for js in sorted(repo_models_dir().glob("*.json")):
        try:
            meta = json.loads(js.read_text())
        except (OSError, ValueError):
            continue
        ident = f"{meta.get('env_id', '')} {meta.get('dataset_id', '')}".lower()
        if meta.get("kind") in ("tt", "dt", "bc") and env in ident:
            return str(js.with_suffix("")), (f"default checkpoint models/{DEFAULT_MODELS[env]} not found; "
                                             f"using {js.with_suffix('').name} ({meta['kind']})")
    return None, (f"no checkpoint: the default models/{DEFAULT_MODELS[env]} does not exist and models/ has none for "
                  f"{env}. Train one (seqplanner train tt --dataset ... --out models/{DEFAULT_MODELS[env]}) "
                  "or pass --checkpoint PATH.")


def start_bridge(args: argparse.Namespace, workdir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ros_seqplanner.nodes.sim_bridge_node", "--ros-args",
           "-p", f"env:={args.env}", "-p", f"mode:={args.mode}", "-p", f"max_steps:={args.steps}",
           "-p", f"seed:={args.seed}", "-p", "autostart:=true"]
    log = open(workdir / "sim_bridge.log", "w")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def planner_overrides(args: argparse.Namespace, checkpoint: str) -> list[Any]:
    from rclpy.parameter import Parameter

    period = PERIODS[args.env]
    realtime = args.mode == "realtime"
    deadline = args.deadline_ms if args.deadline_ms is not None else (period * 1000.0 if realtime else 0.0)
    budget = args.time_budget_ms
    if budget is None:
        budget = REALTIME_BUDGET * period * 1000.0 if realtime else 0.0
    values = {"checkpoint": checkpoint, "planner": args.planner, "device": args.device, "env": args.env,
              "publish_on": "tick" if realtime else "new_state", "control_rate_hz": 1.0 / period,
              "deadline_ms": float(deadline), "fallback": args.fallback, "stale_timeout_s": 30.0,
              "reward_wait_ms": 50.0, "preset": args.preset, "horizon": args.horizon, "beam_width": args.beam_width,
              "n_expand": args.n_expand, "plan_freq": args.plan_freq, "obs_bounds": args.obs_bounds,
              "time_budget_ms": float(budget),
              "target_return": float(args.target_return),
              "torch_threads": args.threads}
    return [Parameter(k, value=v) for k, v in values.items()]


def save_histogram(samples: list[float], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(samples, bins=50, color="tab:blue")
    ax.set_xlabel("plan latency (ms)")
    ax.set_ylabel("plans")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from ros_seqplanner.rosenv import apply_safe_ros_env

    if args.threads > 0:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    checkpoint, message = resolve_checkpoint(args.env, args.checkpoint)
    if message:
        print(message, file=sys.stderr)
    if checkpoint is None:
        return 2
    ros = apply_safe_ros_env()
    import numpy as np
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.node import Node
    from std_msgs.msg import String

    from ros_seqplanner.data.scores import SCORE_LABEL, normalized_score
    from ros_seqplanner.nodes.planner_node import EVENT_QOS, GIL_SWITCH_INTERVAL_S, PlannerNode
    from ros_seqplanner.spinning import SpinThread

    print(f"demo: {args.env} {args.mode}, {args.steps} steps, checkpoint {checkpoint} on {args.device} "
          f"(ROS_DOMAIN_ID={ros['ROS_DOMAIN_ID']}, discovery {ros['ROS_AUTOMATIC_DISCOVERY_RANGE']})")
    workdir = Path(tempfile.mkdtemp(prefix="seqplanner_demo_"))
    bridge = start_bridge(args, workdir)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    end: dict[str, Any] = {}
    done = threading.Event()
    spinners, nodes = [], []
    planner = None
    try:
        planner = PlannerNode(context=ctx, parameter_overrides=planner_overrides(args, checkpoint))
        monitor = Node("seqplanner_demo", context=ctx)
        nodes += [planner, monitor]

        def on_event(msg: String) -> None:
            ev = json.loads(msg.data)
            if ev.get("event") == "episode_end":
                end.update(ev)
                done.set()

        monitor.create_subscription(String, "/episode_events", on_event, EVENT_QOS)
        for node, ex in ((planner, MultiThreadedExecutor(num_threads=4, context=ctx)),
                         (monitor, SingleThreadedExecutor(context=ctx))):
            ex.add_node(node)
            spinners.append(SpinThread(ex).start())
        t0 = time.perf_counter()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        if planner.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            print("planner failed to configure (see the error above)", file=sys.stderr)
            return 1
        print(f"planner configured in {time.perf_counter() - t0:.1f} s; activating")
        planner.trigger_activate()
        t_start = t_report = time.perf_counter()
        while not done.wait(timeout=1.0):
            if time.perf_counter() - t_report >= 15.0:  # a long CPU episode should not look hung
                t_report = time.perf_counter()
                print(f"  ... {len(planner.plan_latency.samples)}/{args.steps} plans, plan p50 "
                      f"{planner.plan_latency.percentile(50):.0f} ms, {t_report - t_start:.0f} s", flush=True)
            if bridge.poll() is not None:
                print(f"sim bridge exited early (code {bridge.returncode}); log:\n"
                      + (workdir / "sim_bridge.log").read_text()[-3000:], file=sys.stderr)
                return 1
            if time.perf_counter() - t_start > args.timeout:
                print(f"timed out after {args.timeout:.0f} s", file=sys.stderr)
                return 1
        wall = time.perf_counter() - t_start
        lat = list(planner.plan_latency.samples)
        result = {
            "env": args.env, "mode": args.mode, "checkpoint": checkpoint, "device": args.device,
            "return": float(end["return"]), "length": int(end["length"]),
            "normalized_score": normalized_score(args.env, float(end["return"])), "score_label": SCORE_LABEL,
            "plan_latency_p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
            "plan_latency_p99_ms": float(np.percentile(lat, 99)) if lat else float("nan"),
            "deadline_misses": int(planner.counters["deadline_misses"]),
            "node_overhead_p50_ms": planner.overhead.percentile(50),
            "node_overhead_p99_ms": planner.overhead.percentile(99),
            "planner_errors": int(planner.counters["planner_errors"]), "wall_s": wall,
            # realtime: plans ready after their period (started at a later action) / cut by the time budget
            "late_plans": int(planner.counters["late_plans"]), "plans_cut": int(planner.counters["plans_cut"]),
        }
        print(f"return {result['return']:.1f} over {result['length']} steps; normalised score "
              f"{result['normalized_score']:.1f} ({SCORE_LABEL})")
        overhead = (f"node overhead p50 {result['node_overhead_p50_ms']:.3f} ms, p99 "
                    f"{result['node_overhead_p99_ms']:.3f} ms; " if args.mode == "lockstep" else "")
        late = (f"late plans {result['late_plans']}, plans cut by the time budget {result['plans_cut']}; "
                if args.mode == "realtime" else "")
        print(f"plan latency p50 {result['plan_latency_p50_ms']:.2f} ms, p99 {result['plan_latency_p99_ms']:.2f} ms; "
              f"deadline misses {result['deadline_misses']}; {late}{overhead}wall {wall:.1f} s")
        if lat:
            save_histogram(lat, args.histogram, f"{Path(checkpoint).name} on {args.device}, {args.env} {args.mode}: "
                           f"p50 {result['plan_latency_p50_ms']:.1f} ms, p99 {result['plan_latency_p99_ms']:.1f} ms")
            print(f"latency histogram: {Path(args.histogram).resolve()}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    finally:
        for spinner in spinners:  # stop spinning before the planner's shutdown destroys its entities
            spinner.stop(timeout_s=2.0)
        if planner is not None and planner.current_state_label() in ("active", "inactive"):
            planner.trigger_shutdown()  # active: publishes one safe command first
        for node in nodes:
            node.destroy_node()
        if ctx.ok():
            rclpy.shutdown(context=ctx)
        if bridge.poll() is None:
            bridge.terminate()
            try:
                bridge.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                bridge.kill()
