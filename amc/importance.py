"""Channel importance criteria: which channels of a group to keep.

A criterion is a small class with a ``name``, the calibration statistics it ``needs`` and
``channel_scores(ctx, group)``, one score per channel of the group (higher = kept first).
Magnitude criteria follow AMC: a channel is ranked by the weights that *consume* it (its consumers'
input slices). Activation criteria use statistics of the consumers' inputs on calibration batches;
Taylor uses activation x gradient. Add one by subclassing :class:`Criterion` and decorating it with
:func:`register_criterion`; :func:`criterion` looks one up by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from .calibration import CalibrationStats, Needs
from .errors import AmcError
from .structure import ChannelGroup, DependencyGraph


@dataclass
class ScoringContext:
    """What criteria may read: the graph, the dense model's modules, calibration statistics, a seed."""

    graph: DependencyGraph
    modules: Mapping[str, nn.Module]
    stats: CalibrationStats | None = None
    seed: int = 0


class Criterion:
    """Base class. ``needs``: the calibration statistics :meth:`channel_scores` reads."""

    name = "base"
    needs = Needs.WEIGHTS

    def channel_scores(self, ctx: ScoringContext, group: ChannelGroup) -> torch.Tensor:
        """(channels,) float64 scores; higher = more important."""
        raise NotImplementedError


CRITERIA: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator adding a criterion to the registry under ``cls.name``."""
    if cls.name in CRITERIA:
        raise AmcError(f"a criterion named '{cls.name}' is already registered")
    CRITERIA[cls.name] = cls
    return cls


def criterion(name: str) -> Criterion:
    """A criterion by name (``l1``, ``l2``, ``apoz``, ``mean_activation``, ``taylor``, ``random``)."""
    if name not in CRITERIA:
        raise AmcError(f"unknown criterion '{name}' (choose {', '.join(CRITERIA)})")
    return CRITERIA[name]()


@register_criterion
class L1Magnitude(Criterion):
    """Sum of absolute consumer weights reading each channel (AMC's default)."""

    name = "l1"
    power = 1

    def channel_scores(self, ctx, group):
        per_feature = {n: ctx.graph.layer[n].kind.input_importance(ctx.modules[n], self.power) for n in group.consumers}
        return ctx.graph.per_channel(group, per_feature)


@register_criterion
class L2Magnitude(L1Magnitude):
    """Euclidean norm of the consumer weights reading each channel."""

    name = "l2"
    power = 2

    def channel_scores(self, ctx, group):
        return super().channel_scores(ctx, group).sqrt()


class FeatureStatistic(Criterion):
    """A criterion that scores channels by a per-input-feature calibration statistic of the consumers."""

    def feature_values(self, stats: CalibrationStats, consumer: str) -> torch.Tensor:
        raise NotImplementedError

    def channel_scores(self, ctx, group):
        return ctx.graph.per_channel(group, {n: self.feature_values(ctx.stats, n) for n in group.consumers})


@register_criterion
class APoZ(FeatureStatistic):
    """1 - Average Percentage of Zeros of each channel's activation (Hu et al. 2016)."""

    name = "apoz"
    needs = Needs.ACTIVATIONS

    def feature_values(self, stats, consumer):
        return 1 - stats.zero_fraction[consumer]


@register_criterion
class MeanActivation(FeatureStatistic):
    """Mean absolute activation of each channel on the calibration batches."""

    name = "mean_activation"
    needs = Needs.ACTIVATIONS

    def feature_values(self, stats, consumer):
        return stats.mean_abs[consumer]


@register_criterion
class Taylor(FeatureStatistic):
    """First-order Taylor expansion of the loss: |activation x gradient| per channel (Molchanov et al. 2017)."""

    name = "taylor"
    needs = Needs.GRADIENTS

    def feature_values(self, stats, consumer):
        return stats.taylor[consumer]


@register_criterion
class RandomImportance(Criterion):
    """Random scores, seeded per group (a baseline)."""

    name = "random"
    needs = Needs.NOTHING

    def channel_scores(self, ctx, group):
        gen = torch.Generator().manual_seed(ctx.seed * 100003 + group.index)
        return torch.rand(group.channels, generator=gen, dtype=torch.float64)
