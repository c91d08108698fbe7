"""Library entry points that need no configuration objects: inspect a model, make a uniform policy."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import PruneConfig
from .cost import Budget, CostModel, cost_model
from .errors import AmcError
from .policy import Policy
from .structure import ChannelGroup, DependencyGraph, trace


def example_shape(example_input: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    """One example's shape (C, H, W) from a batch (N, C, H, W) or from a shape."""
    if isinstance(example_input, torch.Tensor):
        if example_input.dim() < 2:
            raise AmcError(f"example_input must be a batch (N, C, ...), got shape {tuple(example_input.shape)}")
        return tuple(example_input.shape[1:])
    return tuple(int(s) for s in example_input)


def inspect(model: nn.Module, example_input: torch.Tensor | Sequence[int], exclude: Sequence[str] = ()) -> list[ChannelGroup]:
    """The model's channel groups in forward order (``name``, ``channels``, ``prunable``, ``reason``, ...).

    ``example_input``: a batch (N, C, H, W) or one example's shape (C, H, W).
    """
    return trace(model, example_shape(example_input), exclude).groups


def uniform_policy(model: nn.Module, example_input: torch.Tensor | Sequence[int], target: float,
                   cost: str | CostModel = "macs", *, round_to: int = 1, lbound: float = 0.2,
                   exclude: Sequence[str] = (), prune: PruneConfig = PruneConfig(), model_spec: dict | None = None,
                   graph: DependencyGraph | None = None) -> Policy:
    """The same preserve ratio for every prunable group, the largest whose cost is <= ``target`` x dense.

    ``target``: fraction of the dense cost to keep, in (0, 1]. ``cost``: ``macs`` | ``params`` or a
    :class:`~amc.cost.CostModel`. ``prune``: recovery settings recorded in the policy (used when it
    is applied). ``model_spec``: how to rebuild the architecture (recorded; e.g. ``ModelSpec.to_dict()``).
    """
    graph = graph or trace(model, example_shape(example_input), exclude)
    costs = cost_model(cost)
    budget = Budget(graph, costs, target, round_to=round_to, lbound=lbound)
    ratio, keep = budget.uniform()
    spec = {**(model_spec or {"name": type(model).__name__}), "exclude": list(exclude)}
    return Policy.build(graph, keep, model=spec, requested={g: ratio for g in keep},
                        cost={"name": costs.name, "definition": costs.definition}, prune=prune,
                        metrics={"method": "uniform", "uniform_ratio": ratio, "target": target,
                                 f"{costs.name}_ratio": budget.ratio(keep)})
