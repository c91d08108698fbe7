"""How many BatchNorm recalibration batches does an episode need?

Scores the same seeded random policies (actions uniform in [0.2, 1], clamped to the FLOPs target by
the environment) with 0, 2 and 5 recalibration batches of 100 calibration images and records each
policy's search-split top-1, so that the mean effect and the ranking can be compared.

    python benchmarks/bn_recalibration.py --checkpoint results/benchmarks/resnet20-jpeg-finetune/run/model.pt \\
        --data-dir DIR --record results/benchmarks/episode-speed/bn_recalibration.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from amc.config import DataConfig, EnvConfig, PruneConfig
from amc.io import atomic_write_text, open_model
from amc.provenance import provenance
from amc_envs import ChannelPruningEnv, make_task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir", required=True, help="CIFAR-10 in the python layout")
    p.add_argument("--policies", type=int, default=6)
    p.add_argument("--batches", type=int, nargs="+", default=[0, 2, 5])
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record")
    args = p.parse_args(argv)
    model, spec, _ = open_model(args.model, args.checkpoint)
    data = DataConfig("cifar10", args.data_dir)
    top1: dict[int, list[float]] = {}
    for batches in args.batches:
        task = make_task(model, spec, data, prune=PruneConfig(reconstruction="consumers", bn_batches=batches))
        env = ChannelPruningEnv(task, EnvConfig(target=args.target))
        actions = np.random.default_rng(args.seed).uniform(0.2, 1.0, (args.policies, len(env.groups)))
        top1[batches] = []
        for policy in actions:
            env.reset(seed=args.seed)
            for action in policy:
                info = env.step(np.array([action], dtype=np.float32))[4]
            top1[batches].append(info["result"].metrics["top1"])
        ranking = np.argsort(-np.array(top1[batches])).tolist()
        print(f"{batches} BN batches: top-1 {np.round(top1[batches], 4).tolist()} mean {np.mean(top1[batches]):.4f} "
              f"ranking {ranking}")
    if args.record:
        info = provenance(args.seed, " ".join([Path(sys.executable).name, *sys.argv]))
        record = {"benchmark": "bn_recalibration", **info, "model": args.model, "target": args.target,
                  "search_top1": {str(k): v for k, v in top1.items()},
                  "mean_top1": {str(k): float(np.mean(v)) for k, v in top1.items()},
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(json.dumps(record, indent=2) + "\n", args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
