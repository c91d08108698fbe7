"""Accuracy and loss of a classifier on in-memory tensors, and a user's own evaluator for other tasks."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import AmcError
from .models.registry import import_object


def load_evaluator(path: str) -> Callable[[nn.Module], float]:
    """The user's evaluator ``package.module:function``: ``function(model) -> float`` (a score in [0, 1], higher
    is better, e.g. mAP on the user's own validation data), checked to be callable."""
    fn = import_object(path, "evaluator")
    if not callable(fn):
        raise AmcError(f"evaluator '{path}' is a {type(fn).__name__}, not a function of the model")
    return fn


def custom_score(evaluator: Callable[[nn.Module], float], model: nn.Module) -> float:
    """``evaluator(model)`` in eval mode (training mode restored), checked to be a finite number."""
    was_training = model.training
    model.eval()
    try:
        value = evaluator(model)
    finally:
        model.train(was_training)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        name = getattr(evaluator, "__name__", "evaluator")
        raise AmcError(f"evaluator {name} returned {value!r}; it must return a finite number (higher = better)")
    return float(value)


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
