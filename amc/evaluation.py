"""Accuracy and loss of a classifier on in-memory tensors, and BatchNorm recalibration."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Top-1/top-5 accuracy (fractions in [0, 1]) and mean cross-entropy loss.

    ``images``: already normalised float tensor (N, C, H, W) on the model's device.
    """
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    loss = 0.0
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            x = images[start:start + batch_size]
            y = labels[start:start + batch_size].to(x.device)
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y.view(-1, 1)).any(1).sum().item()
    model.train(was_training)
    n = max(1, len(labels))
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss / n, "images": len(labels)}


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate BatchNorm running statistics on ``batches`` (cumulative average); returns batches used.

    Only BatchNorm layers switch to training mode; weights are not touched.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
                used += 1
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return used
