"""Sparse training on ResNet-20 / CIFAR-10: lottery tickets with their controls, and RigL vs SET vs static ERK vs dense.

Every training uses the same schedule (:class:`amc.config.TrainConfig`: SGD Nesterov momentum 0.9, weight decay
5e-4, batch ``--batch-size``, crop+flip, cosine lr from ``--lr`` to 0 over ``--epochs`` epochs of ``--subset``
trained-on images), so every variant takes the same number of optimizer steps. Test top-1 on ``--test-subset``
test images. Layers ``--keep-dense`` (default: the first conv and the classifier) stay dense and are not counted
in the sparsity (fraction of the prunable conv weights removed).

- part ``lottery`` (:func:`amc.lottery_ticket`): ``--rounds`` rounds removing ``--prune-fraction`` of the
  remaining weights (``--scope``), run twice from the same random initialisation: survivors rewound to the
  initialisation (run ``init``) and to step ``--rewind-step`` of round 0 (run ``rewind``); the controls at every
  round's sparsity -- the ticket's mask on a fresh initialisation (``reinit``) and a random mask with the same
  per-layer counts (``random_mask``) -- in the run(s) ``--controls-with`` names -> ``lottery.{csv,md,png}``;
- part ``rigl`` (:func:`amc.sparse_train`): at each of ``--sparsities`` with ERK layer sparsities, ``rigl``,
  ``set`` and ``static`` from scratch (random masks) and ``rigl`` and ``static`` from the dense ``--checkpoint``
  (its largest weights start the mask), plus the dense baseline from scratch and from the checkpoint (sparsity 0)
  -> ``rigl.{csv,md,png}``.

Every training writes its folder under ``OUT/lottery/`` or ``OUT/rigl/`` and is resumable: rerunning the same
command continues a killed run (finished trainings are read back). ``record.json`` holds the machine, versions,
device, command, seconds and settings.

    python benchmarks/sparse_training.py --data-dir /tmp/cifar --out results/benchmarks/sparse-training \\
        --epochs 30 --device cuda
    # reduced length (smoke test): a few hundred images, one epoch
    python benchmarks/sparse_training.py --subset 256 --test-subset 1000 --epochs 1 --rounds 2 \\
        --sparsities 0.9 --out /tmp/sparse-smoke --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHECKPOINT = "results/benchmarks/resnet20-jpeg-finetune/run/model.pt"
FROM_SCRATCH = ("rigl", "set", "static")
FROM_PRETRAINED = ("rigl", "static")
# settings only one part reads: a run of the other part in the same folder may differ in them
LOTTERY_SETTINGS = ("prune_fraction", "scope", "rewind_step", "controls_with")
RIGL_SETTINGS = ("sparsities", "update_every", "drop_fraction", "end_fraction", "checkpoint")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_data(s: dict):
    """(spec, train subset, test subset, normalisation) of the settings."""
    from amc.config import DataConfig
    from amc.data import load_splits, normalization
    from amc.models import ModelSpec, default_input_shape

    spec = ModelSpec(s["model"], 10, default_input_shape(s["model"]))
    data = DataConfig(dataset=s["dataset"], data_dir=s["data_dir"])
    splits = load_splits(data, ("train", "test"), num_classes=10, image_size=spec.input_shape[-1])
    train, test = splits["train"], splits["test"]
    g = torch.Generator().manual_seed(0)
    if s["subset"] and s["subset"] < len(train):
        train = train.subset(torch.randperm(len(train), generator=g)[:s["subset"]].sort().values)
    if s["test_subset"] and s["test_subset"] < len(test):
        test = test.subset(torch.randperm(len(test), generator=g)[:s["test_subset"]].sort().values)
    return spec, train, test, normalization(data)


def train_config(s: dict):
    from amc.config import TrainConfig
    return TrainConfig(epochs=s["epochs"], lr=s["lr"], batch_size=s["batch_size"], seed=s["seed"])


def initial_model(spec, seed: int):
    from amc.models import build_model
    torch.manual_seed(seed)
    return build_model(spec)


# ---------------------------------------------------------------- part: lottery
def part_lottery(out: Path, s: dict, spec, train, test, norm) -> "pd.DataFrame":
    import pandas as pd
    from amc import LotteryConfig, lottery_ticket
    from amc.models import build_model

    tables = []
    for run, rewind in (("init", 0), ("rewind", s["rewind_step"])):
        controls = ("reinit", "random_mask") if s["controls_with"] in (run, "both") else ()
        cfg = LotteryConfig(rounds=s["rounds"], prune_fraction=s["prune_fraction"], scope=s["scope"],
                            keep_dense=tuple(s["keep_dense"]), rewind_step=rewind, controls=controls, seed=s["seed"],
                            train=train_config(s))
        folder = out / "lottery" / run
        log(f"lottery {run}: rewind to step {rewind}, controls {list(controls) or 'none'}")
        began = time.time()
        table = lottery_ticket(initial_model(spec, s["seed"]), train, norm, cfg, folder, test_set=test,
                               fresh_init=lambda: build_model(spec), resume=(folder / "lottery.json").is_file(),
                               device=s["device"], log=lambda line: log(f"  {run} {line}") if "epoch" not in line
                               or s["verbose"] else None)
        log(f"lottery {run}: done in {time.time() - began:.0f} s")
        tables.append(table.assign(run=run))
    return pd.concat(tables, ignore_index=True)


def lottery_report(out: Path, df, s: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from amc.io import atomic_write_text

    def curve(variant: str, run: str) -> str:
        rewind = "init" if run == "init" else f"step {s['rewind_step']}"
        return f"ticket, rewound to {rewind}" if variant == "ticket" else f"{variant} (mask of the ticket rewound to {rewind})"

    df = df.assign(curve=[curve(v, r) for v, r in zip(df.variant, df.run)])
    atomic_write_text(df.to_csv(index=False), out / "lottery.csv")
    fig, ax = plt.subplots(figsize=(8, 5))
    for curve, part in df.groupby("curve", sort=False):
        part = part.sort_values("round")
        ax.plot(part.sparsity * 100, part.test_top1 * 100, marker="o", label=curve)
    ax.set_xlabel("sparsity of the prunable conv/linear weights (%)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Lottery tickets, {s['model']}: {s['epochs']} epochs per round, {s['prune_fraction']:.0%} of the "
                 f"remaining weights pruned per round ({s['scope']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "lottery.png", dpi=120)
    plt.close(fig)
    rounds = sorted(df["round"].unique())
    curves = list(dict.fromkeys(df.curve))
    lines = [f"Lottery tickets on {s['model']} ({s['dataset']}), {s['epochs']} epochs per training over "
             f"{s['subset_used']:,} images, lr {s['lr']}; test top-1 % on {s['test_used']:,} test images.", "",
             "| round | sparsity % | " + " | ".join(curves) + " |", "| --- | --- |" + " --- |" * len(curves)]
    for r in rounds:
        part = df[df["round"] == r]
        cells = []
        for c in curves:
            hit = part[part.curve == c]
            cells.append(f"{hit.test_top1.iloc[0] * 100:.2f}" if len(hit) else "–")
        lines.append(f"| {r} | {part.sparsity.iloc[0] * 100:.1f} | " + " | ".join(cells) + " |")
    atomic_write_text("\n".join(lines) + "\n", out / "lottery.md")


# ---------------------------------------------------------------- part: rigl
def rigl_units(s: dict) -> list[dict]:
    units = [{"name": "dense-scratch", "method": "static", "sparsity": 0.0, "init": "scratch"}]
    if s["checkpoint"]:
        units.append({"name": "dense-pretrained", "method": "static", "sparsity": 0.0, "init": "pretrained"})
    for sparsity in s["sparsities"]:
        units += [{"name": f"{m}-scratch-{sparsity}", "method": m, "sparsity": sparsity, "init": "scratch"}
                  for m in FROM_SCRATCH]
        if s["checkpoint"]:
            units += [{"name": f"{m}-pretrained-{sparsity}", "method": m, "sparsity": sparsity, "init": "pretrained"}
                      for m in FROM_PRETRAINED]
    return units


def part_rigl(out: Path, s: dict, spec, train, test, norm) -> "pd.DataFrame":
    import pandas as pd
    from amc import SparseConfig, sparse_train
    from amc.evaluation import evaluate
    from amc.io import atomic_write_text, open_model

    rows = []
    for unit in rigl_units(s):
        folder = out / "rigl" / unit["name"]
        done = folder / "result.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            continue
        if unit["init"] == "pretrained":
            model, _, _ = open_model(None, s["checkpoint"])  # relative to the repository (the working folder)
        else:
            model = initial_model(spec, s["seed"])
        cfg = SparseConfig(method=unit["method"], sparsity=unit["sparsity"], keep_dense=tuple(s["keep_dense"]),
                           initial_mask="magnitude" if unit["init"] == "pretrained" else "random",
                           update_every=s["update_every"], drop_fraction=s["drop_fraction"],
                           end_fraction=s["end_fraction"], seed=s["seed"], train=train_config(s))
        log(f"rigl {unit['name']}")
        began = time.time()
        result = sparse_train(model, train, norm, cfg, folder, resume=(folder / "last.pt").is_file(),
                              device=s["device"], log=(lambda line: log(f"  {unit['name']} {line}"))
                              if s["verbose"] else None)
        x, y = norm(test.images).to(s["device"]), test.labels.to(s["device"])
        measured = evaluate(model, x, y)
        row = {**unit, "test_top1": measured["top1"], "test_loss": measured["loss"],
               "measured_sparsity": float(result.history.sparsity.iloc[-1]), "mask_updates": len(result.updates),
               "connections_moved": int(result.updates.grown.sum()) if len(result.updates) else 0,
               "steps": int(result.history.step.iloc[-1]), "train_seconds": float(result.history.seconds.sum()),
               "layer_sparsities": result.sparsities}
        atomic_write_text(json.dumps(row, indent=2) + "\n", done)
        (folder / "last.pt").unlink(missing_ok=True)
        log(f"rigl {unit['name']}: test top-1 {row['test_top1']:.4f} ({time.time() - began:.0f} s)")
        rows.append(row)
    return pd.DataFrame(rows)


def rigl_report(out: Path, df, s: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from amc.io import atomic_write_text

    flat = df.drop(columns=["layer_sparsities"])
    atomic_write_text(flat.to_csv(index=False), out / "rigl.csv")
    fig, ax = plt.subplots(figsize=(8, 5))
    for (method, init), part in flat[flat.sparsity > 0].groupby(["method", "init"], sort=False):
        part = part.sort_values("sparsity")
        ax.plot(part.sparsity * 100, part.test_top1 * 100, marker="o", label=f"{method} ({init})")
    for _, r in flat[flat.sparsity == 0].iterrows():
        ax.axhline(r.test_top1 * 100, linestyle="--", color="grey" if r.init == "scratch" else "black",
                   label=f"dense ({r.init})")
    ax.set_xlabel("sparsity of the prunable conv/linear weights (%), ERK per layer")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Sparse training, {s['model']}: {s['epochs']} epochs each, ΔT {s['update_every']}, "
                 f"α {s['drop_fraction']}, updates until {s['end_fraction']:.0%} of the steps", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rigl.png", dpi=120)
    plt.close(fig)
    lines = [f"Sparse training on {s['model']} ({s['dataset']}), {s['epochs']} epochs over {s['subset_used']:,} "
             f"images for every row (the same optimizer steps); test top-1 % on {s['test_used']:,} test images.", "",
             "| method | start | sparsity % | test top-1 % | mask updates | connections moved |",
             "| --- | --- | --- | --- | --- | --- |"]
    for _, r in flat.sort_values(["sparsity", "init", "method"]).iterrows():
        method = "dense" if r.sparsity == 0 else r.method
        lines.append(f"| {method} | {r.init} | {r.measured_sparsity * 100:.1f} | {r.test_top1 * 100:.2f} | "
                     f"{r.mask_updates} | {r.connections_moved:,} |")
    atomic_write_text("\n".join(lines) + "\n", out / "rigl.md")


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint", default=CHECKPOINT, help="dense model for the 'from pretrained' RigL rows "
                   "('' = none); relative to the repository")
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "synthetic"))
    p.add_argument("--data-dir", default="/tmp/cifar")
    p.add_argument("--out", default=str(ROOT / "results/benchmarks/sparse-training"))
    p.add_argument("--part", choices=("lottery", "rigl", "all"), default="all")
    p.add_argument("--epochs", type=int, default=30, help="epochs of every training (each lottery round too)")
    p.add_argument("--subset", type=int, default=0, help="seeded subset of the trained-on images (0 = all 45,000)")
    p.add_argument("--test-subset", type=int, default=0, help="seeded subset of the test images (0 = all 10,000)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine to 0)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-dense", nargs="*", default=["conv1", "linear"])
    p.add_argument("--rounds", type=int, default=8, help="lottery pruning rounds (sparsity 1 - (1 - P)^rounds)")
    p.add_argument("--prune-fraction", type=float, default=0.2, help="fraction of the remaining weights per round")
    p.add_argument("--scope", choices=("global", "layer"), default="global")
    p.add_argument("--rewind-step", type=int, help="early step of run 'rewind' (default: 3%% of a round's steps)")
    p.add_argument("--controls-with", choices=("init", "rewind", "both"), default="init",
                   help="the lottery run(s) whose masks the reinit / random-mask controls use")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9])
    p.add_argument("--update-every", type=int, default=100, help="RigL/SET ΔT in steps")
    p.add_argument("--drop-fraction", type=float, default=0.3, help="RigL/SET α")
    p.add_argument("--end-fraction", type=float, default=0.75, help="no mask updates after this fraction of the steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--verbose", action="store_true", help="a line per epoch")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    os.chdir(ROOT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "part", "threads", "verbose", "device")}
    settings["keep_dense"] = list(args.keep_dense)
    started = time.time()
    spec, train, test, norm = load_data(settings)
    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    settings.update(rewind_step=args.rewind_step if args.rewind_step is not None else max(1, round(0.03 * steps)),
                    subset_used=len(train), test_used=len(test), steps_per_training=steps)
    parts = ("lottery", "rigl") if args.part == "all" else (args.part,)
    settings["parts"] = list(parts)
    stored = out / "settings.json"
    if stored.is_file():
        previous = json.loads(stored.read_text())
        # a part's own settings only matter if that part ran here before (or runs now and ran before)
        ran = set(previous.get("parts", ("lottery", "rigl")))
        own = {"lottery": LOTTERY_SETTINGS, "rigl": RIGL_SETTINGS}
        free = {k for part, keys in own.items() if part not in ran or part not in parts for k in keys}
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k)
                         and k not in ("rounds", "parts") and k not in free)  # more lottery rounds continue the runs
        settings = {**settings, **{k: previous[k] for k in free if k in previous and k not in
                                   {key for part in parts for key in own[part]}}}
        settings["parts"] = sorted(ran | set(parts))
        if changed:
            p.error(f"{out} holds results with other settings ({', '.join(changed)}); choose another --out")
    from amc.io import atomic_write_text
    atomic_write_text(json.dumps(settings, indent=2) + "\n", stored)
    settings.update(device=args.device, verbose=args.verbose)
    log(f"{spec.name} on {settings['dataset']}: {len(train):,} training images, {len(test):,} test images, "
        f"{steps} steps per training, device {args.device}")
    record_path = out / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if args.part in ("lottery", "all"):
        began = time.time()
        df = part_lottery(out, settings, spec, train, test, norm)
        lottery_report(out, df, settings)
        record["lottery_seconds"] = time.time() - began
    if args.part in ("rigl", "all"):
        began = time.time()
        df = part_rigl(out, settings, spec, train, test, norm)
        rigl_report(out, df, settings)
        record["rigl_seconds"] = time.time() - began
    from amc.provenance import provenance
    info = provenance(command=" ".join([Path(sys.executable).name, *sys.argv]))
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    record.setdefault("runs", []).append({"command": info["command"], "part": args.part, "device": args.device,
                                          "gpu": gpu, "threads": torch.get_num_threads(),
                                          "seconds": time.time() - started,
                                          "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    record.update(machine=info["machine"], cpus=os.cpu_count(), versions=info["versions"],
                  settings={k: v for k, v in settings.items() if k != "verbose"},
                  schedule="amc.training.Trainer: SGD Nesterov momentum 0.9, weight decay 5e-4, crop+flip, cosine lr "
                           "from --lr to 0 over all steps of each training, seed --seed; the same for every row")
    atomic_write_text(json.dumps(record, indent=2) + "\n", record_path)
    log(f"finished part {args.part} in {time.time() - started:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
