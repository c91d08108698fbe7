"""Cost models (MACs, parameters) and the budget rule that turns a target into channel counts.

A :class:`CostModel` answers two questions: the cost of the model described by a
:class:`~amc.structure.DependencyGraph` when its groups keep ``keep[name]`` channels (used for budgets,
observations and reports, thousands of times per search), and the cost of a real module measured
by running it (used to check compact models). Two are built in:

- :class:`MacsCost` (``"macs"``, alias ``"flops"``): multiply-accumulates of Conv2d and Linear layers
  for one input example, every call counted (a Linear over the last dim of an N-d tensor once per
  position). Bias, BatchNorm, LayerNorm, activations, pooling and additions are not counted;
  ``torch.utils.flop_counter.FlopCounterMode`` reports exactly twice this number (2 FLOPs per MAC).
  The tracer records every conv/linear call, also those it cannot slice, so the accounting covers
  the whole model.
- :class:`ParamsCost` (``"params"``): parameter elements (BatchNorm affine weights included, buffers not).

:class:`amc.latency.LatencyCost` (also importable as ``amc.cost.Latency``) is a third, built from a per-layer
latency table measured on the target (``exact = False``: its estimate is not expected to equal a measurement). :class:`Budget` is the one place a target ratio becomes channel
counts: the reachable floor, AMC's clamp (:meth:`Budget.max_count`) and the uniform bisection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from .errors import AmcError
from .forward_context import attached_hooks, eval_mode
from .latency import LatencyCost as Latency  # noqa: F401  (amc.cost.Latency, beside MacsCost and ParamsCost)
from .ratios import allowed_counts, channels_for_ratio
from .structure import DependencyGraph, GroupName, Keep, Layer
from .unstructured import prunable_layers


@runtime_checkable
class CostModel(Protocol):
    """What a budget can limit. ``exact``: a measured compact model must equal :meth:`cost`."""

    name: str
    definition: str
    exact: bool

    def layer_cost(self, graph: DependencyGraph, layer: Layer, keep: Keep | None = None) -> float:
        """Cost of one layer when groups keep ``keep[name]`` channels (absent: all)."""

    def cost(self, graph: DependencyGraph, keep: Keep | None = None) -> float:
        """Cost of the whole model when groups keep ``keep[name]`` channels (absent: all)."""

    def measure(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        """Cost of a real module, counted by running it on one zero input of ``input_shape``."""


class MacsCost:
    name = "macs"
    definition = ("MACs = multiply-accumulates of Conv2d and Linear layers per input example; bias, BatchNorm, "
                  "activation, pooling and addition ops are not counted (FlopCounterMode reports 2 x MACs)")
    exact = True

    def layer_cost(self, graph: DependencyGraph, layer: Layer, keep: Keep | None = None) -> float:
        return layer.kind.macs(layer.module, graph.width(layer.in_layout, keep), graph.width(layer.out_layout, keep),
                               layer.out_hw)

    def cost(self, graph: DependencyGraph, keep: Keep | None = None) -> float:
        return sum(self.layer_cost(graph, layer, keep) for layer in graph.layers)

    def measure(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        return macs(model, torch.zeros(1, *input_shape))


class ParamsCost:
    name = "params"
    definition = "parameters = parameter elements of the model (BatchNorm affine weights included, buffers not)"
    exact = True

    def layer_cost(self, graph: DependencyGraph, layer: Layer, keep: Keep | None = None) -> float:
        if layer.call > 1:
            return 0  # a module called again: its parameters are counted at its first call
        return layer.kind.params(layer.module, graph.width(layer.in_layout, keep), graph.width(layer.out_layout, keep))

    def cost(self, graph: DependencyGraph, keep: Keep | None = None) -> float:
        return graph.fixed_params + sum(self.layer_cost(graph, layer, keep) for layer in graph.layers)

    def measure(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        return params(model)


COST_MODELS: dict[str, type] = {"macs": MacsCost, "flops": MacsCost, "params": ParamsCost}


def cost_model(name: str | CostModel) -> CostModel:
    """A cost model by name (``macs``, ``flops`` = ``macs``, ``params``), or ``name`` itself if it is one."""
    if not isinstance(name, str):
        return name
    if name == "latency":
        raise AmcError("the latency cost needs a table measured for the model: pass "
                       "amc.latency.LatencyCost(amc.latency.LatencyTable.for_graph(graph)) instead of 'latency'")
    if name not in COST_MODELS:
        raise AmcError(f"unknown cost '{name}' (choose {', '.join(COST_MODELS)})")
    return COST_MODELS[name]()


def macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs of ``model``'s Conv2d and Linear layers for **one** example (``example_input[:1]`` is run).

    Each call counts output elements x inputs per output (a Linear's ``in_features``: right for N-d inputs too).
    """
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        total += output[0].numel() * per_output

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    device = next(model.parameters()).device
    with eval_mode(model), attached_hooks(post=[(m, count) for m in layers]), torch.no_grad():
        model(example_input[:1].to(device))
    return int(total)


