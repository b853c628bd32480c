"""Arguments and steps the ``train`` subcommands share (dataset in, checkpoint out, runtime)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ros_seqplanner.data.episodes import EpisodeDataset


def key_value(text: str) -> tuple[str, object]:
    """argparse type for ``KEY=VALUE``: the value is read as JSON when it parses (``5``, ``0.6``, ``null``),
    else kept as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """--dataset / --out / --env-id, identical for every trainer."""
    p.add_argument("--dataset", required=True, help="D4RL-style .hdf5 file, Minari dataset directory or Minari id")
    p.add_argument("--out", required=True, help="checkpoint path without suffix (writes .safetensors + .json)")
    p.add_argument("--env-id", default=None, help="override the env id stored in the dataset/checkpoint")


def add_runtime_arguments(g: argparse._ArgumentGroup) -> None:
    """--seed / --device / --threads / --no-progress, identical for every trainer."""
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--no-progress", action="store_true")


def load_training_dataset(args: argparse.Namespace) -> EpisodeDataset:
    """Apply --threads, load --dataset (DatasetError on a bad file), apply --env-id, print a summary."""
    import torch

    from ros_seqplanner.data.loading import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    if args.env_id:
        dataset.env_id = args.env_id
    print(f"dataset {args.dataset}: {len(dataset)} episodes, {dataset.num_transitions} transitions, "
          f"obs {dataset.obs_dim}, act {dataset.act_dim}", file=sys.stderr)
    return dataset
