"""``seqplanner train bc --dataset D --out models/bc_x``: train the behaviour-cloning MLP baseline."""

from __future__ import annotations

import argparse

from ros_seqplanner.cli._common import add_dataset_arguments, add_runtime_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p)
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
    add_runtime_arguments(g)


def run(args: argparse.Namespace) -> int:
    import sys

    from ros_seqplanner.cli._common import load_training_dataset
    from ros_seqplanner.data.episodes import DatasetError
    from ros_seqplanner.training.bc import BCTrainConfig, train_bc

    try:
        dataset = load_training_dataset(args)
        config = BCTrainConfig(
            hidden=args.hidden, n_layer=args.n_layer, dropout=args.dropout, batch_size=args.batch_size,
            steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
            grad_clip=args.grad_clip, seed=args.seed, device=args.device, progress=not args.no_progress)
        path = train_bc(dataset, config, args.out)
    except (DatasetError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
