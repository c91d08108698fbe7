"""Sequential least squares in float32 (mean-centred) vs float64: the same best policies rebuilt both ways.

For the run folders ``results/benchmarks/NAME/METHOD-seed*`` (searches that used sequential least squares)
this rebuilds every run's best policy and the uniform policy with ``solve_precision`` ``float64`` and
``float32``, each on one :class:`~amc.prune.engine.PruningEngine` per precision built once (the dense
targets are gathered before timing starts), and records per policy and precision:

- search-split and test top-1 without fine-tuning (does the cheaper solve change what the search sees?), and
  the search-split top-1 the search recorded (the precision the policy records, ``scored_precision``, must
  reproduce it; policies written before ``solve_precision`` existed were scored in float64);
- the median over ``--repeats`` of the reconstruction seconds (the sequential pass and its solves) and of
  the whole pruning (selection, compaction, reconstruction), the two precisions interleaved, 1 thread.

Writes ``solve_precision.csv`` (tidy: one row per policy and precision) and ``solve_precision.json`` (medians,
the largest top-1 differences, machine, versions, command) into ``--out``.

    python benchmarks/solve_precision.py resnet20-50macs-seqls --checkpoint CKPT --data-dir DIR \\
        --out results/benchmarks/episode-speed/solve-precision-resnet20
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from amc import Policy, calibration_for
from amc.errors import AmcError
from amc.io import atomic_write_text
from amc.prune.engine import PruningEngine
from amc.provenance import provenance
from amc.structure import trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_methods import ROOT, Evaluator, run_name  # noqa: E402  (the same data and test scoring as the comparison)

PRECISIONS = ("float64", "float32")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="folder under results/benchmarks")
    p.add_argument("--checkpoint", required=True, help="the dense model the searches pruned")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--repeats", type=int, default=5, help="timed prunings per policy and precision (median)")
    p.add_argument("--out", required=True, help="folder for solve_precision.csv and .json (created; must not exist)")
    p.add_argument("--results", default=str(ROOT / "results" / "benchmarks"))
    args = p.parse_args(argv)
    folder, out = Path(args.results) / args.name, Path(args.out)
    runs = sorted(folder.glob("*-seed*/best_policy.json"))
    if not runs:
        raise SystemExit(f"solve_precision: no finished runs in {folder}")
    if args.repeats < 1:
        raise SystemExit(f"solve_precision: --repeats must be at least 1, got {args.repeats}")
    if out.exists():
        raise SystemExit(f"solve_precision: {out} already exists")
    torch.set_num_threads(1)
    uniform = runs[0].parent / "uniform_policy.json"
    started = time.time()
    try:
        first = Policy.load(uniform)
        if not first.prune.sequential:
            raise AmcError(f"the runs in {folder} did not use sequential least squares")
        evaluator = Evaluator(args.checkpoint, args.data_dir, first.model["name"])
        calibration = calibration_for(first, data=evaluator.data(first), train=evaluator.splits(first)["train"])
    except AmcError as exc:
        raise SystemExit(f"solve_precision: {exc}") from None
    graph = trace(evaluator.model, first.input_shape, first.model.get("exclude", ()))
    engines = {p: PruningEngine(evaluator.model, graph, replace(first.prune, solve_precision=p), calibration)
               for p in PRECISIONS}
    for engine in engines.values():
        engine.targets  # noqa: B018  (gathered once, before any timing)
    rows = []
    for path in [uniform, *runs]:
        policy = Policy.load(path)
        name = ("uniform", -1) if path == uniform else run_name(path.parent)
        keep = policy.keep(graph)
        seconds: dict[str, list[tuple[float, float]]] = {p: [] for p in PRECISIONS}
        models = {}
        for _ in range(args.repeats):
            for precision, engine in engines.items():
                began = time.perf_counter()
                result = engine.prune_keep(keep, policy.kept())
                seconds[precision].append((result.timings["reconstruct"], time.perf_counter() - began))
                models[precision] = result.model
        for precision in PRECISIONS:
            rows.append({"method": name[0], "seed": name[1], "precision": precision,
                         "search_top1": evaluator.top1(models[precision], policy, "search"),
                         "test_top1": evaluator.top1(models[precision], policy),
                         "recorded_search_top1": policy.metrics.get("top1"),
                         "scored_precision": precision == policy.prune.solve_precision,
                         "reconstruct_s": statistics.median(s for s, _ in seconds[precision]),
                         "prune_s": statistics.median(s for _, s in seconds[precision])})
    table = pd.DataFrame(rows)
    scored = table[table.scored_precision]
    wide = table.pivot_table(index=["method", "seed"], columns="precision", values=["search_top1", "test_top1",
                                                                                      "reconstruct_s", "prune_s"])
    info = provenance(command=" ".join([Path(sys.executable).name, *sys.argv]))
    record = {
        "command": info["command"], "machine": info["machine"], "versions": info["versions"], "threads": 1,
        "policies": len(wide), "repeats": args.repeats, "seconds": time.time() - started,
        "median_reconstruct_s": {p: float(wide.reconstruct_s[p].median()) for p in PRECISIONS},
        "median_prune_s": {p: float(wide.prune_s[p].median()) for p in PRECISIONS},
        "median_reconstruct_ratio_float64_over_float32": float((wide.reconstruct_s.float64 / wide.reconstruct_s.float32).median()),
        "max_abs_rebuilt_vs_recorded_search_top1": float((scored.search_top1 - scored.recorded_search_top1).abs().max()),
        "max_abs_search_top1_difference": float((wide.search_top1.float64 - wide.search_top1.float32).abs().max()),
        "max_abs_test_top1_difference": float((wide.test_top1.float64 - wide.test_top1.float32).abs().max()),
        "mean_test_top1": {p: float(wide.test_top1[p].mean()) for p in PRECISIONS},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out.mkdir(parents=True)
    atomic_write_text(table.to_csv(index=False), out / "solve_precision.csv")
    atomic_write_text(json.dumps(record, indent=2) + "\n", out / "solve_precision.json")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
