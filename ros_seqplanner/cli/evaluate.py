"""``seqplanner evaluate``: closed-loop MuJoCo episodes of tt / dt / bc / behaviour checkpoints."""

from __future__ import annotations

import argparse
import json
import sys

from ros_seqplanner.cli._common import key_value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", help="checkpoint(s): name, name.json or name.safetensors")
    p.add_argument("--env", help="env name/id (default: the checkpoint's env_id)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="evaluation seeds")
    p.add_argument("--max-steps", type=int, help="cut each episode after this many steps (short runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default, one per core). "
                   "The C planner uses one; extra torch threads spin between plans and slow whatever runs on the "
                   "other cores, e.g. a second evaluation (figures in BENCHMARKS.md)")
    p.add_argument("--option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="option for the policy's from_checkpoint (e.g. preset=fast, noise=policy); repeatable")
    p.add_argument("--latency-steps", type=int, default=0, metavar="L",
                   help="model a realtime robot that does not wait: every plan takes L whole control periods "
                   "(is followed from its action L, the previous plan runs meanwhile); reproducible, unlike a "
                   "realtime episode over ROS 2 (default 0: lockstep)")
    p.add_argument("--no-catch-up", action="store_true",
                   help="with --latency-steps: do not give the policy the states it skipped while planning "
                   "(the node's catch_up_context: false)")
    p.add_argument("--compensate", action="store_true",
                   help="with --latency-steps (TT): plan for the state the model predicts L steps ahead, from the "
                   "actions the robot runs meanwhile, and follow the plan from its action 0")
    p.add_argument("--target-return", type=float, help="DT return-to-go target (passed to reset)")
    p.add_argument("--out", help="write the JSON results here (default: print only)")
    p.add_argument("--video", help="record the first episode of the first checkpoint (.mp4 or .gif); needs MuJoCo "
                   "offscreen GL (MUJOCO_GL=egl works on this machine)")
    p.add_argument("--plot", help="save a return plot (.png)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ros_seqplanner.sim.evaluate import evaluate_checkpoint, plot_returns

    if args.threads < 0:
        print(f"error: --threads must be >= 0, got {args.threads}", file=sys.stderr)
        return 2
    if args.latency_steps < 0:
        print(f"error: --latency-steps must be >= 0, got {args.latency_steps}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    options = dict(args.option)
    reset_options = {"target_return": args.target_return} if args.target_return is not None else {}
    results = []
    for i, ckpt in enumerate(args.checkpoints):
        res = evaluate_checkpoint(ckpt, env=args.env, episodes=args.episodes, seeds=tuple(args.seeds),
                                  max_steps=args.max_steps, device=args.device, policy_options=options,
                                  reset_options=reset_options, video=args.video if i == 0 else None,
                                  progress=not args.no_progress, latency_steps=args.latency_steps,
                                  catch_up=not args.no_catch_up, compensate=args.compensate)
        results.append(res.to_json())
        results[-1]["config"]["torch_threads"] = torch.get_num_threads()
        s = res.summary
        line = (f"{res.kind} {Path(ckpt).name} on {res.env_id}: return {s['return_mean']:.1f} ± {s['return_std']:.1f}"
                f" over {s['num_episodes']} episodes")
        if "score_mean" in s:
            line += f", score {s['score_mean']:.1f} ± {s['score_std']:.1f} ({s['score_label']})"
        line += f", act p50 {s['act_ms_p50']:.2f} ms / p99 {s['act_ms_p99']:.2f} ms"
        print(line)
    out = results[0] if len(results) == 1 else {"results": results}
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        print(text)
    if args.plot:
        print(f"plot: {plot_returns(results, args.plot)}")
    return 0
