"""``seqplanner collect``: make an offline dataset (random / medium / medium-replay / expert / medium-expert)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="halfcheetah", help="halfcheetah | hopper | walker2d (or the v5 id)")
    p.add_argument("--kind", required=True, choices=["random", "medium", "expert", "medium-expert", "medium-replay"])
    p.add_argument("--steps", type=int, default=100_000, help="transitions to collect (episodes are finished)")
    p.add_argument("--num-envs", type=int, default=8, help="environments stepped together (batched actor calls)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", help="behaviour checkpoint (default models/behaviour/<env>-<medium|expert>)")
    p.add_argument("--expert-policy",
                   help="expert checkpoint for medium-expert (default models/behaviour/<env>-expert)")
    p.add_argument("--noise", default="policy", choices=["none", "policy", "gaussian"],
                   help="policy = sample the SAC tanh-Gaussian (default); none = deterministic mean")
    p.add_argument("--sigma", type=float, default=0.1, help="std of the gaussian action noise")
    p.add_argument("--replay", help="medium_replay.hdf5 written by `seqplanner train behaviour` (medium-replay)")
    p.add_argument("--format", default="hdf5", choices=["hdf5", "minari", "both"])
    p.add_argument("--out", help="output .hdf5 file (hdf5 format)")
    p.add_argument("--minari-id", help="Minari dataset id (default seqplanner/<env>-<kind>-v0)")
    p.add_argument("--data-dir", help="Minari root (default $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    p.add_argument("--max-episode-steps", type=int, help="override the env time limit (short test runs)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import json

    from ros_seqplanner.sim.collect import collect_dataset, save_dataset

    if args.format in ("hdf5", "both") and not args.out:
        raise SystemExit(f"collect: --out FILE.hdf5 is required with --format {args.format}")
    ds = collect_dataset(args.env, args.kind, args.steps, num_envs=args.num_envs, seed=args.seed,
                         policy_path=args.policy, expert_path=args.expert_policy, noise=args.noise,
                         sigma=args.sigma, replay_path=args.replay, progress=not args.no_progress,
                         max_episode_steps=args.max_episode_steps)
    formats = ["hdf5", "minari"] if args.format == "both" else [args.format]
    paths = [str(save_dataset(ds, f, out=args.out, minari_id=args.minari_id, data_dir=args.data_dir,
                              overwrite=args.overwrite)) for f in formats]
    summary = {k: ds.metadata[k] for k in ("kind", "num_episodes", "num_steps", "return_mean", "return_std")}
    print(json.dumps({"datasets": paths, "env_id": ds.env_id, **summary}))
    return 0
