"""The dependency graph of a traced model: its layers and the channel groups that are pruned together.

Every tensor with a channel dimension has a *layout*: the list of :class:`Segment` s it is made
of (one normally, several after ``torch.cat``; each channel may span ``mult`` features after a
flatten). A segment names the :class:`ChannelGroup` its channels belong to, so every query here
is keyed by group **name** (a ``str``, e.g. ``"layer1.0.conv1"``: the module that produces the
channels; ``"c[0:3]"`` for a piece of a split). Channel spaces that no layer produces (the model's
input) have names starting with ``~`` and are never groups.

``keep`` (group name -> kept channel count) and ``kept`` (group name -> sorted kept channel
indices) describe a pruning decision; a group that is absent keeps all its channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from .layers import LayerKind

GroupName = str
LayerName = str
Keep = Mapping[GroupName, int]
Kept = Mapping[GroupName, torch.Tensor]


@dataclass(frozen=True)
class Segment:
    """``length`` channels of group ``group``; each channel spans ``mult`` consecutive features."""

    group: GroupName
    length: int
    mult: int = 1


Layout = tuple[Segment, ...]


@dataclass
class Layer:
    """A conv, linear, BatchNorm or LayerNorm module as it is called in the traced forward pass.

    ``kind``: its :class:`~amc.structure.layers.LayerKind` adapter. ``in_hw`` / ``out_hw``: input
    and output spatial size ((1, 1) for linear layers on (N, features); the positions of a linear
    applied over the last dim of a channels-last tensor). ``call``: 1 for the module's first call;
    a module called again is listed once per call (MACs count every call, parameters the first).
    Layers the analysis cannot slice are listed too, their layouts in groups that are not prunable.
    """

    name: LayerName
    module: nn.Module
    kind: LayerKind
    in_layout: Layout
    out_layout: Layout
    out_hw: tuple[int, int] = (1, 1)
    in_hw: tuple[int, int] = (1, 1)
    call: int = 1


@dataclass
class ChannelGroup:
    """Channels pruned together; ``index`` is its position in forward order.

    producers: layers whose output channels these are; followers: per-channel layers on them
    (BatchNorm, depthwise convs, LayerNorm); consumers: layers reading them as input. ``blocks``: the channels
    form this many equal contiguous blocks (grouped convs) and each keeps the same count, so kept
    counts are multiples of ``blocks``. ``reason``: why the group is not prunable (None if it is).
    """

    index: int
    name: GroupName
    channels: int
    producers: list[LayerName] = field(default_factory=list)
    followers: list[LayerName] = field(default_factory=list)
    consumers: list[LayerName] = field(default_factory=list)
    reason: str | None = None
    blocks: int = 1

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def count_step(self, round_to: int = 1) -> int:
        """Kept channel counts are multiples of this: ``round_to`` combined with :attr:`blocks`."""
        return math.lcm(round_to, self.blocks)


@dataclass
class DependencyGraph:
    """Layers (forward order) and channel groups of a model traced on one input of ``input_shape``.

    ``fixed_params``: parameters that belong to no layer of :attr:`layers` (layer scales, embeddings,
    modules never called...; they do not change with pruning). Built by :func:`amc.structure.trace`.
    Group names are unique; the group produced by a module's second call is named ``module#2``.
    """

    input_shape: tuple[int, ...]
    layers: list[Layer]
    groups: list[ChannelGroup]
    fixed_params: int = 0

    def __post_init__(self) -> None:
        self.layer = {layer.name: layer for layer in self.layers}
        self.group = {g.name: g for g in self.groups}

    @property
    def prunable(self) -> list[ChannelGroup]:
        """The groups a policy decides, in forward order."""
        return [g for g in self.groups if g.prunable]

    def width(self, layout: Layout, keep: Keep | None = None) -> int:
        """Features of a tensor with this layout when groups keep ``keep[name]`` channels."""
        keep = keep or {}
        return sum(keep.get(s.group, s.length) * s.mult for s in layout)

    def feature_index(self, layout: Layout, kept: Kept) -> torch.Tensor:
        """Indices of the features of a tensor with this layout that survive ``kept``."""
        parts, offset = [], 0
        for seg in layout:
            idx = kept.get(seg.group)
            idx = torch.arange(seg.length) if idx is None else idx.cpu()
            feat = (idx.view(-1, 1) * seg.mult + torch.arange(seg.mult)).flatten()
            parts.append(feat + offset)
            offset += seg.length * seg.mult
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def channel_slices(self, layout: Layout, group: GroupName) -> list[tuple[int, int, int]]:
        """(offset, length, mult) of each segment of ``layout`` that belongs to ``group``."""
        out, offset = [], 0
        for seg in layout:
            if seg.group == group:
                out.append((offset, seg.length, seg.mult))
            offset += seg.length * seg.mult
        return out

    def per_channel(self, group: ChannelGroup, per_feature: Mapping[LayerName, torch.Tensor]) -> torch.Tensor:
        """Sum per-input-feature values of the group's consumers onto its channels (float64)."""
        total = torch.zeros(group.channels, dtype=torch.float64)
        for name in group.consumers:
            values = per_feature[name].double().cpu()
            for offset, length, mult in self.channel_slices(self.layer[name].in_layout, group.name):
                total += values[offset:offset + length * mult].view(length, mult).sum(1)
        return total
