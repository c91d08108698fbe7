"""Time the pruning engine on ResNet-56: one compaction, and least-squares reconstruction per layer.

    python benchmarks/engine_timing.py [--checkpoint ../shared/models/resnet56-4bfd9763.th] [--repeats 5]

Prints the figures and writes results/benchmarks/engine/resnet56_timing.json (medians over repeats,
with machine, versions and command).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from amc.calibration import CalibrationSet
from amc.config import PruneConfig
from amc.cost import Budget
from amc.io import atomic_write_text, open_model
from amc.provenance import provenance
from amc.prune import ChannelPruner, PruningEngine, least_squares_weight
from amc.structure import trace


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="results/benchmarks/engine/resnet56_timing.json")
    args = ap.parse_args()
    model, spec, _ = open_model("resnet56", args.checkpoint)
    start = time.perf_counter()
    graph = trace(model, spec.input_shape)
    trace_s = time.perf_counter() - start
    _, keep = Budget(graph, "macs", 0.5).uniform()
    engine = PruningEngine(model, graph, PruneConfig(), CalibrationSet(torch.randn(500, 3, 32, 32)))
    selection = engine.select(keep)
    kept = selection.kept
    compact_s = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ChannelPruner(graph).apply(model, selection)
        compact_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    stats = engine.stats
    stats_s = time.perf_counter() - t
    per_layer = {}
    modules = dict(model.named_modules())
    for g in graph.prunable:
        for name in g.consumers:
            layer = graph.layer[name]
            idx = graph.feature_index(layer.in_layout, kept)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                least_squares_weight(modules[name].weight, stats.gram[name], idx)
                times.append(time.perf_counter() - t)
            per_layer[name] = statistics.median(times)
    full = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        engine.prune(selection)
        full.append(time.perf_counter() - t)
    record = {"model": "resnet56", "target_flops": 0.5, "trace_seconds": trace_s,
              "compact_seconds_median": statistics.median(compact_s),
              "calibration_stats_seconds_once": stats_s,
              "reconstruct_seconds_per_layer_median": statistics.median(per_layer.values()),
              "reconstruct_seconds_per_layer": per_layer,
              "prune_with_recovery_seconds_median": statistics.median(full),
              "repeats": args.repeats, "threads": torch.get_num_threads(), "processor": platform.processor(),
              **provenance(command=" ".join([sys.executable.split("/")[-1], *sys.argv]))}
    atomic_write_text(json.dumps(record, indent=2) + "\n", args.out)
    for k, v in record.items():
        if k != "reconstruct_seconds_per_layer":
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
