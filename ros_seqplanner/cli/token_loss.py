"""``seqplanner token-loss CKPT --dataset D``: a TT's cross-entropy per token group on dataset windows.

Prints one line per group (observation / action / reward / value) with the uniform baseline, and how well
the expected value token tracks its target (the planner's beam score); ``--out`` writes the numbers as JSON.
Use held-out data (e.g. ``seqplanner collect ... --seed 777``) to measure generalisation
rather than fit. See :mod:`ros_seqplanner.training.token_loss`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="TT checkpoint: name, name.json or name.safetensors")
    p.add_argument("--dataset", required=True, help="D4RL-style .hdf5 file, Minari dataset directory or Minari id")
    p.add_argument("--windows", type=int, default=256, help="random windows (of the model's block) to score")
    p.add_argument("--seed", type=int, default=1, help="seed of the window starts")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--behaviour", default=None,
                   help="behaviour checkpoint that generated the data: also report the action-token entropy floor "
                        "under its sampled (tanh-Gaussian) actions")
    p.add_argument("--out", default=None, help="write the result as JSON here (models/results/ puts it in the report)")
    p.add_argument("--note", default="", help="free text stored with the result (e.g. 'held-out episodes')")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ros_seqplanner.data.episodes import DatasetError
    from ros_seqplanner.data.loading import load_dataset
    from ros_seqplanner.nets.checkpoint import CheckpointError
    from ros_seqplanner.nets.tt import load_tt
    from ros_seqplanner.training.token_loss import (
        action_entropy_floor,
        start_token_losses,
        token_losses,
        tokenise_windows,
        uniform_cross_entropy,
        value_fit,
    )

    torch.set_num_threads(max(1, args.threads))
    try:
        model, disc, meta = load_tt(args.checkpoint, args.device)
        dataset = load_dataset(args.dataset)
        gamma, penalty = float(meta["gamma"]), float(meta["termination_penalty"])
        tokenised = dict(gamma=gamma, termination_penalty=penalty, windows=args.windows, seed=args.seed,
                         tokens=tokenise_windows(model, disc, dataset, gamma, penalty))  # tokenised once, scored 3 ways
        groups = token_losses(model, disc, dataset, **tokenised)
        at_start = start_token_losses(model, disc, dataset, **tokenised)
        values = value_fit(model, disc, dataset, **tokenised)
        floor = None
        if args.behaviour:
            from ros_seqplanner.policies.behaviour import BehaviourPolicy

            policy = BehaviourPolicy.from_checkpoint(args.behaviour, noise="policy")
            floor = action_entropy_floor(disc, model.cfg.obs_dim, model.cfg.act_dim, policy,
                                         np.concatenate([ep.observations for ep in dataset]), seed=args.seed)
    except (CheckpointError, DatasetError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    uniform = uniform_cross_entropy(model.cfg.n_bins)
    print(f"{args.checkpoint} (step {meta.get('step')}) on {args.dataset}: {args.windows} windows of "
          f"{model.cfg.max_transitions} transitions, seed {args.seed}; uniform cross-entropy {uniform:.3f}")
    for name, g in groups.items():
        print(f"  {name:<12} cross-entropy {g.cross_entropy:.3f}  top-1 {g.accuracy:.3f}  within 3 bins "
              f"{g.within_near:.3f}  ({g.tokens} tokens)")
    n_start = at_start["reward"].tokens
    print(f"  windows that start an episode ({min(args.windows, len(dataset))} episodes, {n_start} transitions):")
    for name, g in at_start.items():
        print(f"    {name:<10} cross-entropy {g.cross_entropy:.3f}  top-1 {g.accuracy:.3f}  within 3 bins "
              f"{g.within_near:.3f}  ({g.tokens} tokens)")
    print(f"  expected value token vs target: r {values.r:.3f} (mean target {values.mean_target:.1f}, "
          f"{values.tokens} tokens)")
    for f in values.fall_profile:
        print(f"  {f.first}-{f.last} steps before a termination ({f.episodes} episodes): mean target {f.target:.1f}, "
              f"mean prediction {f.predicted:.1f}")
    print(f"  first transition of an episode ({values.starts} episodes): mean target {values.start_target:.1f}, "
          f"mean prediction {values.start_predicted:.1f}, mean |error| {values.start_error:.1f}")
    if floor is not None:
        print(f"  action entropy floor under {args.behaviour} (sampled actions): {floor:.3f}")
    if args.out:
        out = {"kind": "token_loss", "checkpoint": args.checkpoint, "step": meta.get("step"),
               "env_id": meta.get("env_id"), "dataset": args.dataset, "dataset_id": dataset.dataset_id,
               "transitions": dataset.num_transitions, "windows": args.windows, "seed": args.seed,
               "uniform_cross_entropy": uniform, "groups": {k: v.to_dict() for k, v in groups.items()},
               "start_groups": {k: v.to_dict() for k, v in at_start.items()},
               "value_fit": values.to_dict(), "action_floor": floor, "behaviour": args.behaviour,
               "note": args.note}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0
