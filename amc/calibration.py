"""Calibration images and the statistics gathered on them once per dense model.

A :class:`CalibrationSet` is drawn once from the *trained-on* part of the training set (never
the search or test split) as :class:`~amc.config.CalibrationConfig` says, so the same
configuration redraws exactly the same images: a policy records it, and applying the policy
rebuilds the model the search scored.

:func:`collect_stats` runs the dense model over the calibration batches and records, for every
consumer layer (a conv or linear reading a prunable group), only what is asked for (:class:`Needs`):

- ``gram[name]``: X^T X of its input samples, X being im2col patches (C_in*k*k columns, channel
  major) of ``points_per_image`` random output positions per image, or the input vector of a
  linear layer (least-squares reconstruction needs nothing else);
- ``mean_abs[name]`` / ``zero_fraction[name]``: per input feature, for activation criteria;
- ``taylor[name]``: per input feature, the mean over images of |sum over positions of a * dL/da|
  (first-order Taylor importance, Molchanov et al. 2017), from a backward pass of the
  cross-entropy on the calibration labels.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import CalibrationConfig
from .data import ImageSet, Normalization
from .errors import AmcError
from .forward_context import attached_hooks, eval_mode
from .structure import DependencyGraph, kind_of


class Needs(enum.Flag):
    """What a criterion or recovery step needs from the calibration pass."""

    NOTHING = 0
    WEIGHTS = 1
    ACTIVATIONS = 2
    GRAM = 4
    GRADIENTS = 8


@dataclass
class CalibrationSet:
    """Normalised calibration images (N, C, H, W) with their labels, processed ``batch_size`` at a time."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    batch_size: int = 100

    @classmethod
    def draw(cls, train: ImageSet, norm: Normalization, cfg: CalibrationConfig = CalibrationConfig(),
             device: str = "cpu") -> "CalibrationSet":
        """``cfg.images`` images of ``train`` chosen by a permutation seeded with ``cfg.seed``."""
        if cfg.images < 1 or cfg.batch_size < 1:
            raise AmcError(f"calibration needs at least one image and a positive batch size, got {cfg}")
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.images]
        return cls(norm(train.images[pick]).to(device), train.labels[pick].to(device), cfg.batch_size)

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: str | torch.device, memory_format: torch.memory_format = torch.preserve_format) -> "CalibrationSet":
        labels = self.labels.to(device) if self.labels is not None else None
        return CalibrationSet(self.images.to(device, memory_format=memory_format), labels, self.batch_size)

    def batches(self, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(images, labels) batches in a fixed order; at most ``limit`` of them."""
        count = -(-len(self) // self.batch_size)
        for i in range(count if limit is None else min(limit, count)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield self.images[sl], (self.labels[sl] if self.labels is not None else None)


@dataclass
class CalibrationStats:
    gram: dict[str, torch.Tensor] = field(default_factory=dict)
    mean_abs: dict[str, torch.Tensor] = field(default_factory=dict)
    zero_fraction: dict[str, torch.Tensor] = field(default_factory=dict)
    taylor: dict[str, torch.Tensor] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)


def random_positions(count: int, images: int, points: int, gen: torch.Generator) -> torch.Tensor:
    """(images, points) distinct positions in [0, count) per image, drawn with ``gen`` (least-squares samples)."""
    return torch.stack([torch.randperm(count, generator=gen)[:points] for _ in range(images)])


def _running_mean(store: dict, name: str, value: torch.Tensor, seen: int, n: int) -> None:
    store[name] = value if not seen else store[name] * (seen / (seen + n)) + value * (n / (seen + n))


def collect_stats(model: nn.Module, graph: DependencyGraph, calib: CalibrationSet, needs: Needs, *,
                  points_per_image: int = 10, seed: int = 0) -> CalibrationStats:
    """Run ``model`` (eval mode) over ``calib`` and gather the :class:`CalibrationStats` that ``needs`` asks for.

    ``points_per_image``: sampled output positions per image for conv Gram matrices (0 = all).
    """
    consumers = sorted({c for g in graph.prunable for c in g.consumers})
    modules = dict(model.named_modules())
    stats = CalibrationStats()
    if needs & (Needs.ACTIVATIONS | Needs.GRAM):
        _forward_stats(model, modules, consumers, calib, needs, stats, points_per_image, seed)
    if needs & Needs.GRADIENTS:
        if calib.labels is None:
            raise AmcError("gradient criteria (taylor) need labelled calibration images")
        _taylor_stats(model, modules, consumers, calib, stats)
    return stats


def _other_dims(x: torch.Tensor, feature_dim: int) -> list[int]:
    """Every dim of ``x`` but the features' (statistics are per input feature, over images and positions)."""
    return [d for d in range(x.dim()) if d != feature_dim % x.dim()]


def _forward_stats(model, modules, consumers, calib, needs, stats, points_per_image, seed) -> None:
    seen = {name: 0 for name in consumers}
    gen = torch.Generator().manual_seed(seed)

    def hook(name):
        def record(module, inputs):
            x = inputs[0].detach()
            n = x.shape[0]
            if needs & Needs.ACTIVATIONS:
                dims = _other_dims(x, kind_of(module).feature_dim)
                _running_mean(stats.mean_abs, name, x.abs().mean(dim=dims).double(), seen[name], n)
                _running_mean(stats.zero_fraction, name, (x == 0).double().mean(dim=dims), seen[name], n)
            seen[name] += n
            if not needs & Needs.GRAM:
                return
            cols = kind_of(module).input_columns(module, x)  # (N, features, positions)
            positions = cols.shape[2]
            if 0 < points_per_image < positions:
                pick = random_positions(positions, n, points_per_image, gen)
                cols = cols.gather(2, pick.unsqueeze(1).expand(-1, cols.shape[1], -1).to(cols.device))
            samples = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            g = (samples.T @ samples).double().cpu()
            stats.gram[name] = stats.gram[name] + g if name in stats.gram else g
            stats.samples[name] = stats.samples.get(name, 0) + samples.shape[0]
        return record

    _run_with_hooks(model, modules, consumers, hook, calib, grad=False)


def _taylor_stats(model, modules, consumers, calib, stats) -> None:
    seen = {name: 0 for name in consumers}

    def hook(name):
        def record(module, inputs):
            x = inputs[0]
            if not x.requires_grad:
                return

            def on_grad(grad, x=x.detach(), feature_dim=kind_of(module).feature_dim):
                prod = (x * grad).movedim(feature_dim, 1)  # (N, features, positions...)
                per_image = prod.reshape(*prod.shape[:2], -1).sum(2).abs().double()
                _running_mean(stats.taylor, name, per_image.mean(0), seen[name], len(per_image))
                seen[name] += len(per_image)
            x.register_hook(on_grad)
        return record

    _run_with_hooks(model, modules, consumers, hook, calib, grad=True)
    model.zero_grad(set_to_none=True)


def _run_with_hooks(model, modules, consumers, hook, calib, *, grad: bool) -> None:
    with eval_mode(model), attached_hooks(pre=[(modules[name], hook(name)) for name in consumers]):
        if grad:
            for x, y in calib.batches():
                with torch.enable_grad():
                    F.cross_entropy(model(x.requires_grad_(False).clone().requires_grad_(True)), y).backward()
        else:
            with torch.inference_mode():
                for x, _ in calib.batches():
                    model(x)
