"""Statistics of consumer-layer inputs, gathered once from calibration batches.

For every consumer layer (a conv or linear reading a prunable group) this records:

- ``gram[name]``: X^T X of its input samples, X being im2col patches (C_in*k*k columns, channel
  major) of ``points_per_image`` random output positions per image, or the input vector of a
  linear layer. Least-squares reconstruction needs nothing else (see :mod:`amc.reconstruction`).
- ``mean_abs[name]`` and ``zero_fraction[name]``: per input feature (channel), for the activation
  criteria.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .graph import PruningGraph


@dataclass
class FeatureStats:
    gram: dict[str, torch.Tensor] = field(default_factory=dict)
    mean_abs: dict[str, torch.Tensor] = field(default_factory=dict)
    zero_fraction: dict[str, torch.Tensor] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)


def collect_feature_stats(model: nn.Module, graph: PruningGraph, batches: Iterable[torch.Tensor],
                          points_per_image: int = 10, seed: int = 0, with_gram: bool = True) -> FeatureStats:
    """Run ``model`` (eval mode, no grad) on ``batches`` and gather :class:`FeatureStats`.

    ``points_per_image``: sampled output positions per image for conv consumers (0 = all).
    """
    consumers = sorted({c for g in graph.prunable_groups for c in g.consumers})
    modules = dict(model.named_modules())
    stats = FeatureStats()
    images_seen = {name: 0 for name in consumers}
    gen = torch.Generator().manual_seed(seed)

    def hook(name):
        def record(module, inputs):
            x = inputs[0].detach()
            dims = [0, 2, 3] if x.dim() == 4 else [0]
            n = x.shape[0]
            seen = images_seen[name]
            mean_abs = x.abs().mean(dim=dims).double()
            zeros = (x == 0).double().mean(dim=dims)
            if seen:
                w = seen / (seen + n)
                stats.mean_abs[name] = stats.mean_abs[name] * w + mean_abs * (1 - w)
                stats.zero_fraction[name] = stats.zero_fraction[name] * w + zeros * (1 - w)
            else:
                stats.mean_abs[name], stats.zero_fraction[name] = mean_abs, zeros
            images_seen[name] = seen + n
            if not with_gram:
                return
            if isinstance(module, nn.Conv2d):
                cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
                positions = cols.shape[2]
                if 0 < points_per_image < positions:
                    pick = torch.stack([torch.randperm(positions, generator=gen)[:points_per_image] for _ in range(n)])
                    cols = cols.gather(2, pick.unsqueeze(1).expand(-1, cols.shape[1], -1).to(cols.device))
                samples = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            else:
                samples = x.reshape(n, -1)
            g = (samples.T @ samples).double().cpu()
            stats.gram[name] = stats.gram[name] + g if name in stats.gram else g
            stats.samples[name] = stats.samples.get(name, 0) + samples.shape[0]
        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in consumers]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for x in batches:
                model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return stats
