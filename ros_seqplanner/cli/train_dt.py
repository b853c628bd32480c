"""``seqplanner train dt --dataset D --out models/dt_x``: train a Decision Transformer.

``--dataset`` is a D4RL-style HDF5 file, a Minari dataset directory or a Minari id. Defaults are the
official DT gym settings (K=20, 3 layers, 1 head, width 128, lr 1e-4, warm-up 10k, 100k steps).
"""

from __future__ import annotations

import argparse

from ros_seqplanner.cli._common import add_dataset_arguments, add_runtime_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p)
    p.add_argument("--target-return", type=float, action="append", default=None,
                   help="evaluation target return(s), repeatable; default: DT paper per env (first = default)")
    g = p.add_argument_group("model")
    g.add_argument("--context", "-K", type=int, default=20, help="steps per window (K)")
    g.add_argument("--n-layer", type=int, default=3)
    g.add_argument("--n-head", type=int, default=1)
    g.add_argument("--n-embd", type=int, default=128)
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--max-ep-len", type=int, default=1000, help="timestep embedding size (later steps clamp)")
    g.add_argument("--rtg-scale", type=float, default=1000.0, help="returns-to-go are divided by this")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--steps", type=int, default=100_000)
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup-steps", type=int, default=10_000)
    g.add_argument("--grad-clip", type=float, default=0.25)
    add_runtime_arguments(g)


def run(args: argparse.Namespace) -> int:
    import sys

    from ros_seqplanner.cli._common import load_training_dataset
    from ros_seqplanner.data.episodes import DatasetError
    from ros_seqplanner.training.dt import DTTrainConfig, train_dt

    try:
        dataset = load_training_dataset(args)
        config = DTTrainConfig(
            context=args.context, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
            dropout=args.dropout, max_ep_len=args.max_ep_len, rtg_scale=args.rtg_scale,
            batch_size=args.batch_size, steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, seed=args.seed, device=args.device,
            target_returns=tuple(args.target_return or ()), progress=not args.no_progress)
        path = train_dt(dataset, config, args.out)
    except (DatasetError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
