"""Does the search reward predict the accuracy a user ends up with? Proxy fidelity of recovery variants (issue 12, part 1).

ResNet-20 on JPEG CIFAR-10 at 50% MACs. ``--policies`` diverse policies are drawn (seeded): random
actions executed by the budget-aware ``scale`` rule and by AMC's ``clamp`` rule (alternately), plus
the uniform policy. Channels are always chosen by L1 (the same channels for every variant); only the
recovery differs. Each policy is scored on the search split under every recovery variant:

==========================  =====================================================================
``none``                    no least squares, no BatchNorm recalibration
``bn``                      BatchNorm recalibration of all layers (2 batches of 100 images)
``ls``                      least-squares reconstruction only
``ls+bn``                   least squares, then all BatchNorms recalibrated (2 batches of 100 images)
``ls+bn-1batch``            the same with 1 batch of 100 images
``ls+bn-50images``          the same with 1 batch of 50 images (calibration batch size 50)
``ls+bn-reconstructed``     least squares, then only the BatchNorms right after refitted layers
``adaptive-bn``             EagleEye's adaptive BN: no least squares, 20 batches (2,000 images)
``ls+adaptive-bn``          least squares, then 20 batches of BN recalibration
``seq-ls``                  sequential least squares (every changed layer in forward order, on the pruned
                            model's own inputs), BatchNorm re-estimated in its pass over the 500 images
``seq-ls-250images``        the same on 250 calibration images
==========================  =====================================================================

and at search-split sizes 250, 500, 1000 and 2000 (the first N images of the same split, from one pass
over the 2,000; the evaluate seconds of the smaller sizes are that pass's time scaled by N/2000). The
ground truth: each policy applied as a user applies it (``ls+bn``), fine-tuned ``--epochs`` epoch(s)
over the whole trained-on split (SGD Nesterov, lr ``--lr`` cosine, batch 128, crop+flip, seed 0),
top-1 on the 10,000 test images. Fidelity = Spearman rank correlation, over the policies, between a
variant's search-split score and that fine-tuned test top-1 (with a 95% bootstrap interval over
policies); also with the test top-1 of the applied (``ls+bn``) model before fine-tuning.

Outputs in ``--out``: ``policies.json``, ``scores.csv`` (tidy: policy x variant x split size),
``finetuned.csv``, ``fidelity.csv`` / ``fidelity.md`` (the table), ``record.json`` (machine,
versions, command, seconds). Every unit is cached in ``parts/`` (a rerun skips what is done).

    python benchmarks/proxy_fidelity.py --checkpoint results/benchmarks/resnet20-jpeg-finetune/run/model.pt \\
        --data-dir /tmp/cifar --policies 30 --jobs 2 --out results/benchmarks/proxy-fidelity
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_FROM = ROOT / "results/benchmarks/resnet20-50macs/ddpg-seed0/best_policy.json"
SPLIT_SIZES = (250, 500, 1000, 2000)
VARIANTS = {  # name: (PruneConfig changes, CalibrationConfig changes)
    "none": ({"reconstruct": False, "bn_batches": 0}, {"images": 500}),
    "bn": ({"reconstruct": False, "bn_batches": 2}, {"images": 500}),
    "ls": ({"reconstruct": True, "bn_batches": 0}, {"images": 500}),
    "ls+bn": ({"reconstruct": True, "bn_batches": 2}, {"images": 500}),
    "ls+bn-1batch": ({"reconstruct": True, "bn_batches": 1}, {"images": 500}),
    "ls+bn-50images": ({"reconstruct": True, "bn_batches": 1}, {"images": 500, "batch_size": 50}),
    "ls+bn-reconstructed": ({"reconstruct": True, "bn_batches": 2, "bn_scope": "reconstructed"}, {"images": 500}),
    "adaptive-bn": ({"reconstruct": False, "bn_batches": 20}, {"images": 2000}),
    "ls+adaptive-bn": ({"reconstruct": True, "bn_batches": 20}, {"images": 2000}),
    "seq-ls": ({"reconstruct": True, "reconstruction": "sequential", "bn_batches": 0}, {"images": 500}),
    "seq-ls-250images": ({"reconstruct": True, "reconstruction": "sequential", "bn_batches": 0}, {"images": 250}),
}
APPLIED = "ls+bn"  # how the fine-tuned models are pruned (AMC's recovery, `amc apply`'s default when this ran)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


_CTX: dict = {}


def context(s: dict) -> dict:
    """Dense model, data, splits, graph (cached per process)."""
    if _CTX.get("key") == (s["checkpoint"], s["data_dir"]):
        return _CTX
    from amc import Policy
    from amc.config import replace
    from amc.data import load_splits, normalization
    from amc.io import open_model
    from amc.structure import trace
    model, spec, _ = open_model(None, s["checkpoint"])
    ref = Policy.load(SETTINGS_FROM)
    data = replace(ref.data, data_dir=s["data_dir"])
    splits = load_splits(data, ("train", "search", "test"), num_classes=spec.num_classes)
    norm = normalization(data)
    _CTX.clear()
    _CTX.update(key=(s["checkpoint"], s["data_dir"]), model=model.eval(), spec=spec, ref=ref, data=data, norm=norm,
                train=splits["train"], search=(norm(splits["search"].images), splits["search"].labels),
                test=(norm(splits["test"].images), splits["test"].labels), graph=trace(model, spec.input_shape))
    return _CTX


def engine_for(ctx: dict, variant: str):
    from amc.calibration import CalibrationSet
    from amc.config import replace
    from amc.prune import PruningEngine
    key = f"engine:{variant}"
    if key not in ctx:
        changes, calibration = VARIANTS[variant]
        cfg = replace(ctx["ref"].prune, **changes)
        calib = CalibrationSet.draw(ctx["train"], ctx["norm"], replace(ctx["ref"].calibration, **calibration))
        ctx[key] = PruningEngine(ctx["model"], ctx["graph"], cfg, calib)
    return ctx[key]


def top1(model, images, labels) -> float:
    from amc.evaluation import evaluate
    return float(evaluate(model, images, labels)["top1"])


def unit_score(s: dict, index: int, keep: dict) -> dict:
    """Every recovery variant x split size for one policy (plus each variant's test top-1, no fine-tuning)."""
    torch.set_num_threads(1)
    ctx = context(s)
    rows = []
    for variant in VARIANTS:
        engine = engine_for(ctx, variant)
        began = time.perf_counter()
        model = engine.prune_keep(keep).model
        recover_s = time.perf_counter() - began
        x, y = ctx["search"]
        if ctx["ref"].prune.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        began = time.perf_counter()
        with torch.inference_mode():  # one pass; the smaller splits are its first N images
            correct = torch.cat([model(x[i:i + 500]).argmax(1) == y[i:i + 500] for i in range(0, len(y), 500)])
        seconds = time.perf_counter() - began
        for n in SPLIT_SIZES:
            rows.append({"policy": index, "variant": variant, "split_size": n,
                         "search_top1": float(correct[:n].float().mean()), "prune_recover_s": recover_s,
                         "evaluate_s": seconds * n / len(y)})
    return {"rows": rows}


def unit_finetune(s: dict, index: int, keep: dict) -> dict:
    """The policy applied as a user applies it (ls+bn), fine-tuned, test top-1."""
    from amc.config import TrainConfig
    from amc.training import Trainer
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ctx = context(s)
    model = engine_for(ctx, APPLIED).prune_keep(keep).model.to(memory_format=torch.contiguous_format)
    before = top1(model, *ctx["test"])
    began = time.perf_counter()
    Trainer(TrainConfig(epochs=s["epochs"], lr=s["lr"])).fit(model, ctx["train"], ctx["norm"])
    return {"policy": index, "test_top1_before": before, "test_top1_finetuned": top1(model, *ctx["test"]),
            "train_seconds": time.perf_counter() - began}


UNITS = {"score": unit_score, "finetune": unit_finetune}


def _init_worker() -> None:
    torch.set_num_threads(1)


def draw_policies(s: dict) -> list[dict]:
    """``s["policies"]`` keeps at ``s["target"]`` MACs: index 0 uniform, then random actions, scale / clamp alternately."""
    from amc.config import EnvConfig
    from amc.cost import Budget
    ctx = context(s)
    budget = Budget(ctx["graph"], "macs", s["target"], lbound=EnvConfig().lbound)
    rng = np.random.default_rng(s["seed"])
    out = [{"rule": "uniform", "keep": budget.uniform()[1], "macs_ratio": budget.ratio(budget.uniform()[1])}]
    while len(out) < s["policies"]:
        actions = rng.random(len(budget.groups))
        if len(out) % 2:
            keep = budget.scaled({g.name: float(a) for g, a in zip(budget.groups, actions)})[1]
            rule = "scale"
        else:
            keep = {}
            for g, a in zip(budget.groups, actions):
                keep[g.name] = min(budget.count_for(g.name, float(a)), budget.max_count(g.name, keep))
            rule = "clamp"
        out.append({"rule": rule, "keep": keep, "macs_ratio": budget.ratio(keep)})
    return out


def _without(settings: dict, keys: tuple) -> dict:
    return {k: v for k, v in settings.items() if k not in keys}


def spearman(a, b) -> float:
    import pandas as pd
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def bootstrap(a, b, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a), np.asarray(b)
    values = []
    for _ in range(reps):
        idx = rng.integers(0, len(a), len(a))
        if len(set(idx)) > 2:
            values.append(spearman(a[idx], b[idx]))
    return float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))


