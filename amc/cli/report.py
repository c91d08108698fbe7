"""``amc report``: regenerate the plots and summary of search runs; with --pareto, their Pareto front."""
from __future__ import annotations

import argparse

from ..errors import AmcError


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="regenerate plots and summary.md of search runs; --pareto: the front over them")
    p.add_argument("runs", nargs="+", metavar="RUN", help="results/<run> folders (several with --pareto)")
    p.add_argument("--pareto", metavar="DIR", help="write the Pareto front of the runs' episodes (score vs cost) into "
                   "this new folder: pareto.csv, pareto_<cost>.png and a policy file per point")
    p.add_argument("--cost", choices=("macs", "params", "latency"),
                   help="the cost axis of --pareto (default: the first run's budgeted cost)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc_agents.pareto import write_pareto  # noqa: PLC0415
    from amc_agents.report import write_report  # noqa: PLC0415

    if len(args.runs) > 1 and not args.pareto:
        raise AmcError("several runs are compared with --pareto DIR (a report is per run otherwise)")
    for folder in args.runs:
        print("\n".join(str(p) for p in write_report(folder)))
    if args.pareto:
        print("\n".join(str(p) for p in write_pareto(args.runs, args.pareto, args.cost)))
    return 0
