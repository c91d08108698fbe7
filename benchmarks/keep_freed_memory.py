"""A/B of :func:`amc.memory.keep_freed_memory` on one MobileNet-V1 224-px policy: prune + recover + score.

Run it once per mode, in separate processes (the setting is process-wide), alternating:

    for m in default keep default keep; do python benchmarks/keep_freed_memory.py $m; done

Prints the medians over 3 scorings of wall, user and system seconds, minor page faults and the
BatchNorm recalibration's seconds, and the process's peak resident memory. Random weights and synthetic
images (``results/benchmarks/episode-speed/mobilenet224.yaml``); calibration statistics cached in
``--cache-dir`` (default /tmp/amc-ab-cache).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from amc.config import ModelConfig, SearchConfig, from_dict
from amc.memory import keep_freed_memory
from amc.stats_cache import StatsCache
from amc_envs import ChannelPruningEnv, open_task

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("default", "keep"))
    p.add_argument("--cache-dir", default="/tmp/amc-ab-cache")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.mode == "keep" and not keep_freed_memory():
        raise SystemExit("not glibc: nothing to compare")
    base = from_dict(SearchConfig, yaml.safe_load((ROOT / "results/benchmarks/episode-speed/mobilenet224.yaml").read_text()))
    torch.manual_seed(0)
    task = open_task(ModelConfig(name="mobilenet_v1_imagenet", num_classes=10), base.data, base.calibration, base.prune,
                     "cpu", StatsCache(args.cache_dir))
    env = ChannelPruningEnv(task)
    rng = np.random.default_rng(0)
    keep = env.plan([rng.random(1) for _ in env.groups])
    env.score(keep)  # warm-up
    rows = []
    for _ in range(3):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        scored = env.score(keep)
        after = resource.getrusage(resource.RUSAGE_SELF)
        rows.append((time.perf_counter() - start, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                     after.ru_minflt - before.ru_minflt, scored.timings.get("bn_recalibration", 0.0)))
    wall, user, system, faults, bn = (statistics.median(x) for x in zip(*rows))
    print(f"{args.mode}: wall {wall:.2f} s, user {user:.2f} s, system {system:.2f} s, {faults:.0f} minor faults, "
          f"BN recalibration {bn:.2f} s, peak resident {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
