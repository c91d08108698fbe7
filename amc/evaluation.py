"""Accuracy and loss of a classifier on in-memory tensors."""
from __future__ import annotations

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
