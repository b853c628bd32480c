"""``seqplanner train tt --dataset D --out models/tt_x``: train a Trajectory Transformer.

``--dataset`` is a D4RL-style HDF5 file (observations, actions, rewards, terminals, timeouts), a Minari
dataset directory or a Minari id (read by ``ros_seqplanner.data.loading.load_dataset``).
Multi-GPU / multi-node: launch with ``torchrun --nproc_per_node N -m ros_seqplanner.cli
train tt ...`` (DDP; nccl on CUDA, gloo on CPU; ``--batch-size`` is per process).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ros_seqplanner.cli._common import add_dataset_arguments, add_runtime_arguments, key_value

if TYPE_CHECKING:
    from ros_seqplanner.training.tt import TTTrainConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--resume", default=None, help="continue from this checkpoint (its .state files next to it)")
    src.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                     help="fine-tune: start from this TT checkpoint's weights and discretiser (no .state files "
                          "needed) with a fresh optimizer, step 0 and this run's --steps/--lr schedule")
    g = p.add_argument_group("tokens")
    g.add_argument("--n-bins", type=int, default=100)
    g.add_argument("--strategy", choices=("uniform", "quantile"), default="quantile")
    g.add_argument("--gamma", type=float, default=0.99)
    g.add_argument("--termination-penalty", type=float, default=-100.0)
    g = p.add_argument_group("model")
    g.add_argument("--max-transitions", type=int, default=20, help="block size in transitions (>= context+horizon)")
    g.add_argument("--n-layer", type=int, default=4)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--n-embd", type=int, default=128)
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--attn-dropout", type=float, default=None,
                   help="dropout on attention weights (default: --dropout; 0 roughly halves CPU step time)")
    g.add_argument("--action-weight", type=float, default=5.0)
    g.add_argument("--goal-conditioned", action="store_true", help="condition on the episode's final observation")
    g = p.add_argument_group("planning")
    g.add_argument("--planner", type=key_value, action="append", default=None, metavar="KEY=VALUE",
                   help="planner setting the checkpoint ships (a PlannerConfig field, e.g. horizon=5 when the "
                        "dataset's preset horizon exceeds --max-transitions); repeatable; default with --resume or "
                        "--init-from: that checkpoint's")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=256, help="per process")
    g.add_argument("--fall-fraction", type=float, default=0.0,
                   help="share of each batch drawn from windows that hold a termination (oversamples rare falls; "
                        "0 = uniform, as the reference)")
    g.add_argument("--start-fraction", type=float, default=0.0,
                   help="share of each batch drawn from windows that start at an episode's first transition "
                        "(teaches the value of the initial state; 0 = uniform, as the reference)")
    g.add_argument("--lr", type=float, default=6e-4)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--epochs", type=float, default=50.0)
    g.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides --epochs)")
    g.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of the steps")
    g.add_argument("--stop-at-step", type=int, default=None, help="stop early with a resumable checkpoint")
    g.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints (0 = end only)")
    add_runtime_arguments(g)
    g.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")


def run(args: argparse.Namespace) -> int:
    from ros_seqplanner.cli._common import load_training_dataset
    from ros_seqplanner.data.episodes import DatasetError
    from ros_seqplanner.nets.checkpoint import CheckpointError
    from ros_seqplanner.planning.beam import PlannerConfig
    from ros_seqplanner.training.tt import train_tt

    planner = None
    if args.planner is not None:
        try:  # bad settings fail here, before the dataset is read
            planner = PlannerConfig.check_settings(dict(args.planner), "--planner")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        config = _config(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        dataset = load_training_dataset(args)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = "seqplanner " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        path = train_tt(dataset, config, Path(args.out), resume=args.resume, init_from=args.init_from,
                        command=command, planner=planner)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")
    return 0


def _config(args: argparse.Namespace) -> TTTrainConfig:
    from ros_seqplanner.training.tt import TTTrainConfig

    return TTTrainConfig(
        n_bins=args.n_bins, strategy=args.strategy, gamma=args.gamma, termination_penalty=args.termination_penalty,
        max_transitions=args.max_transitions, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
        dropout=args.dropout, attn_dropout=args.attn_dropout,
        action_weight=args.action_weight, goal_conditioned=args.goal_conditioned,
        batch_size=args.batch_size, fall_fraction=args.fall_fraction,
        start_fraction=args.start_fraction, lr=args.lr, weight_decay=args.weight_decay,
        epochs=args.epochs,
        max_steps=args.steps, warmup_steps=args.warmup_steps, stop_at_step=args.stop_at_step,
        checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device, amp=not args.no_amp,
        progress=not args.no_progress,
    )
