"""How long one search episode takes, split by step, against the floor of scoring alone.

Runs a short real search (the same code as ``amc search``; every ``amc search`` flag is accepted)
and reads the per-episode timings it logs: prune (channel selection + compaction), reconstruct
(least squares), bn_recalibration, evaluate (search split), and agent (everything else in the
episode: the agent's actions and updates, FLOPs verification, bookkeeping). Episodes of the
agent's exploration phase (after warm-up, when it trains) are the ones summarised.

The **floor** is the forward pass of the same compact model over the same search split, alone:
the best policy found is compacted once and scored ``--repeats`` times. The record reports
median episode seconds / median floor seconds (target on CPU: <= 1.3) and episodes per hour.

    python benchmarks/episode_speed.py --model resnet20 --checkpoint CKPT --dataset cifar10 \\
        --data-dir DIR --episodes 30 --warmup-episodes 10 --record results/benchmarks/episode-speed/resnet20.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from amc import apply_policy
from amc.cli.args import add_flags, search_config
from amc.config import SearchConfig, to_dict
from amc.io import atomic_write_text
from amc.provenance import provenance
from amc_agents import run_search
from amc_envs import PruningTask, open_task

STEPS = ["prune_s", "reconstruct_s", "bn_recalibration_s", "evaluate_s", "agent_s", "episode_s"]


def floor_seconds(task: PruningTask, policy, repeats: int) -> list[float]:
    """Seconds to score the pruned model of ``policy`` on the search split, ``repeats`` times."""
    model = apply_policy(task.model, policy, calibration=task.engine.calibration).model
    task.score(model)  # warm-up (allocations, oneDNN primitive caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        task.score(model)
        times.append(time.perf_counter() - start)
    return times


def machine() -> dict:
    """Library versions and platform plus the CPU/GPU facts timings depend on."""
    info = provenance()
    return {**info["versions"], "platform": info["machine"], "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    add_flags(parser, "model", "data", "calibration", "prune", "env", "agent", "run")
    parser.add_argument("--repeats", type=int, default=7, help="floor measurements (median reported)")
    parser.add_argument("--record", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    cfg = search_config(args, SearchConfig())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    task = open_task(cfg.model, cfg.data, cfg.calibration, cfg.prune, cfg.device)
    setup = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        _, store = run_search(cfg, Path(tmp) / "run", task=task)
        rows = store.episodes()
        floor = floor_seconds(task, store.best_policy(), args.repeats)
    explore = rows[rows.phase != "warm-up"] if (rows.phase != "warm-up").any() else rows
    medians = {col: float(explore[col].median()) for col in STEPS}
    record = {
        "benchmark": "episode_speed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": to_dict(cfg),
        "machine": machine(),
        "groups": len(task.graph.prunable),
        "search_images": len(task.search_labels),
        "setup_s": setup,
        "episodes_summarised": len(explore),
        "median_s": medians,
        "floor_s": {"median": statistics.median(floor), "all": floor},
        "episode_to_floor": medians["episode_s"] / statistics.median(floor),
        "episodes_per_hour": 3600 / medians["episode_s"],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"{cfg.model.name}: {record['groups']} groups, {record['search_images']} search images, "
          f"device {cfg.device}, channels_last {cfg.prune.channels_last}, threads {record['machine']['torch_threads']}")
    print("median seconds per episode (" + str(len(explore)) + " episodes): " +
          ", ".join(f"{k[:-2]} {v:.3f}" for k, v in medians.items()))
    print(f"floor (forward pass of the pruned model over the search split): {record['floor_s']['median']:.3f} s")
    print(f"episode / floor = {record['episode_to_floor']:.2f}; {record['episodes_per_hour']:.0f} episodes per hour")
    if args.record:
        atomic_write_text(json.dumps(record, indent=2) + "\n", args.record)
        print(f"record: {args.record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
