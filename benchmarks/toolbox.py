"""The classic pruning toolbox on ResNet-20 / JPEG CIFAR-10 (issue 13): sparsity sweeps, sensitivity, size and speed.

Starting from one fine-tuned dense checkpoint, with short CPU schedules (fine-tuning = ``--epochs`` epochs
over a fixed seeded subset of ``--subset`` images of the trained-on part of the training set, SGD
Nesterov, cosine lr from ``--lr`` to 0, batch 128, crop+flip; the same for every method):

- part 1: test top-1 vs weight sparsity for one-shot (magnitude masks, then fine-tune) and AGP
  (:func:`amc.schedule_callbacks` ``agp``: cubic ramp over the first 3/4 of the same steps), layer and
  global scope (the first conv ``conv1`` and the classifier ``linear`` kept dense in both scopes);
  before and after fine-tuning -> ``accuracy_vs_sparsity.{csv,md,png}``;
- part 2: channel (0.1..0.9) and weight (0.5..0.98) sensitivity curves on the search split
  (``sensitivity_{channel,weight}.{csv,png}``), a policy allocated from the channel curves at 50% MACs
  (:func:`amc.allocate`), and that policy vs the uniform one vs the AMC-searched one, each applied with
  :func:`amc.apply_policy` (the AMC policy's recovery settings and calibration images for all three),
  test top-1 before and after the same fine-tuning -> ``channel_policies.{csv,md}``;
- part 3: bytes on disk (dense ``torch.save`` state_dict, sparse, sparse int8) of a 90% global sparse
  model and CPU latency (1 thread, batch 1 and 64, medians, interleaved) of dense vs masked-sparse vs
  channel-pruned -> ``size.csv``, ``speed.csv``, ``size_speed.md``.
- part 4: channel pruning at 50% MACs (the uniform and the AMC-searched policy) one-shot (applied with
  least squares + BN recalibration, then fine-tuned) vs AGP vs ``--channel-rounds`` rounds over channel
  masks (:class:`amc.schedules.ChannelMasks`), ``--channel-epochs`` epochs each, search-split top-1 per
  epoch -> ``channel_schedules.{csv,md}``.

Every unit of work writes ``OUT/parts/...json`` with the settings it ran with; a rerun with the same
settings skips it. ``record.json`` holds the machine, versions, command, seconds and settings.

    python benchmarks/toolbox.py --checkpoint results/benchmarks/resnet20-jpeg-finetune/run/model.pt \\
        --data-dir /tmp/cifar --out results/benchmarks/toolbox --epochs 2 --subset 10000 --jobs 2
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
METHODS = ("oneshot", "agp")
SCOPES = ("layer", "global")
KEEP_DENSE = ("conv1", "linear")  # first conv and classifier, in both scopes
CHANNEL_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
WEIGHT_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
TOLERANCES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
AMC_POLICY = ROOT / "results/benchmarks/resnet20-50macs/ddpg-seed0/best_policy.json"
UNIFORM_POLICY = ROOT / "results/benchmarks/resnet20-50macs/ddpg-seed0/uniform_policy.json"
SPARSE_FOR_SIZE = 0.9  # global sparsity of the model measured in part 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _init_worker() -> None:
    torch.set_num_threads(1)


# ---------------------------------------------------------------- per-process context (data loaded once)
_CTX: dict = {}


def context(settings: dict) -> dict:
    """Dense model, spec, data config, fine-tuning subset, normalised test and search images (cached per process)."""
    key = (settings["checkpoint"], settings["data_dir"], settings["subset"])
    if _CTX.get("key") == key:
        return _CTX
    from amc import Policy
    from amc.config import replace
    from amc.data import load_splits, normalization
    from amc.io import open_model

    model, spec, _ = open_model(None, settings["checkpoint"])
    data = replace(Policy.load(AMC_POLICY).data, data_dir=settings["data_dir"])
    splits = load_splits(data, ("train", "search", "test"), num_classes=spec.num_classes)
    train = splits["train"]
    if settings["subset"] < len(train):
        g = torch.Generator().manual_seed(settings["subset_seed"])
        train = train.subset(torch.randperm(len(train), generator=g)[:settings["subset"]].sort().values)
    norm = normalization(data)
    _CTX.clear()
    _CTX.update(key=key, model=model, spec=spec, data=data, train=train, norm=norm,
                test=(norm(splits["test"].images), splits["test"].labels),
                search=(norm(splits["search"].images), splits["search"].labels), search_set=splits["search"])
    return _CTX


def top1(model, split) -> float:
    from amc.evaluation import evaluate
    return float(evaluate(model, *split)["top1"])


def finetune(ctx: dict, model, callbacks, settings: dict) -> tuple[list[dict], float]:
    from amc.config import TrainConfig
    from amc.training import Trainer
    cfg = TrainConfig(epochs=settings["epochs"], lr=settings["lr"])
    began = time.perf_counter()
    state = Trainer(cfg, callbacks).fit(model, ctx["train"], ctx["norm"])
    return [dict(r) for r in state.history], time.perf_counter() - began


def weight_sparsity(model, keep_dense=KEEP_DENSE) -> tuple[float, float]:
    """(sparsity of the prunable conv/linear weights, of all conv/linear weights)."""
    from amc.unstructured import PRUNABLE, effective_weight
    pruned = total = zp = zt = 0
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            w = effective_weight(m)
            z = int((w == 0).sum())
            zt, total = zt + z, total + w.numel()
            if name not in keep_dense:
                zp, pruned = zp + z, pruned + w.numel()
    return zp / pruned, zt / total


# ---------------------------------------------------------------- work units (run in worker processes)
def unit_sparsity(settings: dict, method: str, scope: str, sparsity: float, out: str) -> dict:
    """Part 1: one (method, scope, sparsity): prune (one-shot or AGP during fine-tuning), fine-tune, test top-1."""
    from amc import prune_unstructured, schedule_callbacks
    from amc.prune import fold_masks
    from amc.unstructured import copy_model
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ctx = context(settings)
    began = time.perf_counter()
    oneshot = prune_unstructured(ctx["model"], sparsity, scope=scope, keep_dense=KEEP_DENSE)
    before = top1(oneshot, ctx["test"])  # magnitude masks at the final sparsity, no fine-tuning (same for both)
    steps = math.ceil(len(ctx["train"]) / 128)
    work, callbacks = schedule_callbacks(ctx["model"], method, sparsity, epochs=settings["epochs"],
                                         steps_per_epoch=steps, scope=scope, keep_dense=KEEP_DENSE)
    history, train_s = finetune(ctx, work, callbacks, settings)
    after = top1(work, ctx["test"])
    measured, overall = weight_sparsity(work)
    events = getattr(callbacks[0], "events", [])
    row = {"method": method, "scope": scope, "sparsity": sparsity, "measured_sparsity": measured,
           "sparsity_all_conv_linear": overall, "test_top1_no_finetune": before, "test_top1_finetuned": after,
           "train_loss_last_epoch": history[-1]["train_loss"], "train_seconds": train_s,
           "pruning_steps": len(events) if method == "agp" else 1,
           "agp_steps": [e["step"] for e in events] if method == "agp" else [],
           "seconds": time.perf_counter() - began}
    if abs(sparsity - SPARSE_FOR_SIZE) < 1e-9 and scope == "global":  # kept for part 3 (sizes, int8 accuracy)
        models = Path(out) / "parts" / "models"
        models.mkdir(parents=True, exist_ok=True)
        from amc.io import atomic_save
        atomic_save(fold_masks(copy_model(work)).state_dict(), models / f"{method}-{scope}-{sparsity:.2f}.pt")
    return row


SENSITIVITY_TITLES = {"channel": "ResNet-20 channel groups (L1, no reconstruction): search-split top-1",
                      "weight": "ResNet-20 layers (magnitude masks): search-split top-1"}


def unit_sensitivity(settings: dict, granularity: str, out: str) -> dict:
    """Part 2: sensitivity curves on the search split (CSV + PNG)."""
    from amc import Policy, plot_sensitivity, sensitivity
    from amc.io import atomic_write_text
    torch.set_num_threads(1)
    ctx = context(settings)
    began = time.perf_counter()
    levels = settings["channel_levels"] if granularity == "channel" else settings["weight_levels"]
    exclude = Policy.load(AMC_POLICY).model.get("exclude", [])
    curves = sensitivity(ctx["model"], ctx["spec"].input_shape, lambda m: top1(m, ctx["search"]), levels,
                         granularity, criterion="l1", exclude=exclude if granularity == "channel" else ())
    atomic_write_text(curves.to_csv(index=False), Path(out) / f"sensitivity_{granularity}.csv")
    plot_sensitivity(curves, Path(out) / f"sensitivity_{granularity}.png", title=SENSITIVITY_TITLES[granularity])
    return {"granularity": granularity, "levels": list(levels), "names": int(curves["name"].nunique()),
            "baseline_search_top1": float(curves["baseline_score"].iloc[0]), "seconds": time.perf_counter() - began}


def unit_channel_policy(settings: dict, name: str, policy_path: str, out: str) -> dict:
    """Part 2: one channel policy applied (AMC policy's recovery settings and calibration images), fine-tuned."""
    from amc import Policy, apply_policy, calibration_for
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ctx = context(settings)
    began = time.perf_counter()
    amc_policy = Policy.load(AMC_POLICY)
    policy = Policy.load(policy_path)
    calibration = calibration_for(amc_policy, data=ctx["data"])
    applied = apply_policy(ctx["model"], policy, calibration=calibration, prune=amc_policy.prune)
    model = applied.model
    macs, params = applied.costs["macs"], applied.costs["params"]
    row = {"policy": name, "file": str(Path(policy_path).relative_to(ROOT)) if Path(policy_path).is_relative_to(ROOT)
           else str(policy_path), "macs_ratio": macs[1] / macs[0], "params_ratio": params[1] / params[0],
           "search_top1_no_finetune": top1(model, ctx["search"]), "test_top1_no_finetune": top1(model, ctx["test"]),
           "recovery": "least squares + BN recalibration (AMC policy's PruneConfig, its 500 calibration images)"}
    history, train_s = finetune(ctx, model, [], settings)
    row.update(test_top1_finetuned=top1(model, ctx["test"]), train_loss_last_epoch=history[-1]["train_loss"],
               train_seconds=train_s, seconds=time.perf_counter() - began)
    return row


CHANNEL_SCHEDULES = ("oneshot", "agp", "rounds")


def unit_channel_schedule(settings: dict, schedule: str, name: str, policy_path: str, out: str) -> dict:
    """Part 4: one channel policy at 50% MACs, pruned one-shot (policy applied with least squares + BN
    recalibration, then fine-tuned) or gradually (AGP / rounds over channel masks during the same
    fine-tuning, then removed for real); search-split top-1 after every epoch, test top-1 at the end."""
    from amc import Policy, apply_policy, calibration_for, schedule_callbacks
    from amc.schedules import ChannelMasks
    from amc.structure import trace
    from amc.training import Validate
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ctx = context(settings)
    began = time.perf_counter()
    amc_policy, policy = Policy.load(AMC_POLICY), Policy.load(policy_path)
    epochs = settings["channel_epochs"]
    cfg = {**settings, "epochs": epochs}
    validate = Validate(ctx["search_set"], ctx["norm"], prefix="search")
    events = []
    if schedule == "oneshot":
        calibration = calibration_for(amc_policy, data=ctx["data"])
        model = apply_policy(ctx["model"], policy, calibration=calibration, prune=amc_policy.prune).model
        before = top1(model, ctx["test"])
        history, train_s = finetune(ctx, model, [validate], cfg)
    else:
        graph = trace(ctx["model"], ctx["spec"].input_shape, policy.model.get("exclude", ()))
        pruning = ChannelMasks(graph, policy.keep(graph), criterion="l1")
        work, callbacks = schedule_callbacks(ctx["model"], schedule, epochs=epochs, pruning=pruning,
                                             steps_per_epoch=math.ceil(len(ctx["train"]) / 128),
                                             rounds=settings["channel_rounds"])
        before = None
        history, train_s = finetune(ctx, work, [validate, *callbacks], cfg)
        events = callbacks[0].events
        model = pruning.compact(work)
    from amc.cost import MacsCost
    return {"policy": name, "schedule": schedule, "epochs": epochs,
            "macs_ratio": MacsCost().measure(model, ctx["spec"].input_shape)
            / MacsCost().measure(ctx["model"], ctx["spec"].input_shape),
            "test_top1_before_finetune": before, "test_top1_finetuned": top1(model, ctx["test"]),
            "search_top1_per_epoch": [r["search_top1"] for r in history],
            "levels": [{"epoch": e["epoch"], "step": e["step"], "channels_removed": e["channels_removed"],
                        "macs_kept": e["macs_kept"]} for e in events],
            "train_loss_last_epoch": history[-1]["train_loss"], "train_seconds": train_s,
            "seconds": time.perf_counter() - began}


UNITS = {"sparsity": unit_sparsity, "sensitivity": unit_sensitivity, "channel": unit_channel_policy,
         "channel_schedule": unit_channel_schedule}


# ---------------------------------------------------------------- driver: cache, pool, dynamic submission
class Runner:
    def __init__(self, out: Path, settings: dict, jobs: int):
        self.out, self.settings, self.jobs = out, settings, jobs
        self.parts = out / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)

    def cache_path(self, key: str) -> Path:
        path = self.parts / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def cached(self, key: str, relevant: dict):
        path = self.cache_path(key)
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("settings") == relevant:
                return saved["result"]
            log(f"{key}: cached with other settings, recomputing")
        return None

    def run(self, tasks: list, on_done=None) -> dict:
        """tasks: (key, kind, kwargs, relevant settings). on_done(key, result) -> further tasks."""
        from amc.io import atomic_write_text
        results, pending = {}, list(tasks)
        pool = ProcessPoolExecutor(self.jobs, initializer=_init_worker,
                                   mp_context=torch.multiprocessing.get_context("spawn")) if self.jobs > 1 else None
        running = {}

        def finish(key, relevant, result):
            atomic_write_text(json.dumps({"settings": relevant, "result": result}, indent=1) + "\n",
                              self.cache_path(key))
            results[key] = result
            log(f"done {key}: {json.dumps({k: v for k, v in result.items() if not isinstance(v, list)})[:300]}")
            if on_done:
                pending.extend(on_done(key, result))

        try:
            while pending or running:
                while pending:
                    key, kind, kwargs, relevant = pending.pop(0)
                    hit = self.cached(key, relevant)
                    if hit is not None:
                        log(f"cached {key}")
                        results[key] = hit
                        if on_done:
                            pending.extend(on_done(key, hit))
                        continue
                    log(f"start {key}")
                    if pool is None:
                        finish(key, relevant, UNITS[kind](self.settings, out=str(self.out), **kwargs))
                    else:
                        running[pool.submit(UNITS[kind], self.settings, out=str(self.out), **kwargs)] = (key, relevant)
                if running:
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for fut in done:
                        key, relevant = running.pop(fut)
                        try:
                            finish(key, relevant, fut.result())
                        except Exception as exc:  # record and go on: the other units still count
                            log(f"FAILED {key}: {type(exc).__name__}: {exc}")
                            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            if pool is not None:
                pool.shutdown()
        return results


