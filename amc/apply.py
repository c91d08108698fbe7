"""Applying a policy: the one path from a policy file to a pruned, recovered model.

The CLI (``amc apply``), the demo, the search's episodes and the benchmarks all call
:func:`apply_policy`, so the model a policy rebuilds is the model that was scored: the same kept
channel indices, the same recovery settings (the policy's :class:`~amc.config.PruneConfig`) and,
with :func:`calibration_for`, the same calibration images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .calibration import CalibrationSet
from .config import DataConfig, PruneConfig
from .cost import MacsCost, ParamsCost, check_costs
from .data import ImageSet, load_splits, normalization
from .errors import AmcError
from .policy import Policy
from .prune import PruningEngine
from .selection import Selection
from .stats_cache import StatsCache
from .structure import DependencyGraph, trace


@dataclass
class AppliedPolicy:
    """The pruned model (``model``, a new module; the input model is untouched) and what was measured.

    ``costs``: {"macs": (dense, pruned), "params": (dense, pruned)}; ``timings``: seconds per step.
    """

    model: nn.Module
    policy: Policy
    selection: Selection
    graph: DependencyGraph
    costs: dict[str, tuple[float, float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def calibration_for(policy: Policy, *, data: DataConfig | None = None, device: str = "cpu",
                    train: ImageSet | None = None) -> CalibrationSet:
    """The calibration images ``policy`` was scored with, redrawn from its recorded data split.

    ``data``: the policy's :class:`~amc.config.DataConfig` with another ``data_dir`` (the same images
    in another place); by default the recorded one. ``train``: that data's training split, already loaded
    (callers rebuilding many policies of one search read it once).
    """
    data = data or policy.data
    if data is None:
        raise AmcError("the policy records no data split; give the calibration images yourself")
    if train is None:
        train = load_splits(data, ("train",), num_classes=int(policy.model.get("num_classes", 10)),
                            image_size=int(policy.input_shape[-1]))["train"]
    return CalibrationSet.draw(train, normalization(data), policy.calibration, device)


def apply_policy(model: nn.Module, policy: Policy, *, calibration: CalibrationSet | torch.Tensor | None = None,
                 prune: PruneConfig | None = None, graph: DependencyGraph | None = None, verify: bool = True,
                 force: bool = False, cache: StatsCache | None = None) -> AppliedPolicy:
    """Prune ``model`` as ``policy`` says and recover it; returns an :class:`AppliedPolicy` (``.model``).

    Arguments:
        model: the dense model the policy was made for (its weights are read, never changed).
        policy: a :class:`~amc.policy.Policy` (``Policy.load(path)``).
        calibration: images for reconstruction and BatchNorm recalibration: a
            :class:`~amc.calibration.CalibrationSet` (``calibration_for(policy)`` redraws the
            scored ones) or a normalised image tensor. Required when the recovery settings use them.
        prune: recovery settings to use instead of the policy's recorded ones.
        graph: the model's traced structure, if already at hand.
        verify: check that the pruned model's measured MACs and params equal the accounting.
        force: accept a model whose layer shapes differ outside the policy's groups.
        cache: a :class:`~amc.stats_cache.StatsCache` for the dense model's calibration statistics, so that
            applying many policies to one model gathers them once (same statistics as without it).
    """
    if isinstance(calibration, torch.Tensor):
        calibration = CalibrationSet(calibration, None, policy.calibration.batch_size)
    device = next(model.parameters()).device
    if calibration is not None:
        calibration = calibration.to(device)
    graph = graph or trace(model, policy.input_shape, policy.model.get("exclude", ()))
    keep = policy.keep(graph, force=force)
    engine = PruningEngine(model, graph, prune or policy.prune, calibration, cache)
    result = engine.prune_keep(keep, policy.kept())
    costs = {}
    if verify:
        checkers = [MacsCost(), ParamsCost()]
        measured = check_costs(graph, result.selection.keep(), result.model, checkers)
        costs = {c.name: (c.cost(graph), measured[c.name]) for c in checkers}
    return AppliedPolicy(result.model, policy, result.selection, graph, costs, {**result.timings,
                                                                                "setup": engine.setup_seconds})
