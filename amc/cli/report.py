"""``amc report``: regenerate the plots and summary of a search run from its files."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="regenerate plots and summary.md of a search run from its files")
    p.add_argument("run", help="results/<run> folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc_agents.report import write_report  # noqa: PLC0415

    print("\n".join(str(p) for p in write_report(args.run)))
    return 0
