"""``amc sweep``: many searches (targets x seeds x agents) through Ray Tune, each a resumable run folder."""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

from ..config import replace, validate
from .args import add_flags, search_config
from .common import check_device
from .search import _base, default_cache_dir


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of searches (targets x seeds x agents) on Ray Tune; "
                       "rerun the same command to resume it",
                       description="Every search flag sets the base config; --targets, --seeds and --agents span "
                       "the grid. Needs Ray Tune (pip install 'amc[ray]'). Local by default; --address runs the "
                       "trials on a Ray cluster (their folders must be on a file system every node sees).")
    p.add_argument("--model", help="registry name, torchvision:NAME or package.module:factory (imports that code)")
    add_flags(p, "model", "data", "calibration", "prune", "env", "agent", "run", skip=("--target",))
    p.add_argument("--config", help="YAML file with SearchConfig sections (flags override it)")
    p.add_argument("--targets", type=float, nargs="+", required=True, help="cost targets (fractions of dense)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="search seeds (default 0)")
    p.add_argument("--agents", nargs="+", help="searchers to compare (default: --agent's, ddpg)")
    p.add_argument("--out", required=True, help="sweep folder: trials/<name>/ run folders, sweep.csv, summary.md, "
                   "front/ (the Pareto front over all trials)")
    p.add_argument("--address", help="Ray cluster address (auto, ray://host:10001); default: a local Ray")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: one per CPU)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs Ray reserves per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (default 1 with --device cuda, else 0)")
    p.set_defaults(func=run, resume=None)


def run(args: argparse.Namespace) -> int:
    from amc_agents.sweep import grid, run_sweep, write_front  # noqa: PLC0415

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray Tune's reporter then honours verbose=0: our own lines only

    cfg = search_config(args, _base(args))
    if cfg.cache_dir is None:
        cfg = replace(cfg, cache_dir=str(default_cache_dir()))
    if cfg.cache_dir == "none":
        cfg = dataclasses.replace(cfg, cache_dir=None)  # (amc.config.replace ignores None values)
    validate(cfg)
    check_device(cfg.device)
    trials = grid(args.targets, args.seeds, args.agents or [cfg.agent.algorithm])
    for t in trials:
        validate(t.config(cfg))  # a bad target or agent name fails before Ray starts
    began = time.time()
    rows = run_sweep(cfg, trials, args.out, address=args.address, max_concurrent=args.max_concurrent,
                     cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial)
    front = write_front(args.out, trials)
    print(f"{len(rows)} trials in {time.time() - began:.0f} s; {args.out}/sweep.csv, {args.out}/summary.md, "
          f"Pareto front in {front}")
    return 0
