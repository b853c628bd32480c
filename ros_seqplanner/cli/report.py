"""``seqplanner report``: regenerate ``docs/RESULTS.md`` from the JSON results in ``models/results/``."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="models/results", help="directory of evaluate / long-horizon JSON files")
    p.add_argument("--out", default="docs/RESULTS.md", help="markdown file to write")
    p.add_argument("--title", default="Results")
    p.add_argument("--print", action="store_true", help="also print the report")


def run(args: argparse.Namespace) -> int:
    import sys

    from ros_seqplanner.sim.report import ReportError, write_report

    try:
        path = write_report(args.results, args.out, args.title)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.print:
        print(path.read_text())
    print(path)
    return 0
