"""``seqplanner train dynamics --dataset D --out models/dyn_x``: single-step MLP dynamics model (s, a) -> (s', r).

The baseline of the long-horizon prediction comparison (``ros_seqplanner.sim.long_horizon``).
"""

from __future__ import annotations

import argparse

from ros_seqplanner.cli._common import add_dataset_arguments, add_runtime_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p)
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--n-layer", type=int, default=3, help="hidden layers")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--steps", type=int, default=20_000)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=1e-5)
    g.add_argument("--warmup-steps", type=int, default=500)
    g.add_argument("--grad-clip", type=float, default=1.0, help="<= 0 disables")
    g.add_argument("--val-fraction", type=float, default=0.02, help="fraction of episodes held out for validation")
    add_runtime_arguments(g)


def run(args: argparse.Namespace) -> int:
    import sys

    from ros_seqplanner.cli._common import load_training_dataset
    from ros_seqplanner.data.episodes import DatasetError
    from ros_seqplanner.training.dynamics import DynamicsTrainConfig, train_dynamics

    try:
        dataset = load_training_dataset(args)
        config = DynamicsTrainConfig(
            hidden=args.hidden, n_layer=args.n_layer, batch_size=args.batch_size, steps=args.steps, lr=args.lr,
            weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
            val_fraction=args.val_fraction, seed=args.seed, device=args.device, progress=not args.no_progress)
        path = train_dynamics(dataset, config, args.out)
    except (DatasetError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