def train_settings(s: dict) -> dict:
    return {k: s[k] for k in ("checkpoint", "epochs", "subset", "subset_seed", "lr")}


# ---------------------------------------------------------------- part 1
def part1_tasks(s: dict) -> list:
    rel = train_settings(s)
    return [(f"part1/{m}-{sc}-{sp:.2f}", "sparsity", {"method": m, "scope": sc, "sparsity": sp}, rel)
            for sp in s["sparsities"] for sc in SCOPES for m in METHODS]


def part1_report(out: Path, results: dict, dense_top1: float, s: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from amc.io import atomic_write_text
    rows = [{k: v for k, v in r.items() if k != "agp_steps"} for k, r in results.items()
            if k.startswith("part1/") and "error" not in r]
    if not rows:
        return
    df = pd.DataFrame(rows).sort_values(["scope", "method", "sparsity"])
    df["epochs"], df["subset"], df["lr"] = s["epochs"], s["subset"], s["lr"]
    atomic_write_text(df.to_csv(index=False), out / "accuracy_vs_sparsity.csv")
    sps = sorted(df.sparsity.unique())
    lines = [f"Test top-1 % (10,000 images); dense {dense_top1 * 100:.2f}%. No fine-tune = magnitude masks at the "
             f"final sparsity, no training (identical for one-shot and AGP). Fine-tuning: {s['epochs']} epoch(s) of "
             f"{s['subset']:,} images, lr {s['lr']} cosine; `conv1` and `linear` dense.", "",
             "| sparsity | layer: no fine-tune | layer: one-shot + FT | layer: AGP | global: no fine-tune | "
             "global: one-shot + FT | global: AGP |", "| --- | --- | --- | --- | --- | --- | --- |"]

    def cell(sc, m, sp, col):
        hit = df[(df.scope == sc) & (df.method == m) & (df.sparsity == sp)]
        return "–" if hit.empty else f"{hit[col].iloc[0] * 100:.2f}"

    for sp in sps:
        lines.append(f"| {sp * 100:g}% | " + " | ".join(
            f"{cell(sc, 'oneshot', sp, 'test_top1_no_finetune')} | {cell(sc, 'oneshot', sp, 'test_top1_finetuned')} | "
            f"{cell(sc, 'agp', sp, 'test_top1_finetuned')}" for sc in SCOPES) + " |")
    atomic_write_text("\n".join(lines) + "\n", out / "accuracy_vs_sparsity.md")
    # where the one global threshold puts the zeros (masks of the dense model, before any training)
    from amc import prune_unstructured
    from amc.io import open_model
    from amc.unstructured import layer_sparsities
    dense, _, _ = open_model(None, s["checkpoint"])
    layers = pd.DataFrame({f"{sp:g}": layer_sparsities(prune_unstructured(dense, sp, scope="global", keep_dense=KEEP_DENSE))
                           for sp in sps})
    layers.index.name = "layer"
    atomic_write_text(layers.round(4).to_csv(), out / "global_layer_sparsity.csv")
    fig, ax = plt.subplots(figsize=(8, 5))
    x = {sp: i for i, sp in enumerate(sps)}
    styles = {("oneshot", "layer"): ("C0", "-"), ("agp", "layer"): ("C1", "-"),
              ("oneshot", "global"): ("C0", "--"), ("agp", "global"): ("C1", "--")}
    for (m, sc), (color, ls) in styles.items():
        part = df[(df.method == m) & (df.scope == sc)].sort_values("sparsity")
        if not part.empty:
            ax.plot([x[v] for v in part.sparsity], part.test_top1_finetuned * 100, color=color, ls=ls, marker="o",
                    label=f"{'one-shot' if m == 'oneshot' else 'AGP'} + FT, {sc} scope")
    for sc, ls in (("layer", "-"), ("global", "--")):
        part = df[(df.method == "oneshot") & (df.scope == sc)].sort_values("sparsity")
        if not part.empty:
            ax.plot([x[v] for v in part.sparsity], part.test_top1_no_finetune * 100, color="gray", ls=ls, marker=".",
                    label=f"no fine-tune, {sc} scope")
    ax.axhline(dense_top1 * 100, color="black", lw=1, ls=":", label=f"dense {dense_top1 * 100:.2f}%")
    ax.set_xticks(list(x.values()), [f"{v * 100:g}%" for v in sps])
    ax.set_xlabel("weight sparsity (fraction of conv weights removed; conv1 and linear dense)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"ResNet-20, JPEG CIFAR-10: {s['epochs']} epoch(s) x {s['subset']:,} images fine-tuning per method")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_sparsity.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- part 2
def allocate_policy(out: Path, s: dict) -> dict:
    """Allocate from the channel curves at 50% MACs; tolerance: the given one or the smallest candidate respected."""
    import pandas as pd
    from amc import Policy, allocate
    from amc.errors import AmcError
    from amc.io import atomic_write_text, open_model
    curves = pd.read_csv(out / "sensitivity_channel.csv")
    model, spec, _ = open_model(None, s["checkpoint"])
    amc_policy = Policy.load(AMC_POLICY)
    data = amc_policy.data

    def make(tol):
        p = allocate(curves, 0.5, tol, model=model, example_input=spec.input_shape, cost="macs",
                     exclude=amc_policy.model.get("exclude", []), model_spec=spec.to_dict(), prune=amc_policy.prune)
        p.calibration, p.data = amc_policy.calibration, data
        return p

    rows, chosen = [], None
    for tol in (s["tolerance"],) if s["tolerance"] is not None else TOLERANCES:
        try:
            p = make(tol)
            rows.append({"tolerance": tol, "multiplier": p.metrics["multiplier"],
                         "tolerance_respected": p.metrics["tolerance_respected"], "macs_ratio": p.metrics["macs_ratio"],
                         "preserve_ratios": json.dumps({k: round(v, 3) for k, v in p.ratios.items()})})
            if chosen is None and (p.metrics["tolerance_respected"] or s["tolerance"] is not None):
                chosen = (tol, p)
        except AmcError as exc:
            rows.append({"tolerance": tol, "error": str(exc)})
    if chosen is None:
        tol = TOLERANCES[-1]
        chosen = (tol, make(tol))
    atomic_write_text(pd.DataFrame(rows).to_csv(index=False), out / "allocation.csv")
    chosen[1].provenance["command"] = "benchmarks/toolbox.py (amc.allocate on sensitivity_channel.csv)"
    chosen[1].save(out / "policy_sensitivity.json")
    return {"tolerance": chosen[0], "multiplier": chosen[1].metrics["multiplier"],
            "tolerance_respected": chosen[1].metrics["tolerance_respected"]}


def part2_tasks(s: dict) -> list:
    rel_sens = {"checkpoint": s["checkpoint"], "channel_levels": s["channel_levels"],
                "weight_levels": s["weight_levels"]}
    rel = train_settings(s)
    return [("part2/sensitivity-channel", "sensitivity", {"granularity": "channel"}, rel_sens),
            ("part2/sensitivity-weight", "sensitivity", {"granularity": "weight"}, rel_sens),
            ("part2/channel-amc", "channel", {"name": "AMC (DDPG, seed 0)", "policy_path": str(AMC_POLICY)}, rel),
            ("part2/channel-uniform", "channel", {"name": "uniform", "policy_path": str(UNIFORM_POLICY)}, rel)]


def part2_on_done(out: Path, s: dict, state: dict):
    def on_done(key, result):
        if key != "part2/sensitivity-channel" or "error" in result:
            return []
        state["allocation"] = allocate_policy(out, s)
        log(f"allocated: {state['allocation']}")
        rel = {**train_settings(s), "channel_levels": s["channel_levels"], "tolerance": state["allocation"]["tolerance"]}
        return [("part2/channel-sensitivity", "channel",
                 {"name": f"sensitivity (tolerance {state['allocation']['tolerance']})",
                  "policy_path": str(out / "policy_sensitivity.json")}, rel)]
    return on_done


def part2_report(out: Path, results: dict, dense_top1: float, s: dict) -> None:
    import pandas as pd
    from amc import plot_sensitivity
    from amc.io import atomic_write_text
    for granularity, title in SENSITIVITY_TITLES.items():  # redrawn from the CSVs (cheap)
        if (out / f"sensitivity_{granularity}.csv").is_file():
            plot_sensitivity(pd.read_csv(out / f"sensitivity_{granularity}.csv"), out / f"sensitivity_{granularity}.png",
                             title=title)
    rows = [r for k, r in results.items() if k.startswith("part2/channel-") and "error" not in r]
    if not rows:
        return
    df = pd.DataFrame(rows)
    atomic_write_text(df.to_csv(index=False), out / "channel_policies.csv")
    lines = [f"Channel pruning at 50% MACs, ResNet-20; dense test top-1 {dense_top1 * 100:.2f}%. Each policy applied "
             "with least-squares reconstruction + BN recalibration (the AMC policy's settings and 500 calibration "
             f"images); fine-tuning {s['epochs']} epoch(s) of {s['subset']:,} images, lr {s['lr']}.", "",
             "| policy | MACs kept | params kept | search top-1 % (no FT) | test top-1 % no FT | test top-1 % + FT |",
             "| --- | --- | --- | --- | --- | --- |"]
    for _, r in df.iterrows():
        lines.append(f"| {r.policy} | {r.macs_ratio:.4f} | {r.params_ratio:.4f} | {r.search_top1_no_finetune * 100:.2f}"
                     f" | {r.test_top1_no_finetune * 100:.2f} | {r.test_top1_finetuned * 100:.2f} |")
    atomic_write_text("\n".join(lines) + "\n", out / "channel_policies.md")


# ---------------------------------------------------------------- part 3 (main process, nothing else running)
def part3(out: Path, s: dict) -> dict:
    import pandas as pd
    from amc import Policy, apply_policy, calibration_for, load_sparse, prune_unstructured, save_sparse, \
        sparse_size_report
    from amc.io import atomic_write_text
    from amc.prune import fold_masks
    from amc.sparse_io import dense_state_dict
    from amc.unstructured import copy_model
    torch.set_num_threads(1)
    began = time.perf_counter()
    ctx = context(s)
    dense = ctx["model"].eval()
    # the 90% global sparse model: AGP-fine-tuned from part 1 if it exists, else one-shot masks without training
    source = None
    for method in ("agp", "oneshot"):
        path = out / "parts" / "models" / f"{method}-global-{SPARSE_FOR_SIZE:.2f}.pt"
        if path.is_file():
            source = f"part 1 {method} global {SPARSE_FOR_SIZE:.0%}, fine-tuned"
            sparse = copy_model(dense)
            sparse.load_state_dict(torch.load(path, weights_only=True))
            break
    if source is None:
        source = f"one-shot global {SPARSE_FOR_SIZE:.0%}, not fine-tuned"
        sparse = fold_masks(prune_unstructured(dense, SPARSE_FOR_SIZE, scope="global", keep_dense=KEEP_DENSE))
    sparse.eval()
    masked = prune_unstructured(dense, SPARSE_FOR_SIZE, scope="global", keep_dense=KEEP_DENSE).eval()  # hooks
    amc_policy = Policy.load(AMC_POLICY)
    channel = apply_policy(dense, amc_policy, calibration=calibration_for(amc_policy, data=ctx["data"])).model.eval()

    def torch_bytes(model) -> int:
        buf = io.BytesIO()
        torch.save(dense_state_dict(model), buf)
        return buf.getbuffer().nbytes

    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, quantize in (("sparse (bitmask + float32 values)", False), ("sparse + int8 values", True)):
            path = Path(tmp) / ("q.amcs" if quantize else "s.amcs")
            save_sparse(sparse, path, quantize=quantize)
            rep = sparse_size_report(sparse, path)
            restored = copy_model(dense)
            restored.load_state_dict(load_sparse(path))
            sizes.append({"model": f"{source}", "format": label, "bytes": rep["sparse_bytes"],
                          "ratio_to_dense_file": rep["sparse_bytes"] / torch_bytes(dense),
                          "weight_sparsity_stored": rep["sparsity"], "test_top1": top1(restored, ctx["test"])})
    sizes.insert(0, {"model": source, "format": "torch.save state_dict (dense tensors)", "bytes": torch_bytes(sparse),
                     "ratio_to_dense_file": torch_bytes(sparse) / torch_bytes(dense), "test_top1": top1(sparse, ctx["test"])})
    sizes.insert(0, {"model": "dense", "format": "torch.save state_dict", "bytes": torch_bytes(dense),
                     "ratio_to_dense_file": 1.0, "test_top1": top1(dense, ctx["test"])})
    sizes.append({"model": "AMC channel-pruned 50% MACs (no FT)", "format": "torch.save state_dict",
                  "bytes": torch_bytes(channel), "ratio_to_dense_file": torch_bytes(channel) / torch_bytes(dense),
                  "test_top1": top1(channel, ctx["test"])})
    atomic_write_text(pd.DataFrame(sizes).to_csv(index=False), out / "size.csv")

    variants = {"dense": dense,
                "dense, channels_last": copy_model(dense).to(memory_format=torch.channels_last),
                f"sparse {SPARSE_FOR_SIZE:.0%} global, masks folded (dense kernels)": sparse,
                f"sparse {SPARSE_FOR_SIZE:.0%} global, prune hooks (weight = orig * mask per call)": masked,
                "AMC channel-pruned 50% MACs (channels_last, as built)": channel,
                "AMC channel-pruned 50% MACs, contiguous": copy_model(channel).to(memory_format=torch.contiguous_format)}
    images = ctx["test"][0]
    speed = []
    for batch, repeats in ((1, s["repeats_b1"]), (64, s["repeats_b64"])):
        x = images[:batch].contiguous()
        times = {k: [] for k in variants}
        with torch.inference_mode():
            for m in variants.values():
                for _ in range(3):
                    m(x)
            for _ in range(repeats):  # interleaved: every variant sees the same machine state
                for k, m in variants.items():
                    t = time.perf_counter()
                    m(x)
                    times[k].append(time.perf_counter() - t)
        base = statistics.median(times["dense"])
        for k, ts in times.items():
            med = statistics.median(ts)
            speed.append({"model": k, "batch": batch, "repeats": repeats, "median_ms": med * 1000,
                          "p10_ms": sorted(ts)[len(ts) // 10] * 1000, "p90_ms": sorted(ts)[(9 * len(ts)) // 10] * 1000,
                          "speedup_vs_dense": base / med, "threads": torch.get_num_threads()})
    atomic_write_text(pd.DataFrame(speed).to_csv(index=False), out / "speed.csv")
    lines = ["| model | format | bytes | vs dense file | test top-1 % |", "| --- | --- | --- | --- | --- |"]
    for r in sizes:
        lines.append(f"| {r['model']} | {r['format']} | {r['bytes']:,} | {r['ratio_to_dense_file']:.3f} | "
                     f"{r['test_top1'] * 100:.2f} |")
    lines += ["", "| model | batch 1 median ms | batch 64 median ms | speed-up b1 | speed-up b64 |",
              "| --- | --- | --- | --- | --- |"]
    for k in variants:
        b1 = next(r for r in speed if r["model"] == k and r["batch"] == 1)
        b64 = next(r for r in speed if r["model"] == k and r["batch"] == 64)
        lines.append(f"| {k} | {b1['median_ms']:.2f} | {b64['median_ms']:.1f} | {b1['speedup_vs_dense']:.2f}x | "
                     f"{b64['speedup_vs_dense']:.2f}x |")
    atomic_write_text("\n".join(lines) + "\n", out / "size_speed.md")
    return {"sparse_source": source, "seconds": time.perf_counter() - began}


# ---------------------------------------------------------------- part 4
def part4_tasks(s: dict) -> list:
    rel = {**train_settings(s), "channel_epochs": s["channel_epochs"], "channel_rounds": s["channel_rounds"]}
    policies = {"uniform": UNIFORM_POLICY, "AMC (DDPG, seed 0)": AMC_POLICY}
    return [(f"part4/{'amc' if 'AMC' in name else name}-{sched}", "channel_schedule",
             {"schedule": sched, "name": name, "policy_path": str(path)}, rel)
            for name, path in policies.items() for sched in CHANNEL_SCHEDULES]


def part4_report(out: Path, results: dict, dense_top1: float, s: dict) -> None:
    import pandas as pd
    from amc.io import atomic_write_text
    rows = [r for k, r in results.items() if k.startswith("part4/") and "error" not in r]
    if not rows:
        return
    df = pd.DataFrame(rows)
    flat = df.drop(columns=["levels", "search_top1_per_epoch"]).assign(
        search_top1_per_epoch=[json.dumps([round(v, 4) for v in r]) for r in df.search_top1_per_epoch],
        macs_kept_per_pruning_step=[json.dumps([round(e["macs_kept"], 4) for e in r]) for r in df.levels])
    atomic_write_text(flat.to_csv(index=False), out / "channel_schedules.csv")
    lines = [f"Channel pruning at 50% MACs, ResNet-20; dense test top-1 {dense_top1 * 100:.2f}%. Same "
             f"{s['channel_epochs']} epochs of {s['subset']:,} images (lr {s['lr']}, cosine) for every schedule. "
             "One-shot: the policy applied with least squares + BN recalibration, then fine-tuned. AGP / rounds: "
             "channels (L1 of their consumer weights, re-scored at every pruning step) masked gradually during the "
             f"fine-tuning (AGP: cubic ramp over the first 75% of the steps, at most 10 steps; rounds: "
             f"{s['channel_rounds']} rounds), then removed for real.", "",
             "| policy | schedule | MACs kept | test top-1 % before FT | search top-1 % per epoch | test top-1 % after FT |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        before = "–" if r["test_top1_before_finetune"] is None else f"{r['test_top1_before_finetune'] * 100:.2f}"
        per_epoch = " → ".join(f"{v * 100:.1f}" for v in r["search_top1_per_epoch"])
        lines.append(f"| {r['policy']} | {r['schedule']} | {r['macs_ratio']:.4f} | {before} | {per_epoch} | "
                     f"{r['test_top1_finetuned'] * 100:.2f} |")
    atomic_write_text("\n".join(lines) + "\n", out / "channel_schedules.md")


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "results/benchmarks/resnet20-jpeg-finetune/run/model.pt"))
    p.add_argument("--data-dir", default="/tmp/cifar")
    p.add_argument("--out", default=str(ROOT / "results/benchmarks/toolbox"))
    p.add_argument("--part", choices=("1", "2", "3", "4", "all"), default="all")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (over --subset images) of every method")
    p.add_argument("--subset", type=int, default=10000, help="fixed seeded subset of the trained-on images")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (1 thread each) for parts 1 and 2")
    p.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    p.add_argument("--channel-levels", type=float, nargs="+", default=list(CHANNEL_LEVELS))
    p.add_argument("--weight-levels", type=float, nargs="+", default=list(WEIGHT_LEVELS))
    p.add_argument("--channel-epochs", type=int, default=4, help="fine-tuning epochs of part 4 (channel schedules)")
    p.add_argument("--channel-rounds", type=int, default=3, help="prune -> fine-tune rounds of part 4")
    p.add_argument("--tolerance", type=float, help="allocation tolerance (top-1 drop, fraction); default: the "
                   f"smallest of {TOLERANCES} that the allocation respects at 50%% MACs")
    p.add_argument("--repeats", type=int, nargs=2, default=[200, 20], metavar=("B1", "B64"),
                   help="timed runs per model at batch 1 and batch 64 (part 3)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"checkpoint": str(Path(args.checkpoint).resolve().relative_to(ROOT))
                if Path(args.checkpoint).resolve().is_relative_to(ROOT) else args.checkpoint,
                "data_dir": args.data_dir, "epochs": args.epochs, "subset": args.subset, "subset_seed": 0,
                "lr": args.lr, "sparsities": args.sparsities, "channel_levels": args.channel_levels,
                "weight_levels": args.weight_levels, "tolerance": args.tolerance,
                "repeats_b1": args.repeats[0], "repeats_b64": args.repeats[1],
                "channel_epochs": args.channel_epochs, "channel_rounds": args.channel_rounds}
    os.chdir(ROOT)  # the checkpoint is recorded relative to the repository
    started = time.time()
    runner = Runner(out, settings, args.jobs)
    parts = ("1", "2", "3", "4") if args.part == "all" else (args.part,)
    tasks, state = [], {}
    if "2" in parts:
        tasks += part2_tasks(settings)
    if "1" in parts:
        tasks += part1_tasks(settings)
    if "4" in parts:
        tasks += part4_tasks(settings)
    results = runner.run(tasks, part2_on_done(out, settings, state) if "2" in parts else None) if tasks else {}
    record_path = out / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    ctx = context(settings)
    dense_top1 = top1(ctx["model"], ctx["test"])
    dense_search = top1(ctx["model"], ctx["search"])
    if "1" in parts:
        part1_report(out, results, dense_top1, settings)
    if "2" in parts:
        part2_report(out, results, dense_top1, settings)
        if "allocation" in state:
            record["allocation"] = state["allocation"]
    if "4" in parts:
        part4_report(out, results, dense_top1, settings)
    if "3" in parts:
        log("part 3: sizes and CPU latency (nothing else running in this script)")
        record["part3"] = part3(out, settings)
    from amc.io import atomic_write_text
    from amc.provenance import provenance
    info = provenance(command=" ".join([Path(sys.executable).name, *sys.argv]))
    failed = {k: r["error"] for k, r in results.items() if "error" in r}
    runs = record.setdefault("runs", [])
    runs.append({"command": info["command"], "part": args.part, "jobs": args.jobs, "seconds": time.time() - started,
                 "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "failed_units": failed})
    unit_seconds = {k: r.get("seconds") for k, r in results.items() if "seconds" in r}
    record.update(machine=info["machine"], cpus=os.cpu_count(), versions=info["versions"], settings=settings,
                  dense_test_top1=dense_top1, dense_search_top1=dense_search,
                  unit_seconds={**record.get("unit_seconds", {}), **unit_seconds},
                  schedules={"finetune": "amc.training.Trainer: SGD Nesterov momentum 0.9, weight decay 5e-4, batch "
                             "128, crop+flip, cosine lr from --lr to 0 over all steps, seed 0; --epochs epochs over a "
                             "fixed subset (torch.randperm seed 0) of --subset trained-on images",
                             "oneshot": "amc.schedule_callbacks('oneshot'): prune_unstructured to the final sparsity, "
                             "then fine-tune with KeepMasks",
                             "agp": "amc.schedule_callbacks('agp'): AGP cubic ramp from 0 at step 0 over the first 75% "
                             "of the steps in at most 10 pruning steps, then KeepMasks for the rest",
                             "keep_dense": list(KEEP_DENSE),
                             "test": "10,000 test images; search: 2,000 held-out training images (split seed 0)"})
    atomic_write_text(json.dumps(record, indent=2) + "\n", record_path)
    log(f"finished part {args.part} in {time.time() - started:.0f} s; failed units: {list(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
