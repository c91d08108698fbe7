"""Test top-1 without fine-tuning of every run's best policy rebuilt as scored vs with more BatchNorm batches.

A search with AMC's recovery (``--reconstruction consumers``) scores each policy after re-estimating BatchNorm
statistics on one calibration batch (50 images: as faithful a ranking as more, at a fraction of the cost;
``proxy-fidelity/``); sequential least squares, the default since, re-estimates them on all calibration images. The model a user deploys
without fine-tuning can afford more: ``amc apply POLICY --bn-batches N`` re-estimates them on N batches of
the same recorded calibration images (a different model from the scored one, as ``amc apply`` says). For
the run folders ``results/benchmarks/NAME/METHOD-seed*`` this rebuilds each best policy and the uniform
policy both ways and writes ``final_recalibration.csv`` (tidy: method, seed, test_top1_scored,
test_top1_bn{N}) into the folder, then prints the mean ± std per method.

    python benchmarks/final_recalibration.py NAME --checkpoint CKPT --data-dir DIR [--bn-batches 10]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from amc import Policy
from amc.errors import AmcError
from amc.io import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_methods import ROOT, Evaluator, run_name  # noqa: E402  (the same rebuild and test scoring as the comparison)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="folder under results/benchmarks")
    p.add_argument("--checkpoint", required=True, help="the dense model the searches pruned")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--bn-batches", type=int, default=10,
                   help="BatchNorm batches of the final model (of the policy's calibration batch size; at most its "
                        "calibration images are used)")
    p.add_argument("--results", default=str(ROOT / "results" / "benchmarks"))
    args = p.parse_args(argv)
    folder = Path(args.results) / args.name
    runs = sorted(folder.glob("*-seed*/best_policy.json"))
    if not runs:
        raise SystemExit(f"final_recalibration: no finished runs in {folder}")
    if args.bn_batches < 1:
        raise SystemExit(f"final_recalibration: --bn-batches must be at least 1, got {args.bn_batches}")
    torch.set_num_threads(1)
    uniform = runs[0].parent / "uniform_policy.json"
    try:
        first = Policy.load(uniform)
        evaluator = Evaluator(args.checkpoint, args.data_dir, first.model["name"])
        evaluator.splits(first)  # a missing data folder fails here, before any rebuild
    except AmcError as exc:
        raise SystemExit(f"final_recalibration: {exc}") from None
    column = f"test_top1_bn{args.bn_batches}"
    rows = []
    for path in [uniform, *runs]:
        policy = Policy.load(path)
        more = replace(policy, prune=replace(policy.prune, bn_batches=args.bn_batches))
        method, seed = ("uniform", -1) if path == uniform else run_name(path.parent)
        rows.append({"method": method, "seed": int(seed),
                     "test_top1_scored": evaluator.top1(evaluator.rebuild(policy).model, policy),
                     column: evaluator.top1(evaluator.rebuild(more).model, more)})
    table = pd.DataFrame(rows)
    atomic_write_text(table.to_csv(index=False), folder / "final_recalibration.csv")
    summary = table.groupby("method", sort=False)[["test_top1_scored", column]].agg(["mean", "std"]) * 100
    print(summary.round(2).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
