"""``seqplanner train bc --dataset D --out models/bc_x``: train the behaviour-cloning MLP baseline."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="D4RL-style .hdf5 file, Minari dataset directory or Minari id")
    p.add_argument("--out", required=True, help="checkpoint path without suffix (writes .safetensors + .json)")
    p.add_argument("--env-id", default=None, help="override the env id stored in the dataset/checkpoint")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--n-layer", type=int, default=2, help="hidden layers")
    g.add_argument("--dropout", type=float, default=0.0)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--steps", type=int, default=100_000)
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup-steps", type=int, default=1000)
    g.add_argument("--grad-clip", type=float, default=1.0, help="<= 0 disables")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from ros_seqplanner.data.episodes import DatasetError
    from ros_seqplanner.data.loading import load_dataset
    from ros_seqplanner.training.bc import BCTrainConfig, train_bc

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dataset = load_dataset(args.dataset)
        if args.env_id:
            dataset.env_id = args.env_id
        config = BCTrainConfig(
            hidden=args.hidden, n_layer=args.n_layer, dropout=args.dropout, batch_size=args.batch_size,
            steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
            grad_clip=args.grad_clip, seed=args.seed, device=args.device, progress=not args.no_progress)
        print(f"dataset {args.dataset}: {len(dataset)} episodes, {dataset.num_transitions} transitions",
              file=sys.stderr)
        path = train_bc(dataset, config, args.out)
    except (DatasetError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
