"""Fine-grained AMC vs uniform vs sensitivity allocation vs global magnitude at the same parameter budget.

    python benchmarks/fine_grained.py --run RUN --data-dir /tmp/cifar --epochs 1 --subset 10000 \\
        --out results/benchmarks/sparse-training

``RUN`` is a finished ``amc search --granularity weight --cost params`` run folder (its ``config.yaml`` gives
the checkpoint, the data split, the parameter target, ``--lbound`` and the dense layers ``--exclude``). Four
per-layer weight sparsities, every one meeting the run's parameter target (fraction of the dense parameters
that stay non-zero, biases, BatchNorm and the dense layers included):

- ``amc``: the run's ``best_policy.json`` (the searched sparsity per layer);
- ``uniform``: the run's ``uniform_policy.json`` (one preserve ratio for every layer, scored in the run);
- ``sensitivity``: :func:`amc.sensitivity` weight curves on the run's search split at ``--levels``, then
  :func:`amc.allocate` at the target with the smallest of ``--tolerances`` it respects;
- ``global``: one magnitude threshold over all prunable weights (not a per-layer policy; a reference).

Each is applied with magnitude masks (:func:`amc.prune_unstructured`), scored on the search split and the
10,000 test images, fine-tuned for ``--epochs`` epochs over a fixed seeded subset of ``--subset`` trained-on
images with the masks kept at zero (:class:`amc.training.KeepMasks`; SGD Nesterov, cosine lr from ``--lr``),
and scored on the test images again. Writes ``finegrained.{csv,md}``, ``finegrained_sensitivity.csv`` and
``finegrained.json`` (settings, command, versions, machine, seconds) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
TOLERANCES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kept_params(model, keep_dense) -> tuple[float, float]:
    """(fraction of the dense parameters that are non-zero or outside the pruned weights, sparsity of the prunable
    weights)."""
    from amc.unstructured import effective_weight, prunable_layers
    layers = prunable_layers(model, keep_dense)
    total = sum(p.numel() for p in model.parameters())  # a masked layer's parameter is its weight_orig
    pruned = sum(effective_weight(m).numel() for m in layers.values())
    zeros = sum(int((effective_weight(m) == 0).sum()) for m in layers.values())
    return (total - zeros) / total, zeros / pruned


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished amc search --granularity weight run folder")
    p.add_argument("--data-dir", help="CIFAR-10 folder (default: the run's)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--subset", type=int, default=10000, help="fixed seeded subset of the trained-on images")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--levels", type=float, nargs="+", default=list(LEVELS), help="weight sparsities of the curves")
    p.add_argument("--tolerances", type=float, nargs="+", default=list(TOLERANCES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results/benchmarks/sparse-training"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import pandas as pd
    from amc import Policy, allocate, prune_unstructured, sensitivity
    from amc.config import TrainConfig, replace
    from amc.data import load_splits, normalization
    from amc.errors import AmcError
    from amc.evaluation import evaluate
    from amc.io import atomic_write_text, open_model
    from amc.provenance import provenance
    from amc.training import KeepMasks, Trainer
    from amc.unstructured import prunable_layers

    run = Path(args.run)
    import yaml
    config = yaml.safe_load((run / "config.yaml").read_text())
    target, lbound = config["env"]["target"], config["env"]["lbound"]
    keep_dense = tuple(config["model"]["exclude"])
    model, spec, _ = open_model(None, ROOT / config["model"]["checkpoint"])
    amc_policy = Policy.load(run / "best_policy.json")
    data = replace(amc_policy.data, data_dir=args.data_dir or amc_policy.data.data_dir)
    splits = load_splits(data, ("train", "search", "test"), num_classes=spec.num_classes)
    norm = normalization(data)
    search = (norm(splits["search"].images), splits["search"].labels)
    test = (norm(splits["test"].images), splits["test"].labels)
    train = splits["train"]
    if args.subset < len(train):
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.subset]
                             .sort().values)
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def top1(m, split) -> float:
        return float(evaluate(m, *split)["top1"])

    log(f"sensitivity: {len(prunable_layers(model, keep_dense))} layers x {len(args.levels)} levels on the search split")
    curves = sensitivity(model, spec.input_shape, lambda m: top1(m, search), args.levels, "weight",
                         keep_dense=keep_dense)
    atomic_write_text(curves.to_csv(index=False), out / "finegrained_sensitivity.csv")
    allocated, allocation = None, []
    for tol in args.tolerances:
        try:
            pol = allocate(curves, target, tol, model=model, keep_dense=keep_dense)
        except AmcError as exc:
            allocation.append({"tolerance": tol, "error": str(exc)})
            continue
        allocation.append({"tolerance": tol, "respected": pol.metrics["tolerance_respected"],
                           "multiplier": pol.metrics["multiplier"]})
        if pol.metrics["tolerance_respected"]:
            allocated = (tol, pol)
            break
    if allocated is None:
        allocated = (args.tolerances[-1], allocate(curves, target, args.tolerances[-1], model=model,
                                                   keep_dense=keep_dense))
    log(f"allocation: tolerance {allocated[0]} ({allocation[-1]})")

    layers = prunable_layers(model, keep_dense)
    prunable = sum(m.weight.numel() for m in layers.values())
    dense_params = sum(p.numel() for p in model.parameters())
    global_sparsity = 1 - (target * dense_params - (dense_params - prunable)) / prunable
    candidates = {
        "amc": dict(sparsities=amc_policy.sparsities),
        "uniform": dict(sparsities=Policy.load(run / "uniform_policy.json").sparsities),
        f"sensitivity (tolerance {allocated[0]})": dict(sparsities=allocated[1].sparsities),
        "global magnitude": dict(sparsity=global_sparsity, scope="global", keep_dense=keep_dense),
    }
    rows = []
    for name, how in candidates.items():
        began = time.time()
        pruned = prune_unstructured(model, **how)
        params_ratio, sparsity = kept_params(pruned, keep_dense)
        row = {"policy": name, "params_kept": params_ratio, "prunable_sparsity": sparsity,
               "search_top1_no_finetune": top1(pruned, search), "test_top1_no_finetune": top1(pruned, test)}
        Trainer(TrainConfig(epochs=args.epochs, lr=args.lr), [KeepMasks()]).fit(pruned, train, norm)
        params_after, _ = kept_params(pruned, keep_dense)
        row.update(test_top1_finetuned=top1(pruned, test), params_kept_after_finetune=params_after,
                   seconds=time.time() - began)
        log(f"{name}: {row}")
        rows.append(row)
    df = pd.DataFrame(rows)
    atomic_write_text(df.to_csv(index=False), out / "finegrained.csv")
    dense_test = top1(model, test)
    lines = [f"Fine-grained pruning of {spec.name} to {target:.0%} of its parameters (non-zero; `{', '.join(keep_dense)}` "
             f"dense), dense test top-1 {dense_test * 100:.2f}%. AMC: `{run.name}` ({config['agent']['algorithm']}, "
             f"{len(pd.read_csv(run / 'episodes.csv'))} episodes, lbound {lbound}); fine-tuning {args.epochs} epoch(s) "
             f"over {len(train):,} images, lr {args.lr}, masks kept.", "",
             "| policy | params kept | prunable sparsity | search top-1 % (no FT) | test top-1 % no FT | test top-1 % + FT |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['params_kept']:.4f} | {r['prunable_sparsity']:.4f} | "
                     f"{r['search_top1_no_finetune'] * 100:.2f} | {r['test_top1_no_finetune'] * 100:.2f} | "
                     f"{r['test_top1_finetuned'] * 100:.2f} |")
    atomic_write_text("\n".join(lines) + "\n", out / "finegrained.md")
    info = provenance(command=" ".join([Path(sys.executable).name, *sys.argv]))
    record = {"benchmark": "fine-grained AMC vs uniform vs sensitivity vs global magnitude", "run": str(run),
              "target_params": target, "lbound": lbound, "keep_dense": list(keep_dense), "epochs": args.epochs,
              "subset": len(train), "lr": args.lr, "levels": args.levels, "allocation": allocation,
              "dense_test_top1": dense_test, "results": rows, "seconds": time.time() - started,
              "threads": torch.get_num_threads(), **info}
    atomic_write_text(json.dumps(record, indent=2, default=str) + "\n", out / "finegrained.json")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
