"""Sensitivity analysis: how much each channel group (or layer) can be pruned alone, and a policy from it.

:func:`sensitivity` prunes one channel group (``granularity="channel"``: to preserve ratio
``1 - level`` with :class:`~amc.prune.ChannelPruner`, criterion scores, no reconstruction) or one
conv/linear layer (``granularity="weight"``: magnitude pruning to sparsity ``level``) at a time,
leaving everything else dense, and scores the result with ``score_fn(model) -> float`` (higher =
better: accuracy on a held-out split, or any metric the user brings). Units: for channels,
``level`` is the fraction of the group's channels **removed** (preserve ratio = 1 - level); for
weights, ``level`` is the sparsity (fraction of the layer's weights removed). The result is a tidy
:class:`pandas.DataFrame`, one row per (name, level).

:func:`allocate` turns the curves into a :class:`~amc.policy.Policy`: each name gets the largest
level whose score drop (and that of every smaller level) stays within ``tolerance``; then all levels
are scaled by one multiplier ``m`` found by bisection, the smallest whose cost is at most
``target`` x dense (MACs or params for channels, parameters for weights). For ``m <= 1`` each level
stays at or below its tolerated level (``metrics["tolerance_respected"]``); for ``m`` in (1, 2]
every level moves from its tolerated level towards the largest analysed level, in proportion.
:func:`plot_sensitivity` draws score vs level per name (matplotlib, Agg, no global state).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from .api import example_shape
from .calibration import CalibrationSet
from .config import PruneConfig
from .cost import cost_model
from .errors import AmcError
from .forward_context import eval_mode
from .io import atomic_write
from .policy import Policy
from .prune import PruningEngine, fold_masks
from .ratios import channels_for_ratio
from .structure import DependencyGraph, trace
from .unstructured import _smallest, copy_model, prunable_layers

COLUMNS = ["name", "granularity", "level", "executed_level", "size", "score", "baseline_score", "drop"]
GRANULARITIES = ("channel", "weight")


def _check_levels(levels: Sequence[float]) -> list[float]:
    levels = [float(v) for v in levels]
    if not levels:
        raise AmcError("give at least one level")
    bad = [v for v in levels if not (math.isfinite(v) and 0 <= v < 1)]
    if bad:
        raise AmcError(f"levels must be fractions removed in [0, 1), got {bad[0]}")
    return sorted(set(levels))


def sensitivity(model: nn.Module, example_input: torch.Tensor | Sequence[int], score_fn: Callable[[nn.Module], float],
                levels: Sequence[float], granularity: str = "channel", *, criterion: str = "l1",
                calibration: CalibrationSet | None = None, exclude: Sequence[str] = (), keep_dense: Sequence[str] = (),
                graph: DependencyGraph | None = None,
                progress: Callable[[str, float], None] | None = None) -> pd.DataFrame:
    """Score ``model`` with each channel group (or conv/linear layer) alone pruned to each of ``levels``.

    Arguments:
        model: the dense model (never modified).
        example_input: a batch (N, C, H, W) or one example's shape (C, H, W).
        score_fn: ``score_fn(pruned model) -> float``, higher = better (e.g. search-split top-1).
        levels: fractions removed in [0, 1): of a group's channels (channel) or of a layer's weights (weight).
        granularity: ``channel`` or ``weight``.
        criterion: channel criterion (``l1``, ``l2``, ``apoz``, ``taylor``, ...); activation and
            gradient criteria need ``calibration``.
        exclude: glob patterns of layers whose channel groups are not analysed (channel).
        keep_dense: glob patterns of layers not analysed (weight).
        progress: called with (name, level) before each scoring.

    Returns a DataFrame with columns ``name``, ``granularity``, ``level``, ``executed_level``
    (fraction actually removed after rounding to whole channels / weights), ``size`` (channels or
    weights), ``score``, ``baseline_score`` (the dense model's) and ``drop`` (baseline - score).
    """
    if granularity not in GRANULARITIES:
        raise AmcError(f"unknown granularity '{granularity}' (choose channel or weight)")
    levels = _check_levels(levels)
    with eval_mode(model):  # the dense model and the copies scored; its modes are restored after
        baseline = float(score_fn(model))
        rows = []

        def row(name, level, executed, size, score):
            rows.append({"name": name, "granularity": granularity, "level": level, "executed_level": executed,
                         "size": size, "score": float(score), "baseline_score": baseline,
                         "drop": baseline - float(score)})

        if granularity == "channel":
            graph = graph or trace(model, example_shape(example_input), exclude)
            if not graph.prunable:
                raise AmcError("the model has no prunable channel groups (see `amc inspect`)")
            cfg = PruneConfig(criterion=criterion, reconstruct=False, bn_batches=0, channels_last=False)
            engine = PruningEngine(model, graph, cfg, calibration)
            for g in graph.prunable:
                for level in levels:
                    n = channels_for_ratio(1 - level, g.channels, g.blocks)
                    if progress:
                        progress(g.name, level)
                    pruned = engine.prune_keep({g.name: n}).model
                    row(g.name, level, 1 - n / g.channels, g.channels, score_fn(pruned))
        else:
            work = fold_masks(copy_model(model)).eval()
            layers = prunable_layers(work, keep_dense)
            for name, module in layers.items():
                original = module.weight.detach().clone()
                try:
                    for level in levels:
                        count = round(level * original.numel())
                        with torch.no_grad():
                            mask = _smallest(original.abs().flatten(), count).view_as(original)
                            module.weight.copy_(original * mask)
                        if progress:
                            progress(name, level)
                        row(name, level, count / original.numel(), original.numel(), score_fn(work))
                finally:
                    with torch.no_grad():
                        module.weight.copy_(original)
    return pd.DataFrame(rows, columns=COLUMNS)


def tolerated_levels(curves: pd.DataFrame, tolerance: float) -> dict[str, float]:
    """Per name, the largest level such that it and every smaller analysed level drop the score by at most ``tolerance``."""
    out = {}
    for name, part in curves.groupby("name", sort=False):
        best = 0.0
        for level, drop in sorted(zip(part["level"], part["drop"])):
            if drop > tolerance:
                break
            best = float(level)
        out[str(name)] = best
    return out


def _bisect(cost_ratio: Callable[[float], float], target: float, what: str) -> float:
    """The smallest multiplier in [0, 2] with ``cost_ratio(m) <= target`` (non-increasing in m)."""
    if cost_ratio(0.0) <= target:
        return 0.0
    if cost_ratio(2.0) > target + 1e-12:
        raise AmcError(f"{what} target {target:.4f} is unreachable within the analysed levels: at the largest of "
                       f"them the model keeps {cost_ratio(2.0):.4f} (analyse larger levels or raise the target)")
    lo, hi = 0.0, 2.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if cost_ratio(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def allocate(curves: pd.DataFrame, target: float, tolerance: float, *, model: nn.Module,
             example_input: torch.Tensor | Sequence[int] | None = None, cost: str | None = None,
             exclude: Sequence[str] = (), keep_dense: Sequence[str] = (), max_level: float | None = None,
             model_spec: dict | None = None, prune: PruneConfig = PruneConfig(),
             graph: DependencyGraph | None = None) -> Policy:
    """A policy from sensitivity ``curves`` (:func:`sensitivity`'s DataFrame) that meets a cost budget.

    ``target``: fraction of the dense cost to keep, in (0, 1] (MACs or ``cost="params"`` for channel
    curves; parameters, counting removed weights as gone, for weight curves). ``tolerance``: largest
    acceptable score drop (in ``score`` units) of one name pruned alone. ``max_level``: largest level
    any name may get (default: the largest analysed). ``model`` / ``example_input``: the analysed
    model (channel curves need the input shape). ``prune``: recovery settings recorded in a channel
    policy (used by ``amc apply``). The policy's ``metrics`` hold the multiplier, whether the tolerance
    was respected, the cost ratio and the tolerated level per name.
    """
    if not isinstance(curves, pd.DataFrame) or curves.empty or not set(COLUMNS) <= set(curves.columns):
        raise AmcError(f"curves must be a non-empty DataFrame from amc.sensitivity (columns {', '.join(COLUMNS)})")
    if not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise AmcError(f"target must be a fraction of the dense cost in (0, 1], got {target}")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise AmcError(f"tolerance must be a score drop >= 0, got {tolerance}")
    kinds = set(curves["granularity"])
    if len(kinds) != 1 or not kinds <= set(GRANULARITIES):
        raise AmcError(f"curves mix or lack granularities: {sorted(map(str, kinds))}")
    granularity = kinds.pop()
    tolerated = tolerated_levels(curves, tolerance)
    cap = float(curves["level"].max()) if max_level is None else float(max_level)
    if not 0 <= cap < 1:
        raise AmcError(f"max_level must be a fraction removed in [0, 1), got {cap}")

    def level(name: str, m: float) -> float:
        base = min(tolerated.get(name, 0.0), cap)
        return base * m if m <= 1 else base + (m - 1) * (cap - base)

    spec = {**(model_spec or {"name": type(model).__name__}), "exclude": list(exclude)}
    metrics = {"method": "sensitivity", "target": target, "tolerance": tolerance, "tolerated_levels": tolerated}
    if granularity == "channel":
        if graph is None:
            if example_input is None:
                raise AmcError("channel curves need the model's example_input (or graph) to count MACs")
            graph = trace(model, example_shape(example_input), exclude)
        costs = cost_model(cost or "macs")
        unknown = [n for n in tolerated if n not in graph.group or not graph.group[n].prunable]
        if unknown:
            raise AmcError(f"curves name channel groups the model lacks or cannot prune: {', '.join(unknown[:5])}")
        dense = costs.cost(graph)

        def keep(m: float) -> dict[str, int]:
            return {g.name: channels_for_ratio(1 - level(g.name, m), g.channels, g.blocks) for g in graph.prunable}

        m = _bisect(lambda m: costs.cost(graph, keep(m)) / dense, target, costs.name)
        final = keep(m)
        ratio = costs.cost(graph, final) / dense
        return Policy.build(graph, final, model=spec, requested={g.name: 1 - level(g.name, m) for g in graph.prunable},
                            cost={"name": costs.name, "definition": costs.definition}, prune=prune,
                            metrics={**metrics, "multiplier": m, "tolerance_respected": m <= 1,
                                     f"{costs.name}_ratio": ratio})
    if cost not in (None, "params"):
        raise AmcError(f"weight curves are budgeted in parameters, not {cost}")
    layers = prunable_layers(model, keep_dense)
    unknown = [n for n in tolerated if n not in layers]
    if unknown:
        raise AmcError(f"curves name layers that are not prunable conv/linear layers of the model: {', '.join(unknown[:5])}")
    sizes = {n: m.weight.numel() if not hasattr(m, "weight_orig") else m.weight_orig.numel() for n, m in layers.items()}
    total = sum(p.numel() for p in model.parameters())

    def sparsity(n: str, m: float) -> float:
        return round(level(n, m), 6)  # as the policy file records it

    def ratio_at(m: float) -> float:
        return (total - sum(round(sparsity(n, m) * sizes[n]) for n in sizes)) / total

    m = _bisect(ratio_at, target, "params")
    sparsities = {n: sparsity(n, m) for n in layers}
    shape = list(example_shape(example_input)) if example_input is not None else list((model_spec or {}).get("input_shape", []))
    return Policy.for_weights(sparsities, model=spec, input_shape=shape,
                              cost={"name": "params", "definition": "non-zero parameter elements (pruned weights "
                                    "count as removed)"},
                              metrics={**metrics, "multiplier": m, "tolerance_respected": m <= 1,
                                       "params_ratio": ratio_at(m)})


def plot_sensitivity(curves: pd.DataFrame, path: str | Path, *, title: str | None = None) -> None:
    """Write a PNG of score vs level, one line per name, the dense score dashed (atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    if curves.empty:
        raise AmcError("nothing to plot: the sensitivity curves are empty")
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, part in curves.groupby("name", sort=False):
        part = part.sort_values("level")
        ax.plot(part["level"], part["score"], marker="o", markersize=3, linewidth=1, label=str(name))
    ax.axhline(float(curves["baseline_score"].iloc[0]), color="black", linestyle="--", linewidth=1, label="dense")
    kind = curves["granularity"].iloc[0]
    ax.set_xlabel("fraction of channels removed (1 - preserve ratio)" if kind == "channel"
                  else "sparsity (fraction of weights removed)")
    ax.set_ylabel("score")
    ax.set_title(title or f"{kind} sensitivity")
    names = curves["name"].nunique()
    if names <= 30:
        ax.legend(fontsize=6, ncol=max(1, names // 15), loc="lower left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
