"""``amc demo``: dense vs uniform vs searched pruning on the bundled handwritten digits, offline."""
from __future__ import annotations

import argparse
import time

from ..config import ALGORITHMS


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train, search and compare dense / uniform / searched pruning on bundled real "
                                    "images (handwritten digits, no downloads)")
    p.add_argument("--out", default="results/demo")
    p.add_argument("--episodes", type=int, default=None, help="search episodes (default 200)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of the dense model (default 5)")
    p.add_argument("--agent", choices=ALGORITHMS, default=None, help="searching algorithm (default ddpg)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: these small models gain little from more, a busy machine "
                        "slows several threads down a lot, and the printed numbers then do not depend on the "
                        "number of cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415
    from amc_agents.demo import AGENT, EPISODES, EPOCHS, run_demo  # noqa: PLC0415

    started = time.perf_counter()
    torch.set_num_threads(max(1, args.threads))
    r = run_demo(args.out, EPISODES if args.episodes is None else args.episodes,
                 epochs=EPOCHS if args.epochs is None else args.epochs, agent=args.agent or AGENT, log=print)
    dense = r.row("dense")
    print(f"\nResNet-20 on handwritten digits (16x16), pruned to {r.target:.0%} of the dense MACs without "
          f"fine-tuning;\ntest top-1 on {r.test_images} digits that neither training nor the search saw "
          f"(the search scored policies on {r.search_images} others):\n")
    print(f"{'model':<10} {'MACs':>9} {'of dense':>9} {'params':>9} {'test top-1':>11} {'search top-1':>13}")
    for row in r.rows:
        print(f"{row.name:<10} {row.macs / 1e6:>7.2f} M {row.macs / dense.macs:>9.3f} {row.params / 1e3:>7.1f} k "
              f"{row.top1:>11.2%} {row.search_top1:>13.2%}")
    print(f"\nsearched: {r.agent}, {r.episodes} episodes. Done in {time.perf_counter() - started:.0f} s. Outputs:")
    for what, path in r.files.items():
        print(f"  {what + ':':<16}{path}" + ("/ (episodes.csv, best_policy.json, uniform_policy.json, summary.md, "
                                              "plots)" if path.is_dir() else ""))
    return 0
