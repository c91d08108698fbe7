"""``amc demo``: the whole workflow on an embedded synthetic task, offline."""
from __future__ import annotations

import argparse
import time


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train, search and apply on an embedded synthetic task (no downloads)")
    p.add_argument("--out", default="results/demo")
    p.add_argument("--episodes", type=int, default=40)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amc_agents.demo import run_demo  # noqa: PLC0415

    started = time.perf_counter()
    r = run_demo(args.out, args.episodes, log=print)
    print(f"dense:  {r.dense_macs / 1e6:.2f} M MACs, {r.dense_params / 1e3:.1f} k params, test top-1 {r.dense_top1:.4f}")
    print(f"pruned: {r.compact_macs / 1e6:.2f} M MACs ({r.compact_macs / r.dense_macs:.3f}), "
          f"{r.compact_params / 1e3:.1f} k params, test top-1 {r.compact_top1:.4f} (no fine-tuning; best search "
          f"reward {r.best_reward:.4f})")
    print(f"done in {time.perf_counter() - started:.0f} s. Outputs in {r.folder}/: dense/model.pt, search/ "
          "(episodes.csv, best_policy.json, summary.md, *.png), compact.pt")
    return 0
