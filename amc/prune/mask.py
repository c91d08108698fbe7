"""Mask pruning: a same-shape copy of the model whose pruned weights are held at zero.

Masks are installed with :func:`torch.nn.utils.prune.custom_from_mask`, so the pruned model is
what ``torch.nn.utils.prune`` users expect: each masked layer has ``weight_orig`` (a parameter),
``weight_mask`` (a buffer) and computes ``weight = weight_orig * weight_mask`` before every
forward pass, so pruned weights stay exactly zero through training. :func:`fold_masks` makes them
permanent (``prune.remove``). Channel selections become masks on the consumers' input weights
(the compact model's function with the dense shapes, except under a LayerNorm over the channels: refused);
weight selections are used as given.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune

from ..errors import AmcError
from ..selection import Selection
from ..structure import DependencyGraph
from ..structure.layers import LAYERNORM


class MaskPruner:
    """Prunes ``model``'s copy with masks; ``selection.kept`` (channels) and ``selection.masks`` (weights) combine."""

    granularity = "weight"

    def __init__(self, graph: DependencyGraph):
        self.graph = graph

    def masks(self, selection: Selection) -> dict[str, torch.Tensor]:
        """Weight-shaped bool masks (True = kept) per layer name for ``selection``."""
        selection.validate(self.graph)
        out = {name: mask.bool() for name, mask in selection.masks.items()}
        kept = selection.sorted().kept
        for name, idx in kept.items():
            group = self.graph.group[name]
            norms = [f for f in group.followers if self.graph.layer[f].kind is LAYERNORM]
            if norms and len(idx) < group.channels:
                raise AmcError(f"channel masks cannot stand for removing channels of group '{name}': LayerNorm "
                               f"'{norms[0]}' normalizes over them, so the compact model differs; prune them "
                               f"physically (ChannelPruner) instead")
        for layer in self.graph.layers:
            if layer.kind.role != "producer" or not any(s.group in kept for s in layer.in_layout):
                continue
            keep_in = torch.zeros(self.graph.width(layer.in_layout), dtype=torch.bool)
            keep_in[self.graph.feature_index(layer.in_layout, kept)] = True
            mask = layer.kind.input_mask(layer.module, keep_in.to(layer.module.weight.device))
            out[layer.name] = out[layer.name] & mask if layer.name in out else mask.clone()
        return out

    def apply(self, model: nn.Module, selection: Selection) -> nn.Module:
        masked = copy.deepcopy(model)
        modules = dict(masked.named_modules())
        for name, mask in self.masks(selection).items():
            prune.custom_from_mask(modules[name], "weight", mask.to(modules[name].weight.device))
        return masked


def fold_masks(model: nn.Module) -> nn.Module:
    """Make every ``torch.nn.utils.prune`` mask of ``model`` permanent (in place); returns ``model``."""
    for m in model.modules():
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of conv/linear weight elements that are exactly zero (0 = dense)."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)
