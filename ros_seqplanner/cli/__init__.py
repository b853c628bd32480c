"""The ``seqplanner`` command.

Each subcommand lives in its own module ``ros_seqplanner.cli.<module>`` exposing
``add_arguments(parser)`` and ``run(args) -> int``; heavy imports (torch, mujoco, rclpy) happen
inside ``run`` so that ``--help`` is instant. Command groups (``train``, ``bench``) have one module
per kind. A module listed here but not present in this build is simply not offered.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("doctor", "report Python, torch/device, ROS 2 (rclpy, RMW, launch_ros), MuJoCo and discovery settings"),
    "collect": ("collect", "generate an offline dataset from a behaviour policy in MuJoCo"),
    "evaluate": ("evaluate", "closed-loop episodes of a checkpoint in MuJoCo; returns and normalised scores"),
    "demo": ("demo", "closed loop over ROS 2: sim bridge + planner nodes on loopback (the main job)"),
    "record": ("record", "record a closed-loop episode to a rosbag2 bag"),
    "replay": ("replay", "publish a rosbag2 bag into a live ROS 2 graph with its original timing"),
    "bag2dataset": ("bag2dataset", "turn a rosbag2 bag into a training dataset"),
    "report": ("report", "regenerate the evaluation report from JSON results"),
    "token-loss": ("token_loss", "a TT's cross-entropy per token group (observation/action/reward/value) on data"),
}

# group -> {kind -> (module, help)}
GROUPS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "train": ("train a model on an offline dataset", {
        "tt": ("train_tt", "Trajectory Transformer"),
        "dt": ("train_dt", "Decision Transformer"),
        "bc": ("train_bc", "behaviour-cloning MLP baseline"),
        "behaviour": ("train_behaviour", "SAC behaviour policy (stable-baselines3) for data collection"),
        "dynamics": ("train_dynamics", "single-step MLP dynamics model (long-horizon comparison)"),
    }),
    "bench": ("benchmarks printing p50/p99 and the config", {
        "plan": ("bench_plan", "TT beam-search planning latency"),
        "dt": ("bench_dt", "Decision Transformer action latency (optionally vs Hugging Face)"),
        "train-tt": ("bench_train_tt", "TT training throughput (tokens/s)"),
        "node": ("bench_node", "ROS node overhead: state in -> command out, minus planning"),
    }),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(f"ros_seqplanner.cli.{module}") is not None


def _add(sub: argparse._SubParsersAction, name: str, module: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description=help_)
    mod = importlib.import_module(f"ros_seqplanner.cli.{module}")
    mod.add_arguments(p)
    p.set_defaults(_run=mod.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqplanner",
        description="Sequence-model planners (Trajectory Transformer, Decision Transformer) for ROS 2.",
    )
    from ros_seqplanner import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        if _available(module):
            _add(sub, name, module, help_)
    for group, (help_, kinds) in GROUPS.items():
        present = {k: v for k, v in kinds.items() if _available(v[0])}
        if not present:
            continue
        gp = sub.add_parser(group, help=help_, description=help_)
        gsub = gp.add_subparsers(dest="kind", metavar="KIND", required=True)
        for kind, (module, khelp) in present.items():
            _add(gsub, kind, module, khelp)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
