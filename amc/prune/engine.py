"""The pruning engine: from kept channel counts to a pruned, recovered model, hundreds of times.

:class:`PruningEngine` holds what stays fixed across the prunings of one dense model: the model,
its :class:`~amc.structure.DependencyGraph`, the :class:`~amc.config.PruneConfig`, the calibration
images, the calibration statistics and the criterion's per-group scores (both computed once,
lazily). :meth:`PruningEngine.select` turns counts into a :class:`~amc.selection.Selection`;
:meth:`PruningEngine.prune` executes it with a pruner (physical channel removal, or masks for
``granularity="weight"``), reconstructs by least squares (the consumers of pruned groups on the dense
model's inputs, or every layer in forward order on the pruned model's own inputs: ``cfg.reconstruction``)
and recalibrates BatchNorm, reporting the seconds of each step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from ..calibration import CalibrationSet, CalibrationStats, Needs, collect_stats
from ..config import PruneConfig
from ..errors import AmcError
from ..importance import ScoringContext, criterion
from ..selection import Selection, top_channels
from ..stats_cache import StatsCache
from ..structure import DependencyGraph, GroupName, Keep
from .channel import ChannelPruner
from .mask import MaskPruner
from .recovery import (LayerTarget, batchnorms_after, dense_targets, reconstruct, reconstruct_sequentially,
                       recalibrate_batchnorm, refittable_layers)


def needs_calibration(cfg: PruneConfig) -> bool:
    """Whether pruning as ``cfg`` says needs calibration images (data criteria, least squares, BN recalibration)."""
    data_criterion = bool(criterion(cfg.criterion).needs & (Needs.ACTIVATIONS | Needs.GRADIENTS))
    return data_criterion or (cfg.reconstruct and cfg.granularity == "channel") or cfg.recalibration_batches > 0


@dataclass
class PruneResult:
    """A pruned model, the selection it executes and the seconds of each step
    (``prune``: selection + slicing, ``reconstruct``, ``bn_recalibration``)."""

    model: nn.Module
    selection: Selection
    timings: dict[str, float] = field(default_factory=dict)


class PruningEngine:
    """Prunes ``model`` (never modified) as ``cfg`` says.

    Arguments:
        model: the dense model, on the device the pruned models should live on.
        graph: its structure (:func:`amc.structure.trace`).
        cfg: :class:`~amc.config.PruneConfig`.
        calibration: images for activation/gradient criteria, least squares and BatchNorm
            recalibration; required when ``cfg`` uses any of them (an :class:`AmcError` otherwise).
        cache: where calibration statistics are kept between engines of the same model and images
            (:class:`~amc.stats_cache.StatsCache`); None gathers them afresh.
    """

    def __init__(self, model: nn.Module, graph: DependencyGraph, cfg: PruneConfig = PruneConfig(),
                 calibration: CalibrationSet | None = None, cache: StatsCache | None = None):
        if cfg.granularity not in ("channel", "weight"):
            raise AmcError(f"unknown granularity '{cfg.granularity}' (choose channel or weight)")
        if cfg.recalibration_batches < 0 or cfg.points_per_image < 0 or not cfg.ridge >= 0:
            raise AmcError(f"bn_batches, points_per_image and ridge must be >= 0, got {cfg}")
        if cfg.bn_scope not in ("all", "reconstructed"):
            raise AmcError(f"unknown bn_scope '{cfg.bn_scope}' (choose all or reconstructed)")
        if cfg.reconstruction not in ("consumers", "sequential"):
            raise AmcError(f"unknown reconstruction '{cfg.reconstruction}' (choose consumers or sequential)")
        if cfg.sequential and cfg.bn_scope != "all":
            raise AmcError("bn_scope 'reconstructed' needs reconstruction 'consumers': sequential least squares "
                           "re-estimates every BatchNorm in its pass")
        self.model, self.graph, self.cfg = model, graph, cfg
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.criterion = criterion(cfg.criterion)
        self.reconstructs = cfg.reconstruct and cfg.granularity == "channel"
        self.sequential = cfg.sequential
        gram = self.reconstructs and not self.sequential
        self.needs = self.criterion.needs | (Needs.GRAM if gram else Needs.NOTHING)
        if needs_calibration(cfg) and (calibration is None or len(calibration) == 0):
            raise AmcError("least-squares reconstruction, BatchNorm recalibration and activation or gradient criteria "
                           "need calibration images (give data, or turn reconstruction and recalibration off)")
        if calibration is not None and cfg.channels_last and calibration.images.dim() == 4:
            calibration = calibration.to(calibration.images.device, torch.channels_last)
        self.calibration = calibration
        self.pruner = ChannelPruner(graph) if cfg.granularity == "channel" else MaskPruner(graph)
        self._stats: CalibrationStats | None = None
        self.cache = cache
        self._scores: dict[GroupName, torch.Tensor] = {}
        self._bn_after: dict[str, str] | None = None
        self._targets: dict[str, LayerTarget] | None = None
        self.setup_seconds = 0.0

    @property
    def stats(self) -> CalibrationStats:
        """Calibration statistics of the dense model (gathered on first use)."""
        if self._stats is None:
            start = time.perf_counter()
            key = None
            if self.cache is not None and self.calibration is not None:
                key = self.cache.stats_key(self.model, self.calibration, {
                    "needs": self.needs.value, "points_per_image": self.cfg.points_per_image, "seed": self.cfg.seed,
                    "consumers": sorted({c for g in self.graph.prunable for c in g.consumers})})
                self._stats = self.cache.load_stats(key)
            if self._stats is None:
                self._stats = collect_stats(self.model, self.graph, self.calibration, self.needs,
                                            points_per_image=self.cfg.points_per_image, seed=self.cfg.seed)
                if key is not None:
                    self.cache.save_stats(key, self._stats)
            self.setup_seconds += time.perf_counter() - start
        return self._stats

    @property
    def targets(self) -> dict[str, LayerTarget]:
        """The dense layers' outputs that sequential least squares reproduces (computed on first use)."""
        if self._targets is None:
            start = time.perf_counter()
            self._targets = dense_targets(self.model, refittable_layers(self.model, self.graph), self.calibration.images,
                                          self.cfg.points_per_image, self.cfg.seed)
            self.setup_seconds += time.perf_counter() - start
        return self._targets

    def batchnorms_to_recalibrate(self, refitted: set[str]) -> list[str] | None:
        """None (all) for ``bn_scope="all"``; else the BatchNorms right after the ``refitted`` layers."""
        if self.cfg.bn_scope == "all" or not self.reconstructs:
            return None
        if self._bn_after is None:
            self._bn_after = batchnorms_after(self.model, self.calibration.images[:1])
        return [bn for bn, producer in self._bn_after.items() if producer in refitted]

    def scores(self, group: GroupName) -> torch.Tensor:
        """The criterion's score of each channel of ``group`` (cached)."""
        if group not in self._scores:
            needs_stats = self.criterion.needs & (Needs.ACTIVATIONS | Needs.GRADIENTS)
            ctx = ScoringContext(self.graph, dict(self.model.named_modules()), self.stats if needs_stats else None,
                                 self.cfg.seed)
            self._scores[group] = self.criterion.channel_scores(ctx, self.graph.group[group])
        return self._scores[group]

    def select(self, keep: Keep, recorded: Mapping[GroupName, torch.Tensor] | None = None) -> Selection:
        """Kept channel indices for ``keep`` (group name -> count); absent groups keep all.

        ``recorded``: indices chosen earlier (a policy's ``kept_indices``); for a group that has
        them they are used instead of the criterion, and must number ``keep[name]``.
        """
        kept = {}
        for name, n in keep.items():
            g = self.graph.group.get(name)
            if g is None:
                raise AmcError(f"unknown channel group '{name}'")
            if n >= g.channels:
                continue
            if recorded and name in recorded:
                if len(recorded[name]) != n:
                    raise AmcError(f"group '{name}': {len(recorded[name])} recorded channel indices for {n} kept channels")
                kept[name] = torch.as_tensor(recorded[name], dtype=torch.long).sort().values
            else:
                kept[name] = top_channels(self.scores(name), n, g.blocks)
        return Selection(kept)

    def prune(self, selection: Selection) -> PruneResult:
        """A pruned copy of the dense model executing ``selection``, recovered as the config says."""
        timings = {}
        start = time.perf_counter()
        small = self.pruner.apply(self.model, selection).to(memory_format=self.memory_format)
        timings["prune"] = time.perf_counter() - start
        start = time.perf_counter()
        refitted: set[str] = set()
        if self.sequential and selection.kept:
            refitted = set(reconstruct_sequentially(small, self.graph, selection.sorted().kept, self.targets,
                                                    self.calibration.images, self.cfg.ridge, self.cfg.solve_precision))
        elif self.reconstructs and selection.kept:
            reconstruct(small, dict(self.model.named_modules()), self.graph, selection.sorted().kept, self.stats.gram,
                        self.cfg.ridge)
            refitted = {c for name in selection.kept for c in self.graph.group[name].consumers}
        timings["reconstruct"] = time.perf_counter() - start
        start = time.perf_counter()
        if self.cfg.recalibration_batches > 0 and (selection.kept or selection.masks):
            recalibrate_batchnorm(small, (x for x, _ in self.calibration.batches(self.cfg.recalibration_batches)),
                                  self.batchnorms_to_recalibrate(refitted))
        timings["bn_recalibration"] = time.perf_counter() - start
        return PruneResult(small.eval(), selection, timings)

    def prune_keep(self, keep: Keep, recorded: Mapping[GroupName, torch.Tensor] | None = None) -> PruneResult:
        """:meth:`select` then :meth:`prune`, timed together as ``prune``."""
        start = time.perf_counter()
        selection = self.select(keep, recorded)
        picked = time.perf_counter() - start
        result = self.prune(selection)
        result.timings["prune"] += picked
        return result
