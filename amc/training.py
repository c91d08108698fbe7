"""Training and fine-tuning: SGD with momentum, cosine learning rate, weight decay, resumable.

Each epoch writes ``<out>/last.pt`` (model, optimiser, epoch, RNG state; atomic) and appends a
row to ``<out>/metrics.csv``; the end writes ``<out>/model.pt`` (an amc checkpoint that
``amc evaluate`` / ``amc apply`` / ``amc search`` open directly).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import atomic_save, read_checkpoint
from .data import ImageSet, Normalization, iterate_batches
from .errors import AmcError
from .evaluation import evaluate
from .models import ModelSpec, save_model


@dataclass(frozen=True)
class TrainConfig:
    """epochs; lr: peak learning rate (cosine decay to 0 over all iterations); weight_decay; momentum;
    batch_size; augment: CIFAR crop+flip; seed: shuffling/augmentation seed."""

    epochs: int = 10
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 128
    augment: bool = True
    seed: int = 0


def train(model: nn.Module, spec: ModelSpec, train_set: ImageSet, val_set: ImageSet | None, norm: Normalization,
          cfg: TrainConfig, out_dir: str | Path, resume: bool = False, device: str = "cpu",
          progress: bool = True, extra: dict | None = None) -> pd.DataFrame:
    """Train ``model`` in place; returns the metrics table (one row per epoch)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    start_epoch, rows = 0, []
    if resume:
        last = out / "last.pt"
        if not last.is_file():
            raise AmcError(f"nothing to resume: {last} does not exist")
        state = read_checkpoint(last)
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        rows = pd.read_csv(out / "metrics.csv").to_dict("records")[:start_epoch]
    val_x = norm(val_set.images).to(device) if val_set is not None else None
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        began = time.perf_counter()
        seen = correct = 0
        loss_sum = 0.0
        batches = iterate_batches(train_set, cfg.batch_size, norm, shuffle=True, augment=cfg.augment,
                                  seed=cfg.seed * 1000 + epoch)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": loss_sum / max(seen, 1),
               "train_top1": correct / max(seen, 1), "seconds": time.perf_counter() - began}
        if val_x is not None:
            metrics = evaluate(model, val_x, val_set.labels.to(device))
            row.update(val_loss=metrics["loss"], val_top1=metrics["top1"], val_top5=metrics["top5"])
        rows.append(row)
        pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False)
        atomic_save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "epoch": epoch + 1, "config": asdict(cfg)}, out / "last.pt")
        if progress:
            val = f", val top-1 {row['val_top1']:.4f}" if "val_top1" in row else ""
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, "
                  f"train top-1 {row['train_top1']:.4f}{val} ({row['seconds']:.0f} s)", flush=True)
    model.eval()
    save_model(out / "model.pt", model.cpu(), spec, train_config=asdict(cfg), **(extra or {}))
    model.to(device)
    return pd.DataFrame(rows)