def report(out: Path, scores, tuned, s: dict) -> None:
    import pandas as pd
    from amc.io import atomic_write_text
    df = pd.DataFrame(scores)
    atomic_write_text(df.to_csv(index=False), out / "scores.csv")
    ft = pd.DataFrame(tuned).sort_values("policy")
    atomic_write_text(ft.to_csv(index=False), out / "finetuned.csv")
    truth = ft.set_index("policy")["test_top1_finetuned"]
    before = ft.set_index("policy")["test_top1_before"].values
    rows = []
    for (variant, n), part in df.groupby(["variant", "split_size"], sort=False):
        part = part.set_index("policy").loc[truth.index]
        lo, hi = bootstrap(part.search_top1.values, truth.values)
        row = {"variant": variant, "split_size": n, "spearman_vs_finetuned_test": spearman(part.search_top1, truth),
               "ci95_low": lo, "ci95_high": hi, "prune_recover_s": part.prune_recover_s.median(),
               "evaluate_s": part.evaluate_s.median(), "episode_s": part.prune_recover_s.median() + part.evaluate_s.median()}
        if n == max(SPLIT_SIZES):
            row["spearman_vs_applied_test_no_finetune"] = spearman(part.search_top1, before)
            row["mean_search_top1"] = part.search_top1.mean()
        rows.append(row)
    fid = pd.DataFrame(rows)
    atomic_write_text(fid.to_csv(index=False), out / "fidelity.csv")
    full = fid[fid.split_size == max(SPLIT_SIZES)]
    lines = [f"ResNet-20, {s['target']:.0%} MACs, {len(truth)} policies; ground truth: test top-1 after "
             f"{s['epochs']} epoch(s) of fine-tuning (policy applied with {APPLIED}); mean {truth.mean() * 100:.2f}%, "
             f"range {truth.min() * 100:.2f}–{truth.max() * 100:.2f}%. Seconds: medians per policy, 1 thread.", "",
             "| recovery | Spearman ρ (2,000 search images) vs fine-tuned test | 95% CI | ρ vs test before FT (ls+bn model) | "
             "mean search top-1 % | prune+recover s | evaluate s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for _, r in full.iterrows():
        lines.append(f"| {r.variant} | {r.spearman_vs_finetuned_test:.3f} | [{r.ci95_low:.2f}, {r.ci95_high:.2f}] | "
                     f"{r.spearman_vs_applied_test_no_finetune:.3f} | {r.mean_search_top1 * 100:.2f} | "
                     f"{r.prune_recover_s:.2f} | {r.evaluate_s:.2f} |")
    lines += ["", "Fidelity vs search-split size (Spearman ρ vs fine-tuned test; evaluate seconds in brackets):", "",
              "| recovery | " + " | ".join(f"{n} images" for n in SPLIT_SIZES) + " |",
              "| --- |" + " --- |" * len(SPLIT_SIZES)]
    for variant in VARIANTS:
        cells = []
        for n in SPLIT_SIZES:
            r = fid[(fid.variant == variant) & (fid.split_size == n)].iloc[0]
            cells.append(f"{r.spearman_vs_finetuned_test:.3f} ({r.evaluate_s:.2f} s)")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    atomic_write_text("\n".join(lines) + "\n", out / "fidelity.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "results/benchmarks/resnet20-jpeg-finetune/run/model.pt"))
    p.add_argument("--data-dir", default="/tmp/cifar")
    p.add_argument("--policies", type=int, default=30)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "results/benchmarks/proxy-fidelity"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from amc.io import atomic_write_text
    from amc.provenance import provenance
    out = Path(args.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoint).resolve()
    s = {"checkpoint": str(ckpt.relative_to(ROOT)) if ckpt.is_relative_to(ROOT) else str(ckpt), "data_dir": args.data_dir,
         "policies": args.policies, "target": args.target, "epochs": args.epochs, "lr": args.lr, "seed": args.seed}
    os.chdir(ROOT)
    started = time.time()
    policies = draw_policies(s)
    atomic_write_text(json.dumps(policies, indent=1) + "\n", out / "policies.json")
    tasks = [(f"score-{i:03d}", "score", i, p["keep"]) for i, p in enumerate(policies)]
    tasks += [(f"finetune-{i:03d}", "finetune", i, p["keep"]) for i, p in enumerate(policies)]
    results = {}
    todo = []
    for key, kind, i, keep in tasks:
        path = out / "parts" / f"{key}.json"
        # a fine-tune does not depend on the scoring variants (it applies APPLIED): a new variant only rescores
        relevant = {**s, "keep": keep, "variants": {k: [v[0], v[1]] for k, v in VARIANTS.items()}}
        ignore = ("variants",) if kind == "finetune" else ()
        if path.is_file() and _without(json.loads(path.read_text())["settings"], ignore) == _without(relevant, ignore):
            results[key] = json.loads(path.read_text())["result"]
        else:
            todo.append((key, kind, i, keep, relevant))
    log(f"{len(results)} units cached, {len(todo)} to run with {args.jobs} worker(s)")
    with ProcessPoolExecutor(args.jobs, initializer=_init_worker,
                             mp_context=torch.multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(UNITS[kind], s, i, keep): (key, relevant) for key, kind, i, keep, relevant in todo}
        for fut in as_completed(futures):
            key, relevant = futures[fut]
            results[key] = fut.result()
            atomic_write_text(json.dumps({"settings": relevant, "result": results[key]}) + "\n",
                              out / "parts" / f"{key}.json")
            log(f"done {key}")
    scores = [r for k, v in results.items() if k.startswith("score-") for r in v["rows"]]
    tuned = [v for k, v in results.items() if k.startswith("finetune-")]
    report(out, scores, tuned, s)
    info = provenance(command=" ".join([Path(sys.executable).name, *sys.argv]))
    atomic_write_text(json.dumps({"command": info["command"], "machine": info["machine"], "versions": info["versions"],
                                  "cpus": os.cpu_count(), "settings": s, "seconds_this_run": time.time() - started,
                                  "variants": {k: {"prune": v[0], "calibration": v[1]} for k, v in VARIANTS.items()},
                                  "policy_rules": {r: sum(p["rule"] == r for p in policies) for r in ("uniform", "scale", "clamp")}},
                                 indent=1) + "\n", out / "record.json")
    log(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
