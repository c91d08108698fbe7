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

from amc.cost import Budget
from amc.structure import GroupName, Keep

FEATURES = ("index", "out_channels", "in_channels", "in_height", "in_width", "stride", "kernel",
            "cost", "reduced", "rest", "previous_action")


class Observer:
    """Computes observations for the groups of ``budget`` (static features once, cost features per step)."""

    def __init__(self, budget: Budget):
        self.budget, self.graph, self.groups = budget, budget.graph, budget.groups
        rows = []
        for g in self.groups:
            layer = self.graph.layer[g.producers[0]]
            m = layer.module
            rows.append([g.channels, self.graph.width(layer.in_layout), layer.in_hw[0], layer.in_hw[1],
                         m.stride[0] if hasattr(m, "stride") else 1, m.kernel_size[0] if hasattr(m, "kernel_size") else 1])
        raw = np.asarray(rows, dtype=np.float64)
        lo, hi = raw.min(0), raw.max(0)
        self.static = np.where(hi > lo, (raw - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
        self.scaling = [budget.contribution(g.name) for g in self.groups]

    def __call__(self, t: int, decided: Keep) -> np.ndarray:
        """Observation before deciding group ``t`` given the counts of groups ``0..t-1``."""
        cost, graph, dense = self.budget.cost, self.graph, self.budget.dense
        now = cost.cost(graph, decided)
        later_zero: dict[GroupName, int] = {**decided, **{g.name: 0 for g in self.groups[t:]}}
        reduced = (dense - now) / dense
        rest = (now - cost.cost(graph, later_zero)) / dense
        prev = decided[self.groups[t - 1].name] / self.groups[t - 1].channels if t > 0 else 1.0
        index = t / max(1, len(self.groups) - 1)
        obs = np.concatenate([[index], self.static[t], [self.scaling[t], reduced, rest, prev]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)
