"""A local `amc sweep` vs the same searches one after another: wall time, and the same results.

    python benchmarks/sweep_speed.py --checkpoint results/benchmarks/resnet20-jpeg-finetune/run/model.pt \\
        --data-dir /tmp/cifar --out results/benchmarks/sweep [--targets 0.4 0.6] [--seeds 0 1] [--episodes 30]

ResNet-20, random search (``--agent random``), ``--search-images`` images, 1 thread per search. The same
targets x seeds grid runs twice from scratch: sequentially in this process (:func:`amc_agents.run_search`
per trial) and as one sweep on a local Ray with ``--concurrent`` trials at once
(:func:`amc_agents.sweep.run_sweep`). Run it alone on the machine. Writes ``record.json`` (both wall times,
the speed-up, the per-trial best rewards of both ways, which must be equal), the sweep's own
``sweep.csv`` / ``summary.md`` and its Pareto front over all trials (``front/``: the plot of one multi-target
sweep).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("", "envs", "agents"):
    sys.path.insert(0, str(ROOT / sub))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "results/benchmarks/resnet20-jpeg-finetune/run/model.pt"))
    p.add_argument("--data-dir", default="/tmp/cifar")
    p.add_argument("--targets", type=float, nargs="+", default=[0.4, 0.6])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--search-images", type=int, default=500)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "results/benchmarks/sweep"))
    args = p.parse_args(argv)

    from amc.config import AgentConfig, DataConfig, ModelConfig, SearchConfig
    from amc.io import atomic_write_text
    from amc.provenance import provenance
    from amc_agents import run_search
    from amc_agents.sweep import grid, run_sweep, write_front

    base = SearchConfig(model=ModelConfig(name="resnet20", checkpoint=str(Path(args.checkpoint).resolve())),
                        data=DataConfig(dataset="cifar10", data_dir=args.data_dir, search_images=args.search_images),
                        agent=AgentConfig(algorithm="random"), episodes=args.episodes, threads=1, cache_dir=None)
    trials = grid(args.targets, args.seeds, ["random"])
    work = Path(tempfile.mkdtemp(prefix="amc-sweep-speed-"))
    began = time.time()
    sequential = {}
    for t in trials:
        best, _ = run_search(t.config(base), work / "sequential" / t.name)
        sequential[t.name] = best.reward
    seq_s = time.time() - began
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out / "trials", ignore_errors=True)
        shutil.rmtree(out / "ray", ignore_errors=True)
        (out / "sweep.json").unlink(missing_ok=True)
    began = time.time()
    rows = run_sweep(base, trials, work / "sweep", max_concurrent=args.concurrent)
    sweep_s = time.time() - began
    write_front(work / "sweep", trials)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("sweep.csv", "summary.md"):
        shutil.copy(work / "sweep" / name, out / name)
    shutil.rmtree(out / "front", ignore_errors=True)
    shutil.copytree(work / "sweep" / "front", out / "front")
    parallel = dict(zip(rows.trial, rows.best_reward))
    record = {"benchmark": "local amc sweep vs sequential searches", "trials": [t.name for t in trials],
              "episodes": args.episodes, "search_images": args.search_images, "concurrent": args.concurrent,
              "sequential_seconds": seq_s, "sweep_seconds": sweep_s, "speedup": seq_s / sweep_s,
              "best_reward_sequential": sequential, "best_reward_sweep": parallel,
              "same_results": all(abs(sequential[k] - parallel[k]) < 1e-12 for k in sequential),
              **provenance(command=" ".join([Path(sys.executable).name, *sys.argv]))}
    atomic_write_text(json.dumps(record, indent=2, default=str) + "\n", out / "record.json")
    print(json.dumps({k: record[k] for k in ("sequential_seconds", "sweep_seconds", "speedup", "same_results")}))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
