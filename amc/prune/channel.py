"""Physical channel removal: a smaller copy of the model with real shapes."""
from __future__ import annotations

import copy

from torch import nn

from ..selection import Selection
from ..structure import DependencyGraph


class ChannelPruner:
    """Prunes by slicing every layer a group touches (producers' outputs, followers' channels, consumers'
    inputs: convs, linears, BatchNorms, LayerNorms, per-channel tensors) on a deep copy; the input model is
    never modified.

    Only ``selection.kept`` is used (weight masks are :class:`~amc.prune.mask.MaskPruner`'s).
    """

    granularity = "channel"

    def __init__(self, graph: DependencyGraph):
        self.graph = graph

    def apply(self, model: nn.Module, selection: Selection) -> nn.Module:
        selection.validate(self.graph)
        kept = selection.sorted().kept
        small = copy.deepcopy(model)
        modules = dict(small.named_modules())
        for layer in self.graph.layers:
            in_idx = self.graph.feature_index(layer.in_layout, kept)
            out_idx = self.graph.feature_index(layer.out_layout, kept)
            layer.kind.slice(modules[layer.kind.module_name(layer.name)], in_idx, out_idx)
        return small
