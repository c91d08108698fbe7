"""A policy in the forms other tools read, and a ratio dictionary read back as a policy.

- :func:`torch_pruning_ratios` / :func:`torch_pruning_script`: Torch-Pruning's ``pruning_ratio_dict``
  (module name -> fraction of its output channels *removed*) and a short script that prunes a model
  with it (``tp.pruner.MetaPruner``);
- :func:`nni_config_list`: an NNI 3 ``config_list`` (``op_names`` + ``sparse_ratio``; layers that must
  lose the same channels share a ``dependency_group_id``);
- :func:`policy_table`: a tidy table, one row per channel group (or per layer of a weight policy);
- :func:`policy_from_ratios`: ``{group or producer layer name: preserve ratio}`` -> :class:`Policy`.

Channel groups are named by their first producer; the exports list every producer of a group (the
convs of a residual stream all lose the same channels), found by tracing the architecture the
policy records (:func:`architecture_graph`). Ratios here: *preserve ratio* = fraction kept,
*pruning ratio* / *sparsity* = fraction removed.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from .config import PruneConfig
from .errors import AmcError
from .models import ModelSpec, build_model
from .policy import Policy
from .structure import DependencyGraph, trace

FORMATS = ("torch-pruning", "nni", "csv")


def architecture_graph(policy: Policy) -> DependencyGraph:
    """The dependency graph of the architecture ``policy`` records (random weights; checked against it)."""
    spec = ModelSpec.from_dict({k: v for k, v in policy.model.items() if k != "exclude"})
    graph = trace(build_model(spec), tuple(policy.input_shape), policy.model.get("exclude", ()))
    if policy.granularity == "channel":
        policy.keep(graph)  # raises if the groups or shapes differ
    return graph


def _producers(policy: Policy, graph: DependencyGraph) -> dict[str, list[str]]:
    return {d.name: list(graph.group[d.name].producers) for d in policy.groups}


def torch_pruning_ratios(policy: Policy, graph: DependencyGraph | None = None) -> dict[str, float]:
    """Torch-Pruning's ``pruning_ratio_dict`` by module name: for every producer of every group that loses
    channels, the fraction of its output channels removed.

    Torch-Pruning keeps ``int(channels * (1 - ratio))`` channels, so each ratio is ``(channels - kept - 0.5) /
    channels``: half a channel below the exact fraction, which truncation maps to exactly ``kept``.
    """
    if policy.granularity != "channel":
        raise AmcError("Torch-Pruning prunes channels; this is a weight policy (export it as nni or csv)")
    graph = graph or architecture_graph(policy)
    producers = _producers(policy, graph)
    keep = {d.name: d.kept_channels for d in policy.groups}
    ratios: dict[str, float] = {}
    for d in policy.groups:
        if d.kept_channels < d.channels:
            for name in producers[d.name]:  # by the module's own output width (a chunked group spans it twice)
                layout = graph.layer[name].out_layout
                dense, kept = graph.width(layout), graph.width(layout, keep)
                ratios[name] = round((dense - kept - 0.5) / dense, 9)
    return ratios


SCRIPT = '''"""Prune a {name} with Torch-Pruning to the channel counts of an amc policy ({source}).

    import torch, {module}
    model = ...  # the {name}, e.g. loaded from your checkpoint
    {module}.prune(model, torch.randn(1, {shape}))

PRUNING_RATIOS: module name -> fraction of its output channels removed (half a channel below the exact
fraction: Torch-Pruning keeps int(channels * (1 - ratio)) channels). Which channels go is Torch-Pruning's
choice (L1 magnitude here); amc's policy also records its own kept indices.
"""
import torch
import torch_pruning as tp

PRUNING_RATIOS = {ratios}
IGNORED = {ignored}  # layers whose output channels stay (the model's output)


def prune(model: torch.nn.Module, example_inputs: torch.Tensor) -> torch.nn.Module:
    """Prune ``model`` in place to the policy's channel counts; returns it."""
    modules = dict(model.named_modules())
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.0,
        pruning_ratio_dict={{modules[name]: ratio for name, ratio in PRUNING_RATIOS.items()}},
        ignored_layers=[modules[name] for name in IGNORED])
    pruner.step()
    return model
