"""How fast a search scores policies: one episode against its floor, kernel time, construction, and workers.

Runs real searches (the same code as ``amc search``; every ``amc search`` flag is accepted) and records:

1. **Construction**, cold (empty cache folder) and cached (the same folder again): seconds from calling
   ``run_search`` to its first episode (model, data, tracing, calibration statistics, uniform baseline).
2. **Episode parts** of a serial search with the given flags (``--agent`` etc.): medians over the
   episodes after warm-up of prune (channel selection + compaction), reconstruct (least squares),
   bn_recalibration, evaluate (search split) and agent (actions, updates, bookkeeping); and per episode
   user and system CPU seconds and minor page faults (``resource.getrusage`` deltas between episodes).
   The **floor** of an episode is the forward pass of its own compact model over the search split, alone
   (median of ``--repeats``), measured for the run's top-k episodes (policies at the same budget differ
   in speed, so each episode is compared with its own model); the ratios are medians over those episodes,
   for the whole episode and for the environment's part (prune + recovery + evaluate, without the agent).
3. **Throughput**, side by side in one run, ``--rounds`` times interleaved: episodes per hour of a random
   search (its policies do not depend on scores, so every mode runs the same episodes) in one process with 1
   thread, one process with 2 threads, and 2 worker processes of 1 thread each; each search in a fresh
   process, as ``amc search`` starts.

    # MobileNet-V1 at 224 px on synthetic images: --config with data: {dataset: synthetic, synthetic_size: [1100, 10]}
    python benchmarks/episode_speed.py --model resnet20 --checkpoint CKPT --dataset cifar10 --data-dir DIR \\
        --episodes 30 --warmup-episodes 10 --record results/benchmarks/episode-speed/resnet20.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

from amc import Policy, apply_policy
from amc.cli.args import add_flags, search_config
from amc.cli.common import reuse_freed_memory
from amc.config import SearchConfig, from_dict, to_dict
from amc.io import atomic_write_text
from amc.provenance import provenance
from amc_agents import run_search
from amc_envs import PruningTask, open_task

STEPS = ["prune_s", "reconstruct_s", "bn_recalibration_s", "evaluate_s", "agent_s", "episode_s"]
MODES = {"1 process, 1 thread": (1, 1), "1 process, 2 threads": (2, 1), "2 workers, 1 thread each": (1, 2)}


def machine() -> dict:
    """Library versions and platform plus the CPU/GPU facts timings depend on."""
    info = provenance()
    return {**info["versions"], "platform": info["machine"], "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


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


def construction_seconds(cfg: SearchConfig, folder: Path) -> float:
    """Seconds from ``run_search`` to its first episode (a one-episode search, minus that episode)."""
    start = time.perf_counter()
    _, store = run_search(dataclasses.replace(cfg, episodes=1, workers=1,
                                              agent=dataclasses.replace(cfg.agent, algorithm="random")), folder)
    return time.perf_counter() - start - float(store.episodes().episode_s.iloc[0])


class Usage:
    """CPU seconds and page faults of this process and its finished children between episodes."""

    def __init__(self):
        self.rows: list[dict] = []

    def __call__(self, row: dict) -> None:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        self.rows.append({"episode": row["episode"], "phase": row["phase"], "user": me.ru_utime + kids.ru_utime,
                          "system": me.ru_stime + kids.ru_stime, "minor_faults": me.ru_minflt + kids.ru_minflt})

    def per_episode(self, skip_phase: str = "warm-up") -> dict:
        """Median per-episode deltas over the episodes not in ``skip_phase``."""
        deltas = [{k: b[k] - a[k] for k in ("user", "system", "minor_faults")}
                  for a, b in zip(self.rows, self.rows[1:]) if b["phase"] != skip_phase]
        return {k: statistics.median(d[k] for d in deltas) for k in ("user", "system", "minor_faults")} if deltas else {}


def episodes_per_hour(cfg: SearchConfig, folder: Path, threads: int, workers: int, episodes: int) -> tuple[float, float]:
    """(episodes per hour between the first and last episode, best reward) of a random search, run in a fresh
    process as ``amc search`` runs (workers forked from a process that has run other searches and holds other
    models inherit its heap, and measured 1.68x instead of 2.0x for MobileNet-V1 at 224 px)."""
    run = dataclasses.replace(cfg, episodes=episodes, threads=threads, workers=workers,
                              agent=dataclasses.replace(cfg.agent, algorithm="random"))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_throughput_run, run, folder, episodes).result()


def _throughput_run(run: SearchConfig, folder: Path, episodes: int) -> tuple[float, float]:
    reuse_freed_memory()
    best, store = run_search(run, folder)
    elapsed = store.episodes().elapsed_s
    return 3600 * (episodes - 1) / (elapsed.iloc[-1] - elapsed.iloc[0]), best.reward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    add_flags(parser, "model", "data", "calibration", "prune", "env", "agent", "run")
    parser.add_argument("--repeats", type=int, default=3, help="floor measurements per top policy (median)")
    parser.add_argument("--throughput-episodes", type=int, default=9, help="episodes per throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the throughput modes")
    parser.add_argument("--record", help="write the figures to this JSON file")
    parser.add_argument("--config", help="YAML file with SearchConfig sections (flags override it)")
    args = parser.parse_args(argv)
    reuse_freed_memory()  # as amc search does (AMC_KEEP_FREED_MEMORY=0 measures without it)
    base = from_dict(SearchConfig, yaml.safe_load(Path(args.config).read_text()), args.config) if args.config else SearchConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = dataclasses.replace(search_config(args, base), cache_dir=str(tmp / "cache"))
        threads = cfg.threads or 1
        cfg = dataclasses.replace(cfg, threads=threads)
        cold = construction_seconds(cfg, tmp / "cold")
        cached = construction_seconds(cfg, tmp / "cached")
        print(f"construction: cold {cold:.1f} s, cached {cached:.1f} s")

        usage = Usage()
        _, store = run_search(dataclasses.replace(cfg, workers=1), tmp / "episodes", progress=usage)
        rows = store.episodes()
        torch.set_num_threads(threads)
        task = open_task(cfg.model, cfg.data, cfg.calibration, cfg.prune, cfg.device)
        floors = []
        for path in sorted((tmp / "episodes" / "top_policies").glob("*.json")):
            policy = Policy.load(path)
            row = rows[rows.episode == policy.metrics["episode"]].iloc[0]
            floor = statistics.median(floor_seconds(task, policy, args.repeats))
            env_s = sum(float(row[c]) for c in STEPS[:4])
            floors.append({"episode": int(row.episode), "phase": row.phase, "floor_s": floor, "episode_s": float(row.episode_s),
                           "env_s": env_s, "episode_to_floor": float(row.episode_s) / floor, "env_to_floor": env_s / floor})
        explore = rows[rows.phase != "warm-up"] if (rows.phase != "warm-up").any() else rows
        medians = {col: float(explore[col].median()) for col in STEPS}
        ratio = {k: statistics.median(f[k] for f in floors) for k in ("episode_to_floor", "env_to_floor")}
        cpu = usage.per_episode()
        print("median seconds per episode (" + str(len(explore)) + " episodes): " +
              ", ".join(f"{k[:-2]} {v:.3f}" for k, v in medians.items()))
        print(f"top-{len(floors)} episodes against their own floors: episode / floor {ratio['episode_to_floor']:.2f}, "
              f"without the agent {ratio['env_to_floor']:.2f}; per episode user {cpu['user']:.2f} s, "
              f"system {cpu['system']:.2f} s, {cpu['minor_faults']:.0f} minor faults")

        throughput: dict[str, list[float]] = {name: [] for name in MODES}
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name, (t, w) in MODES.items():
                rate, best[name] = episodes_per_hour(cfg, tmp / f"tp-{r}-{t}-{w}", t, w, args.throughput_episodes)
                throughput[name].append(rate)
                print(f"round {r + 1}: {name}: {rate:.0f} episodes per hour")
    rates = {name: statistics.median(v) for name, v in throughput.items()}
    base = rates["1 process, 1 thread"]
    record = {
        "benchmark": "episode_speed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": to_dict(cfg),
        "machine": machine(),
        "groups": len(task.graph.prunable),
        "search_images": len(task.search_labels),
        "construction_s": {"cold": cold, "cached": cached},
        "episodes_summarised": len(explore),
        "median_s": medians,
        "floors": floors,
        "episode_to_floor": ratio["episode_to_floor"],
        "env_to_floor": ratio["env_to_floor"],
        "per_episode_cpu": {**cpu, "system_to_user": cpu["system"] / cpu["user"] if cpu.get("user") else None},
        "episodes_per_hour": {name: {"median": rates[name], "all": throughput[name], "vs_1_thread": rates[name] / base}
                              for name in MODES},
        "same_best_reward_in_every_mode": len(set(best.values())) == 1,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print("episodes per hour (median of rounds): " + "; ".join(f"{n} {v:.0f} ({v / base:.2f}x)" for n, v in rates.items()))
    if args.record:
        atomic_write_text(json.dumps(record, indent=2) + "\n", args.record)
        print(f"record: {args.record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
