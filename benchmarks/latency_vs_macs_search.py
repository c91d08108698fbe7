"""A latency-budgeted search vs a MACs-budgeted one at the same MACs: measured latency and accuracy of both.

    amc search --model resnet20 --checkpoint CK --dataset cifar10 --data-dir DIR --search-images 500 \\
        --cost latency --target 0.7 --agent tpe --episodes 150 --threads 1 --cache-dir C --out L
    amc search ... --cost macs --target <the MACs ratio of L's best policy> ... --out M
    python benchmarks/latency_vs_macs_search.py L M --out results/benchmarks/latency/search_vs_macs.json

Both best policies are applied to the checkpoint (their recorded recovery), and the dense and the two compact
models are timed alternately (1 thread, batch 1 and 64, medians of ``--repeats``, 5 rounds); test top-1 on
the 10,000 test images without fine-tuning.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for sub in ("", "envs", "agents"):
    sys.path.insert(0, str(ROOT / sub))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs=2, help="the latency-budgeted run folder, then the MACs-budgeted one")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default=str(ROOT / "results/benchmarks/latency/search_vs_macs.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    import amc
    from amc.cost import macs
    from amc.data import load_splits, normalization
    from amc.evaluation import evaluate
    from amc.io import atomic_write_text, open_configured
    from amc.latency import median_ms
    from amc.provenance import provenance
    from amc_agents import RunStore

    models, rows = {}, {}
    for run in args.runs:
        cfg = RunStore(run).config()
        policy = amc.Policy.load(Path(run) / "best_policy.json")
        dense, spec, _ = open_configured(cfg.model)
        small = amc.apply_policy(dense, policy, calibration=amc.calibration_for(policy)).model.eval()
        name = f"{cfg.env.cost} target {cfg.env.target}"
        models[name] = small
        models.setdefault("dense", dense.eval())
        test = load_splits(policy.data, ("test",), num_classes=spec.num_classes)["test"]
        x, y = normalization(policy.data)(test.images), test.labels
        rows[name] = {"run": str(run), "search_top1": policy.metrics.get("top1"),
                      "latency_ratio_predicted": policy.metrics.get("latency_ratio"),
                      "macs_ratio": macs(small, x[:1]) / macs(dense, x[:1]),
                      "test_top1_no_finetune": evaluate(small, x, y)["top1"]}
    for batch in (1, 64):
        x = torch.randn(batch, 3, 32, 32)
        times = {n: [] for n in models}
        for _ in range(5):
            for n, m in models.items():
                times[n].append(median_ms(m, x, repeats=args.repeats))
        dense_ms = statistics.median(times["dense"])
        for n in rows:
            ms = statistics.median(times[n])
            rows[n][f"ms_batch{batch}"] = ms
            rows[n][f"measured_latency_ratio_batch{batch}"] = ms / dense_ms
        for n in rows:
            rows[n][f"dense_ms_batch{batch}"] = dense_ms
    record = {"benchmark": "latency-budgeted vs MACs-budgeted search at equal MACs", "results": rows,
              "threads": 1, "repeats": args.repeats, **provenance(command=" ".join([Path(sys.executable).name,
                                                                                  *sys.argv]))}
    atomic_write_text(json.dumps(record, indent=2, default=str) + "\n", args.out)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