'''


def torch_pruning_script(policy: Policy, module_name: str = "prune_with_torch_pruning",
                         graph: DependencyGraph | None = None) -> str:
    """A Python file defining ``PRUNING_RATIOS`` and ``prune(model, example_inputs)`` for Torch-Pruning."""
    graph = graph or architecture_graph(policy)
    ratios = torch_pruning_ratios(policy, graph)
    body = "{\n" + "".join(f"    {name!r}: {ratio!r},\n" for name, ratio in ratios.items()) + "}"
    ignored = sorted({p for g in graph.groups if g.reason == "model output" for p in g.producers})
    return SCRIPT.format(name=policy.model.get("name", "model"), source=policy.provenance.get("command") or "amc",
                         module=module_name, shape=", ".join(map(str, policy.input_shape)), ratios=body,
                         ignored=repr(ignored))


def nni_config_list(policy: Policy, graph: DependencyGraph | None = None) -> list[dict]:
    """An NNI 3 ``config_list``: per group that loses channels, its producers' ``op_names`` and ``sparse_ratio``
    (fraction of output channels removed; one ``dependency_group_id`` when several layers must lose the same
    channels); per layer of a weight policy, ``sparse_ratio`` = its weight sparsity."""
    if policy.granularity == "weight":
        return [{"op_names": [layer], "sparse_ratio": round(s, 9)} for layer, s in policy.sparsities.items() if s > 0]
    graph = graph or architecture_graph(policy)
    producers = _producers(policy, graph)
    out = []
    for d in policy.groups:
        if d.kept_channels == d.channels:
            continue
        entry = {"op_names": producers[d.name], "sparse_ratio": round(1 - d.kept_channels / d.channels, 9)}
        if len(producers[d.name]) > 1:
            entry["dependency_group_id"] = d.name
        out.append(entry)
    return out


def policy_table(policy: Policy, graph: DependencyGraph | None = None) -> pd.DataFrame:
    """One row per channel group (``group``, ``producers`` joined by spaces, ``channels``, ``kept_channels``,
    ``preserve_ratio``, ``pruning_ratio``, ``requested_ratio``) or per layer of a weight policy (``layer``,
    ``sparsity``, ``preserve_ratio``)."""
    if policy.granularity == "weight":
        return pd.DataFrame([{"layer": layer, "sparsity": s, "preserve_ratio": 1 - s}
                             for layer, s in policy.sparsities.items()])
    graph = graph or architecture_graph(policy)
    producers = _producers(policy, graph)
    return pd.DataFrame([{"group": d.name, "producers": " ".join(producers[d.name]), "channels": d.channels,
                          "kept_channels": d.kept_channels, "preserve_ratio": d.kept_channels / d.channels,
                          "pruning_ratio": 1 - d.kept_channels / d.channels, "requested_ratio": d.requested_ratio}
                         for d in policy.groups])


def policy_from_ratios(model: nn.Module, example_input: torch.Tensor | Sequence[int], ratios: Mapping[str, float],
                       *, rounding: str = "nearest", exclude: Sequence[str] = (), model_spec: dict | None = None,
                       prune: PruneConfig = PruneConfig()) -> Policy:
    """A channel policy from preserve ratios (fraction kept, in (0, 1]) keyed by group name or by any producer
    layer of a group; kept counts are ``ratio x channels`` rounded to the ``nearest`` allowed count, or down
    (``floor``: Torch-Pruning's ``int(channels * (1 - pruning_ratio))``), at least one per conv group. Groups
    not named keep all their channels; a name that is no prunable group's, two names of one group with
    different ratios, or a ratio outside (0, 1] are errors naming them."""
    if rounding not in ("nearest", "floor"):
        raise AmcError(f"rounding must be 'nearest' or 'floor', got {rounding!r}")
    shape = tuple(example_input.shape[1:]) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    graph = trace(model, shape, exclude)
    by_layer = {p: g for g in graph.prunable for p in g.producers}
    chosen: dict[str, float] = {}
    for name, ratio in ratios.items():
        group = graph.group.get(name) if name in graph.group else by_layer.get(name)
        if group is None or not group.prunable:
            why = f" ({graph.group[name].reason})" if name in graph.group else ""
            raise AmcError(f"'{name}' is not a prunable channel group or producer layer of the model{why}")
        if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1 or math.isnan(ratio):
            raise AmcError(f"preserve ratio of '{name}' must lie in (0, 1], got {ratio!r}")
        if group.name in chosen and chosen[group.name] != ratio:
            raise AmcError(f"'{name}' and another layer of group '{group.name}' ask for different ratios "
                           f"({chosen[group.name]} and {ratio}); they lose the same channels")
        chosen[group.name] = float(ratio)
    keep = {}
    for name, ratio in chosen.items():
        g = graph.group[name]
        step = g.count_step()
        steps = int(ratio * g.channels) // step if rounding == "floor" else round(ratio * g.channels / step)
        keep[name] = min(g.channels, max(step, step * steps))
    spec = {**(model_spec or {"name": type(model).__name__}), "exclude": list(exclude)}
    return Policy.build(graph, keep, model=spec, requested=chosen, prune=prune, metrics={"method": "ratios"})
