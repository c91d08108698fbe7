"""AMC's observation of one channel group: 11 features in [0, 1].

``index`` (t / (T-1)); the group's ``out_channels``, the producer's ``in_channels``, input
``in_height`` / ``in_width``, ``stride`` and ``kernel`` (each min-max scaled over the groups, so a
feature that is the same for every group is 0); ``cost`` (cost that scales with this group / dense),
``reduced`` (cost removed by earlier decisions / dense), ``rest`` (cost later groups can still
scale / dense) and ``previous_action`` (the previous executed preserve ratio; 1 at the first step).
The cost features use the budget's cost model (MACs by default).
"""
from __future__ import annotations

import numpy as np

from amc.cost import Budget, WeightBudget
from amc.structure import GroupName, Keep

FEATURES = ("index", "out_channels", "in_channels", "in_height", "in_width", "stride", "kernel",
            "cost", "reduced", "rest", "previous_action")


def scaled_columns(rows: list[list[float]]) -> np.ndarray:
    """Min-max scale each column to [0, 1] (a column that never changes becomes 0)."""
    raw = np.asarray(rows, dtype=np.float64)
    lo, hi = raw.min(0), raw.max(0)
    return np.where(hi > lo, (raw - lo) / np.where(hi > lo, hi - lo, 1), 0.0)


def layer_shape(graph, layer_name: str, out_channels: int) -> list[float]:
    """``out_channels``, ``in_channels``, ``in_height``, ``in_width``, ``stride``, ``kernel`` of a traced layer."""
    layer = graph.layer[layer_name]
    m = layer.module
    return [out_channels, graph.width(layer.in_layout), layer.in_hw[0], layer.in_hw[1],
            m.stride[0] if hasattr(m, "stride") else 1, m.kernel_size[0] if hasattr(m, "kernel_size") else 1]


class Observer:
    """Computes observations for the groups of ``budget`` (static features once, cost features per step)."""

    def __init__(self, budget: Budget):
        self.budget, self.graph, self.groups = budget, budget.graph, budget.groups
        self.static = scaled_columns([layer_shape(self.graph, g.producers[0], g.channels) for g in self.groups])
        self.scaling = [budget.contribution(g.name) for g in self.groups]

    def __call__(self, t: int, decided: Keep) -> np.ndarray:
        """Observation before deciding group ``t`` given the counts of groups ``0..t-1``."""
        cost, graph, dense = self.budget.cost, self.graph, self.budget.dense
        now = cost.cost(graph, decided)
        later_zero: dict[GroupName, int] = {**decided, **{g.name: 0 for g in self.groups[t:]}}
        reduced = (dense - now) / dense
        rest = (now - cost.cost(graph, later_zero)) / dense
        return observation(t, len(self.groups), self.static[t], self.scaling[t], reduced, rest,
                           self._previous(t, decided))

    def _previous(self, t: int, decided: Keep) -> float:
        return decided[self.groups[t - 1].name] / self.budget.size(self.groups[t - 1].name) if t > 0 else 1.0


class WeightObserver(Observer):
    """The same 11 features for the layers of a :class:`amc.cost.WeightBudget` (``out_channels`` = the
    layer's output channels; cost features in parameters)."""

    def __init__(self, budget: WeightBudget, graph):
        self.budget, self.graph, self.groups = budget, graph, budget.groups
        shapes = [layer_shape(graph, g.name, graph.layer[g.name].module.weight.shape[0]) for g in self.groups]
        self.static = scaled_columns(shapes)
        self.scaling = [budget.contribution(g.name) for g in self.groups]

    def __call__(self, t: int, decided: Keep) -> np.ndarray:
        dense = self.budget.dense
        reduced = sum(self.budget.size(n) - k for n, k in decided.items()) / dense
        rest = sum(g.size for g in self.groups[t:]) / dense
        return observation(t, len(self.groups), self.static[t], self.scaling[t], reduced, rest,
                           self._previous(t, decided))


def observation(t: int, steps: int, static: np.ndarray, scaling: float, reduced: float, rest: float,
                previous: float) -> np.ndarray:
    """The feature vector in :data:`FEATURES` order, clipped to [0, 1]."""
    obs = np.concatenate([[t / max(1, steps - 1)], static, [scaling, reduced, rest, previous]])
    return np.clip(obs, 0.0, 1.0).astype(np.float32)
