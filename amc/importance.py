"""Channel importance criteria: which channels of a group to keep.

Each criterion returns one score per channel of a :class:`~amc.graph.ChannelGroup` (higher =
more important = kept first). Magnitude criteria follow AMC: a channel is ranked by the size of the
weights that *consume* it (its consumers' input slices). Activation criteria use statistics of the
consumers' inputs gathered on calibration batches (:class:`~amc.features.FeatureStats`).
Criteria are small interchangeable classes, looked up by name with :func:`criterion_by_name`.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .errors import AmcError
from .graph import ChannelGroup, PruningGraph


def _per_channel(graph: PruningGraph, group: ChannelGroup, per_feature: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum per-input-feature values of each consumer onto the group's channels."""
    total = torch.zeros(group.channels, dtype=torch.float64)
    for name in group.consumers:
        values = per_feature[name].double()
        for offset, length, mult in graph.feature_to_channel(graph.layer_by_name[name].in_layout, group.space):
            total += values[offset:offset + length * mult].view(length, mult).sum(1)
    return total


class Criterion:
    """Base class: ``scores(graph, group, modules, stats)`` -> tensor of ``group.channels`` scores."""

    name = "base"
    needs_activations = False

    def scores(self, graph: PruningGraph, group: ChannelGroup, modules: Mapping[str, nn.Module],
               stats=None) -> torch.Tensor:
        raise NotImplementedError


class L1Magnitude(Criterion):
    """Sum of absolute consumer weights reading each channel (AMC's default)."""

    name = "l1"
    power = 1

    def scores(self, graph, group, modules, stats=None):
        per_feature = {}
        for name in group.consumers:
            w = modules[name].weight.detach()
            groups = getattr(modules[name], "groups", 1)  # a grouped conv's row o reads group o // (out / groups)
            w = w.abs().pow(self.power).reshape(groups, w.shape[0] // groups, w.shape[1], -1)
            per_feature[name] = w.sum(dim=(1, 3)).flatten()
        return _per_channel(graph, group, per_feature)


class L2Magnitude(L1Magnitude):
    """Euclidean norm of the consumer weights reading each channel."""

    name = "l2"
    power = 2

    def scores(self, graph, group, modules, stats=None):
        return super().scores(graph, group, modules, stats).sqrt()


class APoZ(Criterion):
    """1 - Average Percentage of Zeros of each channel's activation (Hu et al. 2016)."""

    name = "apoz"
    needs_activations = True

    def scores(self, graph, group, modules, stats=None):
        return _per_channel(graph, group, {n: 1 - stats.zero_fraction[n] for n in group.consumers})


class MeanActivation(Criterion):
    """Mean absolute activation of each channel on the calibration batches."""

    name = "mean_activation"
    needs_activations = True

    def scores(self, graph, group, modules, stats=None):
        return _per_channel(graph, group, {n: stats.mean_abs[n] for n in group.consumers})


class RandomImportance(Criterion):
    """Random scores, seeded per group (a baseline)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def scores(self, graph, group, modules, stats=None):
        gen = torch.Generator().manual_seed(self.seed * 100003 + group.index)
        return torch.rand(group.channels, generator=gen, dtype=torch.float64)


CRITERIA = {c.name: c for c in (L1Magnitude, L2Magnitude, APoZ, MeanActivation, RandomImportance)}


def criterion_by_name(name: str, seed: int = 0) -> Criterion:
    if name not in CRITERIA:
        raise AmcError(f"unknown criterion '{name}' (choose {', '.join(CRITERIA)})")
    return CRITERIA[name](seed) if name == "random" else CRITERIA[name]()


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
