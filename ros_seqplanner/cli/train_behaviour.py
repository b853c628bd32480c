"""``seqplanner train behaviour``: SAC behaviour policy (medium / expert checkpoints + medium-replay buffer)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="halfcheetah", help="halfcheetah | hopper | walker2d (or the v5 id)")
    p.add_argument("--out", required=True, help="run folder (resume state, evals.jsonl, actors, medium_replay.hdf5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1_000_000, help="total environment steps")
    p.add_argument("--eval-freq", type=int, default=10_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--checkpoint-freq", type=int, default=50_000, help="resume checkpoint period (steps)")
    p.add_argument("--time-limit", type=float, default=0.0, help="stop gracefully after this many seconds")
    p.add_argument("--stop-at-medium", action="store_true", help="stop once the medium checkpoint is saved")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if the run folder has a checkpoint")
    p.add_argument("--learning-starts", type=int, default=10_000)
    p.add_argument("--buffer-size", type=int, default=1_000_000)
    p.add_argument("--export-to", metavar="DIR", help="do not train: copy the run's medium (and expert, if clearly "
                   "better) actors to DIR/<env>-{medium,expert}.{safetensors,json}")


def run(args: argparse.Namespace) -> int:
    import json
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ros_seqplanner.sim.behaviour import RunConfig, SACConfig, export_models, train_behaviour

    if args.export_to:
        print(json.dumps(export_models(args.out, args.export_to)))
        return 0

    cfg = RunConfig(env_id=args.env, seed=args.seed, total_steps=args.steps, eval_freq=args.eval_freq,
                    eval_episodes=args.eval_episodes, checkpoint_freq=args.checkpoint_freq,
                    time_limit_s=args.time_limit, stop_at_medium=args.stop_at_medium)
    sac = SACConfig(learning_starts=args.learning_starts, buffer_size=args.buffer_size)
    state = train_behaviour(args.out, cfg, sac, resume=not args.no_resume)
    print(json.dumps({k: state.get(k) for k in ("env_id", "final_step", "best_return", "best_step",
                                                  "medium_step", "medium_return")}))
    return 0
