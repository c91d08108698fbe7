"""The pruning engine: from per-group channel counts to a compact, recovered model.

:class:`ChannelPruner` holds what stays fixed across the hundreds of prunings of a search: the
dense model, its :class:`~amc.graph.PruningGraph`, the criterion's per-group scores and the
calibration statistics (computed once, lazily). Each :meth:`ChannelPruner.prune` call selects
channels, compacts a copy of the model, optionally reconstructs the consumers by least squares and
recalibrates BatchNorm, and reports the time of each step in seconds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from .compaction import compact
from .errors import AmcError
from .evaluation import recalibrate_batchnorm
from .features import FeatureStats, collect_feature_stats
from .graph import PruningGraph
from .importance import criterion_by_name, top_channels
from .reconstruction import least_squares_weight


@dataclass(frozen=True)
class PruneSettings:
    """How channels are chosen and how the pruned model is recovered.

    criterion: ``l1`` | ``l2`` | ``apoz`` | ``mean_activation`` | ``random``.
    reconstruct: least-squares refit of the consumers of pruned groups.
    bn_batches: calibration batches for BatchNorm recalibration (0 = off).
    points_per_image: sampled conv output positions per image for reconstruction (0 = all).
    ridge: relative ridge term of the least squares.
    """

    criterion: str = "l1"
    reconstruct: bool = True
    bn_batches: int = 10
    batch_size: int = 100
    points_per_image: int = 10
    ridge: float = 1e-4
    seed: int = 0


@dataclass
class PruneResult:
    model: nn.Module
    kept: dict[int, torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)


class ChannelPruner:
    """Prunes ``model`` (never modified) as described by ``graph``.

    Arguments:
        model: the dense model, in eval mode on its device.
        graph: its structure (:class:`PruningGraph`).
        settings: :class:`PruneSettings`.
        calibration: normalised images (N, C, H, W) on the model's device, used for activation
            criteria, reconstruction statistics and BatchNorm recalibration; needed when any is on.
        channels_last: give compact models (and the calibration images) the channels-last memory
            format, faster for convolutions on CPU; results are the same up to float rounding.
    """

    def __init__(self, model: nn.Module, graph: PruningGraph, settings: PruneSettings = PruneSettings(),
                 calibration: torch.Tensor | None = None, channels_last: bool = False):
        self.model = model.eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if calibration is not None and channels_last:
            calibration = calibration.contiguous(memory_format=torch.channels_last)
        self.graph = graph
        self.settings = settings
        self.criterion = criterion_by_name(settings.criterion, settings.seed)
        self.calibration = calibration
        needs_data = settings.reconstruct or settings.bn_batches > 0 or self.criterion.needs_activations
        if needs_data and (calibration is None or len(calibration) == 0):
            raise AmcError("reconstruction, BatchNorm recalibration and activation criteria need calibration images")
        self._stats: FeatureStats | None = None
        self._scores: dict[int, torch.Tensor] = {}
        self.setup_seconds = 0.0

    def _batches(self, limit: int | None = None):
        bs = self.settings.batch_size
        n = len(self.calibration)
        count = (n + bs - 1) // bs if limit is None else min(limit, (n + bs - 1) // bs)
        return (self.calibration[i * bs:(i + 1) * bs] for i in range(count))

    @property
    def stats(self) -> FeatureStats:
        if self._stats is None:
            start = time.perf_counter()
            self._stats = collect_feature_stats(self.model, self.graph, self._batches(), self.settings.points_per_image,
                                                self.settings.seed, with_gram=self.settings.reconstruct)
            self.setup_seconds += time.perf_counter() - start
        return self._stats

    def scores(self, space: int) -> torch.Tensor:
        if space not in self._scores:
            group = self.graph.group_of_space()[space]
            stats = self.stats if self.criterion.needs_activations else None
            self._scores[space] = self.criterion.scores(self.graph, group, dict(self.model.named_modules()), stats)
        return self._scores[space]

    def kept_indices(self, counts: Mapping[int, int]) -> dict[int, torch.Tensor]:
        """Channel indices kept per group space for ``counts`` (space -> kept channels)."""
        groups = self.graph.group_of_space()
        kept = {}
        for space, n in counts.items():
            if n < groups[space].channels:
                kept[space] = top_channels(self.scores(space), n, groups[space].blocks)
        return kept

    def prune(self, counts: Mapping[int, int], kept: Mapping[int, torch.Tensor] | None = None) -> PruneResult:
        """A recovered compact model keeping ``counts[space]`` channels per group (or ``kept`` indices)."""
        timings = {}
        start = time.perf_counter()
        kept = dict(kept) if kept is not None else self.kept_indices(counts)
        small = compact(self.model, self.graph, kept).to(memory_format=self.memory_format)
        timings["prune"] = time.perf_counter() - start
        start = time.perf_counter()
        if self.settings.reconstruct and kept:
            self._reconstruct(small, kept)
        timings["reconstruct"] = time.perf_counter() - start
        start = time.perf_counter()
        if self.settings.bn_batches > 0 and kept:
            recalibrate_batchnorm(small, self._batches(self.settings.bn_batches))
        timings["bn_recalibration"] = time.perf_counter() - start
        return PruneResult(small.eval(), kept, timings)

    def _reconstruct(self, small: nn.Module, kept: Mapping[int, torch.Tensor]) -> None:
        stats = self.stats
        dense = dict(self.model.named_modules())
        modules = dict(small.named_modules())
        touched = {c for space in kept for c in self.graph.group_of_space()[space].consumers}
        for name in touched:
            layer = self.graph.layer_by_name[name]
            in_idx = self.graph.layout_indices(layer.in_layout, kept)
            out_idx = self.graph.layout_indices(layer.out_layout, kept)
            groups = layer.module.groups if layer.kind == "grouped" else 1
            weight = least_squares_weight(dense[name].weight, stats.gram[name], in_idx, self.settings.ridge, groups)
            with torch.no_grad():
                modules[name].weight.copy_(weight.index_select(0, out_idx.to(weight.device)))
