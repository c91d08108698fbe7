"""Soak: a long search on a small model, with the process's resident memory sampled; reports its growth.

    python benchmarks/soak.py --episodes 1000 --record results/benchmarks/reliability/soak.json

RSS is read from /proc/self/statm after every episode (through the search's progress hook). Growth is
the median of the last 10% of samples over the median of the samples between 10% and 20% (after the
replay buffer and allocator caches warmed up); goal < 5%.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from amc.config import AgentConfig, CalibrationConfig, DataConfig, PruneConfig, SearchConfig
from amc.io import atomic_write_text
from amc.models import ModelSpec, build_model
from amc.provenance import provenance
from amc_agents import run_search
from amc_envs import make_task


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--agent", default="ddpg")
    p.add_argument("--record")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    data = DataConfig(synthetic_size=(1200, 10), holdout=200, search_images=200, image_size=16)
    calib, prune = CalibrationConfig(images=100), PruneConfig(reconstruction="consumers", bn_batches=1)
    cfg = SearchConfig(data=data, calibration=calib, prune=prune, episodes=args.episodes,
                       agent=AgentConfig(algorithm=args.agent, warmup_episodes=50, hidden=(64, 64)))
    samples: list[float] = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        task = make_task(build_model(spec), spec, data, calib, prune)
        run_search(cfg, Path(tmp) / "run", task=task, progress=lambda row: samples.append(rss_mb()))
    n = len(samples)
    early = statistics.median(samples[n // 10: n // 5])
    late = statistics.median(samples[-max(1, n // 10):])
    record = {"benchmark": "soak", "episodes": n, "agent": args.agent, "rss_mb_first": samples[0],
              "rss_mb_early_median": early, "rss_mb_late_median": late, "growth": late / early - 1,
              "rss_mb_every_50": samples[::50], "seconds": time.time() - started, **provenance()}
    print(f"{n} episodes in {record['seconds']:.0f} s: RSS {early:.1f} MB (10-20%) -> {late:.1f} MB (last 10%), "
          f"growth {100 * record['growth']:.2f}%")
    if args.record:
        atomic_write_text(json.dumps(record, indent=2) + "\n", args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
