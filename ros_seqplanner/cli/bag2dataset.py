"""``seqplanner bag2dataset BAG --out FILE``: turn a robot log (rosbag2) into a training dataset.

Each command is paired with the latest observation before it and the reward after it; episodes are
cut at episode events and at time gaps (see :mod:`ros_seqplanner.bags.to_dataset`). Output, written
by the shared data modules so every trainer reads it: D4RL-style HDF5 (``--out FILE.hdf5``) or a
Minari dataset (``--out namespace/name-v0``, needs ``--env``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ros_seqplanner.bags.to_dataset import (
    DEFAULT_ACTION_TOPIC,
    DEFAULT_EPISODE_TOPIC,
    DEFAULT_OBS_TOPIC,
    DEFAULT_REWARD_TOPIC,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", help="bag directory (with metadata.yaml) or a single .mcap/.db3 storage file")
    p.add_argument("--out", required=True, help="output: FILE.hdf5 (D4RL layout) or a Minari dataset id")
    p.add_argument("--format", choices=("auto", "hdf5", "minari"), default="auto",
                   help="output format (auto: .hdf5/.h5 suffix = hdf5, else minari)")
    p.add_argument("--data-dir", default=None, help="Minari data directory (default: Minari's)")
    p.add_argument("--obs-topic", default=DEFAULT_OBS_TOPIC, help="observation topic (Float64MultiArray or "
                   "JointState with --joint-layout)")
    p.add_argument("--action-topic", default=DEFAULT_ACTION_TOPIC, help="command topic (Float64MultiArray)")
    p.add_argument("--reward-topic", default=DEFAULT_REWARD_TOPIC, help="reward topic (Float64)")
    p.add_argument("--episode-topic", default=DEFAULT_EPISODE_TOPIC,
                   help="episode events (String, JSON with 'terminated'); '' to use only time gaps")
    p.add_argument("--gap", type=float, default=1.0, metavar="S",
                   help="a pause longer than S seconds between commands starts a new episode (0 = never)")
    p.add_argument("--joint-layout", nargs="+", default=None, metavar="pos:J|vel:J",
                   help="observation entries when --obs-topic is a sensor_msgs/JointState")
    p.add_argument("--env", default="", help="env id stored with the dataset (e.g. HalfCheetah-v5)")
    p.add_argument("--dataset-id", default="", help="dataset id stored with the dataset")


def _format(args: argparse.Namespace) -> str:
    if args.format != "auto":
        return args.format
    suffix = Path(args.out).suffix.lower()
    return "hdf5" if suffix in (".hdf5", ".h5") else "minari"


def save_dataset(ds: object, out: str, fmt: str, data_dir: str | None = None) -> str:
    """Write ``ds`` (an EpisodeDataset) with the shared data-module writers; returns where it went."""
    if fmt == "hdf5":
        from ros_seqplanner.data.d4rl_hdf5 import save_d4rl_hdf5

        return str(save_d4rl_hdf5(ds, out))
    from ros_seqplanner.data.minari_io import save_minari

    return str(save_minari(ds, out, data_dir=data_dir))


def run(args: argparse.Namespace) -> int:
    from ros_seqplanner.bags.reader import BagError
    from ros_seqplanner.bags.to_dataset import bag_to_dataset
    from ros_seqplanner.data.episodes import DatasetError

    try:
        ds, report = bag_to_dataset(
            args.bag, obs_topic=args.obs_topic, action_topic=args.action_topic, reward_topic=args.reward_topic,
            episode_topic=args.episode_topic or None, gap_s=args.gap or None, joint_layout=args.joint_layout,
            env_id=args.env, dataset_id=args.dataset_id)
    except (BagError, DatasetError) as exc:
        print(f"bag2dataset failed: {exc}")
        return 1
    fmt = _format(args)
    if fmt == "minari" and not args.env:
        print("a Minari dataset needs --env (a gymnasium id such as HalfCheetah-v5) for its spaces")
        return 2
    try:
        where = save_dataset(ds, args.out, fmt, args.data_dir)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"cannot write {fmt}: {exc}")
        return 1
    print(f"{report.episodes} episode(s), {report.transitions} transitions from {report.commands} commands "
          f"(dropped: {report.dropped_no_observation} without observation, {report.dropped_no_reward} without "
          f"reward; cuts: {report.cuts_by_event} by event, {report.cuts_by_gap} by gap) -> {where} ({fmt})")
    return 0
