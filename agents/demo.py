"""``amc demo``: the whole workflow on an embedded default, offline, in a few minutes on 2 CPU cores.

1. train a ResNet-8 for 16x16 synthetic images (:func:`amc.data.synthetic_images`) for a few epochs;
2. run a short DDPG search at 50% FLOPs (warm-up of random episodes, then the agent);
3. apply the best policy and save the compact model.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
import yaml

from amc.checkpoint import atomic_write_text
from amc.data import DataConfig, load_splits
from amc.evaluation import evaluate
from amc.flops import measure
from amc.models import ModelSpec, build_model, save_model
from amc.policy import Policy
from amc.pruner import PruneSettings
from amc.training import TrainConfig, train

from .report import write_report
from .search import SearchConfig, SearchRun


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(0)
    data_cfg = DataConfig("synthetic", search_size=500, synthetic_size=(3000, 1000), image_size=16)
    splits = load_splits(data_cfg)
    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    model_path = out / "dense" / "model.pt"
    model = build_model(spec)
    if model_path.is_file():
        from amc.models import open_model  # noqa: PLC0415

        model, spec, _ = open_model(None, model_path)
        print(f"[1/3] reusing trained model {model_path}")
    else:
        print("[1/3] training ResNet-8 on synthetic 16x16 images")
        train(model, spec, splits["train"], splits["test"], data_cfg.normalization,
              TrainConfig(epochs=3, lr=0.05, batch_size=64), out / "dense")
    norm = data_cfg.normalization
    dense_acc = evaluate(model, norm(splits["test"].images), splits["test"].labels)["top1"]

    print(f"[2/3] AMC search, {args.episodes} episodes at 50% FLOPs")
    from envs import PruningTask  # noqa: PLC0415

    settings = PruneSettings(bn_batches=3, batch_size=100)
    task = PruningTask.build(model, spec, splits["search"], splits["train"], norm, settings, calibration_images=300)
    warmup = max(1, args.episodes // 4)
    cfg = SearchConfig(model=spec.name, dataset="synthetic", episodes=args.episodes, warmup_episodes=warmup,
                       target=0.5, out=str(out / "search"), bn_batches=3)
    run_dir = out / "search"
    if (run_dir / "checkpoint.pt").exists():
        import shutil  # noqa: PLC0415

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    atomic_write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), run_dir / "config.yaml")
    run = SearchRun(cfg, run_dir, task=task)
    best = run.run()
    write_report(run_dir)

    print("[3/3] applying the best policy")
    policy = Policy.load(run_dir / "best_policy.json")
    counts = policy.counts(task.graph)
    compact = task.pruner.prune(counts).model
    acc = evaluate(compact, norm(splits["test"].images), splits["test"].labels)["top1"]
    dense_m, small_m = measure(model, spec.input_shape), measure(compact, spec.input_shape)
    save_model(out / "compact.pt", compact, spec, policy=policy.to_dict())
    print(f"dense:   {dense_m['flops'] / 1e6:.2f} M FLOPs, {dense_m['params'] / 1e3:.1f} k params, test top-1 {dense_acc:.4f}")
    print(f"compact: {small_m['flops'] / 1e6:.2f} M FLOPs ({small_m['flops'] / dense_m['flops']:.3f}), "
          f"{small_m['params'] / 1e3:.1f} k params, test top-1 {acc:.4f} (no fine-tuning; best search reward "
          f"{best['reward']:.4f})")
    print(f"done in {time.perf_counter() - started:.0f} s. Outputs in {out}/: dense/model.pt, search/ "
          "(episodes.csv, best_policy.json, summary.md, *.png), compact.pt")
    return 0
