"""A pruning decision made concrete: which channel indices (or weights) each group (or layer) keeps.

A :class:`Selection` is what a pruner executes. ``kept`` maps a group name to the sorted indices of
the channels it keeps (absent: all); ``masks`` maps a layer name to a weight-shaped bool mask
(True = kept) for unstructured pruning. :func:`top_channels` turns scores into indices.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import AmcError
from .structure import DependencyGraph, GroupName, LayerName


@dataclass
class Selection:
    """Kept channel indices per group name and/or weight masks per layer name."""

    kept: dict[GroupName, torch.Tensor] = field(default_factory=dict)
    masks: dict[LayerName, torch.Tensor] = field(default_factory=dict)

    def keep(self) -> dict[GroupName, int]:
        """Kept channel count per group that loses channels."""
        return {name: len(idx) for name, idx in self.kept.items()}

    def validate(self, graph: DependencyGraph) -> None:
        """Raise :class:`AmcError` if this selection cannot be executed on ``graph``."""
        for name, idx in self.kept.items():
            g = graph.group.get(name)
            if g is None:
                raise AmcError(f"selection names an unknown channel group '{name}'")
            values = idx.tolist()
            if not values:
                raise AmcError(f"group '{name}' would keep zero channels")
            if len(values) < g.channels and not g.prunable:
                raise AmcError(f"group '{name}' is not prunable: {g.reason}")
            if len(values) != len(set(values)) or min(values) < 0 or max(values) >= g.channels:
                raise AmcError(f"group '{name}' keeps invalid channel indices (need distinct values in [0, {g.channels}))")
            if g.blocks > 1:
                per_block = torch.bincount(idx.cpu() // (g.channels // g.blocks), minlength=g.blocks)
                if (per_block != per_block[0]).any():
                    raise AmcError(f"group '{name}' feeds a grouped conv: it must keep the same number of channels "
                                   f"in each of its {g.blocks} blocks (got {per_block.tolist()})")
        for name, mask in self.masks.items():
            layer = graph.layer.get(name)
            if layer is None or getattr(layer.module, "weight", None) is None:
                raise AmcError(f"mask for '{name}', which is not a conv or linear layer of the model")
            if tuple(mask.shape) != tuple(layer.module.weight.shape):
                raise AmcError(f"mask for '{name}' has shape {tuple(mask.shape)}, its weight {tuple(layer.module.weight.shape)}")

    def sorted(self) -> "Selection":
        return Selection({n: idx.sort().values for n, idx in self.kept.items()}, dict(self.masks))


def top_channels(scores: torch.Tensor, keep: int, blocks: int = 1) -> torch.Tensor:
    """Sorted indices of the ``keep`` highest scores (ties broken by lower index).

    With ``blocks`` > 1 the scores form that many equal contiguous blocks and each keeps
    ``keep / blocks`` channels (a group feeding a grouped conv).
    """
    if keep % blocks:
        raise AmcError(f"cannot keep {keep} channels evenly in {blocks} blocks")
    per_block = scores.view(blocks, -1)
    order = torch.argsort(-per_block, dim=1, stable=True)[:, :keep // blocks]
    offsets = torch.arange(blocks).view(-1, 1) * per_block.shape[1]
    return (order + offsets).flatten().sort().values