def params(model: nn.Module) -> int:
    """Parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())


def check_costs(graph: DependencyGraph, keep: Keep, model: nn.Module, costs: Sequence[CostModel]) -> dict[str, float]:
    """Measure ``model`` with each exact cost model, which must equal its estimate for ``keep``.

    Returns ``{cost name: measured}`` (for a cost model that is not exact, its estimate). A mismatch is an internal error (a pruning bug), raised as
    :class:`AmcError` naming both figures.
    """
    out = {}
    for c in costs:
        if not c.exact:  # an estimate (latency): reported as estimated; measure() is for benchmarks
            out[c.name] = c.cost(graph, keep)
            continue
        measured = c.measure(model, graph.input_shape)
        if c.exact:
            expected = c.cost(graph, keep)
            if measured != expected:
                raise AmcError(f"internal error: the compact model has {measured:.0f} {c.name}, the accounting says "
                               f"{expected:.0f}; please report it")
        out[c.name] = measured
    return out


class BudgetRules:
    """The episode-level budget mapping shared by :class:`Budget` (channels) and :class:`WeightBudget`
    (weights). Needs ``groups`` (with ``.name``), ``target``, ``lbound``, ``rbound``,
    ``count_for(name, ratio)`` and ``ratio(keep)``."""

    def scaled(self, ratios: Mapping[GroupName, float], steps: int = 40) -> tuple[float, dict[GroupName, int]]:
        """The budget-aware mapping: the policy's *shape* is kept and its *scale* meets the budget.

        ``ratios``: a preserve ratio per group (absent groups: 1). Returns ``(alpha, keep)`` with
        ``keep[g] = count_for(g, alpha * ratios[g])`` for the largest ``alpha >= 0`` (found by
        bisection) whose cost is at most ``target`` x dense: every group shrinks (or grows) by the same
        factor, so no group is starved because it comes late, and the budget is spent, not wasted.
        """
        shape = {g.name: max(float(ratios.get(g.name, 1.0)), 1e-6) for g in self.groups}

        def keep_at(alpha: float) -> dict[GroupName, int]:
            return {name: self.count_for(name, alpha * r) for name, r in shape.items()}

        lo, hi = 0.0, self.rbound / min(shape.values())  # alpha = 0: every group at lbound (reachable)
        if self.ratio(keep_at(hi)) <= self.target:
            return hi, keep_at(hi)
        for _ in range(steps):
            mid = (lo + hi) / 2
            if self.ratio(keep_at(mid)) <= self.target:
                lo = mid
            else:
                hi = mid
        return lo, keep_at(lo)

    def uniform(self, steps: int = 40) -> tuple[float, dict[GroupName, int]]:
        """The largest preserve ratio, the same for every group, whose cost is <= target x dense (bisection).

        Returns (ratio, keep).
        """
        ratio, keep = self.scaled({}, steps)
        return max(ratio, self.lbound), keep


class Budget(BudgetRules):
    """The budget rule: which channel counts keep a model's cost at most ``target`` x dense.

    Arguments:
        graph: the model's structure. cost: a :class:`CostModel` (or its name).
        target: fraction of the dense cost that may remain, in (0, 1].
        round_to: kept counts are multiples of this (combined with a group's blocks).
        lbound / rbound: smallest / largest preserve ratio of any group.

    Raises :class:`AmcError` when the target cannot be met even with every group at ``lbound``.
    """

    def __init__(self, graph: DependencyGraph, cost: CostModel | str, target: float, *, round_to: int = 1,
                 lbound: float = 0.2, rbound: float = 1.0):
        if not 0 < target <= 1:
            raise AmcError(f"target must be a fraction of the dense cost in (0, 1], got {target}")
        if not 0 < lbound <= rbound <= 1:
            raise AmcError(f"preserve-ratio bounds must satisfy 0 < lbound <= rbound <= 1, got {lbound}, {rbound}")
        if round_to < 1:
            raise AmcError(f"round_to must be a positive channel count, got {round_to}")
        self.graph, self.cost, self.target = graph, cost_model(cost), target
        self.round_to, self.lbound, self.rbound = round_to, lbound, rbound
        self.groups = graph.prunable
        if not self.groups:
            raise AmcError("the model has no prunable channel groups (see `amc inspect`)")
        self.dense = self.cost.cost(graph)
        self.lowest = {g.name: self.counts(g.name)[0] for g in self.groups}
        self.floor = self.cost.cost(graph, self.lowest) / self.dense
        if self.floor > target + 1e-12:
            raise AmcError(f"{self.cost.name} target {target:.3f} is unreachable: with every prunable group at the "
                           f"lower bound {lbound} the model keeps {self.floor:.3f} of its {self.cost.name} "
                           f"(smallest reachable target: {self.floor:.3f})")

    def counts(self, group: GroupName) -> list[int]:
        """Allowed kept counts of ``group`` within [lbound, rbound], ascending."""
        g = self.graph.group[group]
        step = g.count_step(self.round_to)
        upper = channels_for_ratio(self.rbound, g.channels, step, self.lbound)
        return [c for c in allowed_counts(g.channels, step, self.lbound) if c <= upper]

    def count_for(self, group: GroupName, ratio: float) -> int:
        """The allowed count of ``group`` nearest to ``ratio`` x channels, ratio clipped to [lbound, rbound]."""
        g = self.graph.group[group]
        ratio = min(max(ratio, self.lbound), self.rbound)
        return channels_for_ratio(ratio, g.channels, g.count_step(self.round_to), self.lbound)

    def ratio(self, keep: Keep) -> float:
        """Cost of ``keep`` as a fraction of the dense cost."""
        return self.cost.cost(self.graph, keep) / self.dense

    def max_count(self, group: GroupName, decided: Keep) -> int:
        """AMC's clamp: the largest count of ``group`` that keeps the target reachable.

        ``decided``: counts of the groups decided so far; every other group is assumed at its
        lowest allowed count.
        """
        counts = self.counts(group)
        fixed = {**self.lowest, **decided}
        budget = self.target * self.dense
        lo, hi = 0, len(counts) - 1  # counts[0] always fits: the target was checked reachable
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.cost.cost(self.graph, {**fixed, group: counts[mid]}) <= budget + 1e-6:
                lo = mid
            else:
                hi = mid - 1
        return counts[lo]

    @property
    def cost_name(self) -> str:
        """What the target limits: ``macs``, ``params`` or ``latency``."""
        return self.cost.name

    def size(self, group: GroupName) -> int:
        """Channels of ``group`` (what a preserve ratio is a fraction of)."""
        return self.graph.group[group].channels

    def contribution(self, group: GroupName, keep: Keep | None = None) -> float:
        """Part of the cost (fraction of dense) that scales with ``group``: the cost removed by emptying it."""
        keep = dict(keep or {})
        return (self.cost.cost(self.graph, keep) - self.cost.cost(self.graph, {**keep, group: 0})) / self.dense



@dataclass(frozen=True)
class WeightLayer:
    """A conv/linear layer whose weights are pruned one by one: ``size`` = its weight elements."""

    name: str
    size: int


class WeightBudget(BudgetRules):
    """The budget rule for unstructured pruning: kept weight counts per prunable conv/linear layer.

    Cost = parameters that remain non-zero: every parameter outside the pruned weights (biases,
    BatchNorm, ``keep_dense`` layers) plus the kept weights. ``target``: fraction of the dense
    parameters that may remain, in (0, 1]; ``lbound`` / ``rbound``: smallest / largest fraction of a
    layer's weights kept (preserve ratio = 1 - sparsity). Counts are whole weights, at least one.
    Raises :class:`AmcError` when the target cannot be met with every layer at ``lbound``.
    """

    cost_name = "params"

    def __init__(self, model: nn.Module, target: float, *, lbound: float = 0.2, rbound: float = 1.0,
                 keep_dense: Sequence[str] = ()):
        if not 0 < target <= 1:
            raise AmcError(f"target must be a fraction of the dense parameters in (0, 1], got {target}")
        if not 0 < lbound <= rbound <= 1:
            raise AmcError(f"preserve-ratio bounds must satisfy 0 < lbound <= rbound <= 1, got {lbound}, {rbound}")
        self.target, self.lbound, self.rbound = target, lbound, rbound
        self.groups = [WeightLayer(n, m.weight.numel()) for n, m in prunable_layers(model, keep_dense).items()]
        if not self.groups:
            raise AmcError("the model has no prunable conv or linear layers")
        self._size = {g.name: g.size for g in self.groups}
        self.dense = float(params(model))
        self.fixed = self.dense - sum(self._size.values())
        self.lowest = {g.name: self.count_for(g.name, lbound) for g in self.groups}
        self.floor = self.ratio(self.lowest)
        if self.floor > target + 1e-12:
            raise AmcError(f"params target {target:.3f} is unreachable: with every prunable layer at the lower bound "
                           f"{lbound} the model keeps {self.floor:.3f} of its parameters (smallest reachable target: "
                           f"{self.floor:.3f}; lower --lbound)")

    def size(self, layer: str) -> int:
        return self._size[layer]

    def count_for(self, layer: str, ratio: float) -> int:
        """Kept weights of ``layer`` nearest to ``ratio`` x its size, ratio clipped to [lbound, rbound]."""
        n = self._size[layer]
        ratio = min(max(ratio, self.lbound), self.rbound)
        return min(max(round(ratio * n), math.ceil(self.lbound * n - 1e-9), 1), max(1, math.floor(self.rbound * n + 1e-9)))

    def ratio(self, keep: Keep) -> float:
        """Parameters left by ``keep`` (absent layers: dense) as a fraction of the dense parameters."""
        return (self.fixed + sum(keep.get(n, s) for n, s in self._size.items())) / self.dense

    def max_count(self, layer: str, decided: Keep) -> int:
        """AMC's clamp: the most weights ``layer`` may keep so that every later layer at ``lbound`` still fits."""
        others = {**self.lowest, **decided}
        room = self.target * self.dense - self.fixed - sum(v for n, v in others.items() if n != layer)
        upper = self.count_for(layer, self.rbound)
        return int(min(upper, max(self.lowest[layer], math.floor(room + 1e-6))))

    def contribution(self, layer: str, keep: Keep | None = None) -> float:
        """Part of the parameters (fraction of dense) that scales with ``layer``."""
        return (keep or {}).get(layer, self._size[layer]) / self.dense
