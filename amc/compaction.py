"""Physical channel removal: a smaller model with real shapes, built from kept channel indices.

:func:`compact` slices every conv, linear and BatchNorm a group touches (producers' output
channels, followers' channels, consumers' input channels) on a copy of the model; the original is
never modified. :func:`channel_manifest` records the new shapes so that :func:`resize_to_manifest`
can rebuild the architecture in a fresh process before ``load_state_dict`` (no re-pruning).
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from .errors import AmcError
from .graph import PruningGraph


def _take(param: torch.Tensor | None, dim: int, idx: torch.Tensor) -> torch.Tensor | None:
    if param is None:
        return None
    return param.detach().index_select(dim, idx.to(param.device)).clone()


def _set(module: nn.Module, name: str, value: torch.Tensor | None, parameter: bool = True) -> None:
    if value is None:
        return
    if parameter:
        setattr(module, name, nn.Parameter(value, requires_grad=getattr(module, name).requires_grad))
    else:
        setattr(module, name, value)


def grouped_weight(weight: torch.Tensor, in_idx: torch.Tensor, out_idx: torch.Tensor, groups: int) -> torch.Tensor:
    """Weight (len(out_idx), len(in_idx) / groups, kh, kw) of a grouped conv keeping these channels.

    ``in_idx``/``out_idx``: sorted kept input/output channels, the same number in every conv group.
    """
    per_group_in = weight.shape[1]
    per_group_out = weight.shape[0] // groups
    local = in_idx.to(weight.device).view(groups, -1) - (torch.arange(groups, device=weight.device) * per_group_in).view(-1, 1)
    out_idx = out_idx.to(weight.device)
    rows = weight.detach().index_select(0, out_idx)
    cols = local[out_idx // per_group_out]  # each kept output channel reads its own group's kept inputs
    return rows.gather(1, cols[:, :, None, None].expand(-1, -1, *rows.shape[2:])).clone()


def check_kept(graph: PruningGraph, kept: Mapping[int, torch.Tensor]) -> None:
    """Raise :class:`AmcError` if ``kept`` (space -> channel indices) cannot be executed on ``graph``."""
    groups = graph.group_of_space()
    for space, idx in kept.items():
        g = groups[space]
        if len(idx) == 0:
            raise AmcError(f"group '{g.name}' would keep zero channels")
        if len(idx) < g.channels and not g.prunable:
            raise AmcError(f"group '{g.name}' is not prunable: {g.reason}")
        if len(idx) != len(set(idx.tolist())) or min(idx.tolist()) < 0 or max(idx.tolist()) >= g.channels:
            raise AmcError(f"group '{g.name}' keeps invalid channel indices (need distinct values in [0, {g.channels}))")
        if g.blocks > 1:
            per_block = torch.bincount(idx // (g.channels // g.blocks), minlength=g.blocks)
            if (per_block != per_block[0]).any():
                raise AmcError(f"group '{g.name}' feeds a grouped conv: it must keep the same number of channels "
                               f"in each of its {g.blocks} blocks (got {per_block.tolist()})")


def slice_layers(graph: PruningGraph, modules: Mapping[str, nn.Module], kept: Mapping[int, torch.Tensor]) -> None:
    """Slice, in place, the modules of ``modules`` (name -> module) that ``graph`` lists as layers.

    ``kept`` maps a group's space to the sorted channel indices it keeps; groups not in it keep all.
    """
    for layer in graph.layers:
        m = modules[layer.name]
        in_idx = graph.layout_indices(layer.in_layout, kept)
        out_idx = graph.layout_indices(layer.out_layout, kept)
        if layer.kind == "bn":
            for attr in ("weight", "bias"):
                _set(m, attr, _take(getattr(m, attr), 0, in_idx))
            for attr in ("running_mean", "running_var"):
                _set(m, attr, _take(getattr(m, attr), 0, in_idx), parameter=False)
            m.num_features = len(in_idx)
        elif layer.kind == "depthwise":
            _set(m, "weight", _take(m.weight, 0, in_idx))
            _set(m, "bias", _take(m.bias, 0, in_idx))
            m.in_channels = m.out_channels = m.groups = len(in_idx)
        elif layer.kind == "grouped":
            _set(m, "weight", grouped_weight(m.weight, in_idx, out_idx, m.groups))
            _set(m, "bias", _take(m.bias, 0, out_idx))
            m.in_channels, m.out_channels = len(in_idx), len(out_idx)
        elif layer.kind in ("conv", "linear"):
            _set(m, "weight", _take(_take(m.weight, 0, out_idx), 1, in_idx))
            _set(m, "bias", _take(m.bias, 0, out_idx))
            if layer.kind == "conv":
                m.in_channels, m.out_channels = len(in_idx), len(out_idx)
            else:
                m.in_features, m.out_features = len(in_idx), len(out_idx)


def compact(model: nn.Module, graph: PruningGraph, kept: Mapping[int, torch.Tensor]) -> nn.Module:
    """A physically smaller copy of ``model`` keeping channel indices ``kept[group.space]``.

    Raises :class:`AmcError` when a group that is not prunable would lose channels, a group would
    keep none, or a group that feeds a grouped conv would keep unequal counts per block.
    """
    check_kept(graph, kept)
    kept = {space: idx.sort().values for space, idx in kept.items()}
    small = copy.deepcopy(model)
    slice_layers(graph, dict(small.named_modules()), kept)
    return small


def masked(model: nn.Module, graph: PruningGraph, kept: Mapping[int, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose consumers ignore removed channels (their input weights zeroed).

    Same function as :func:`compact` but with the original shapes: the reference that compact
    models are tested against.
    """
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    for layer in graph.layers:
        if layer.kind not in ("conv", "linear", "grouped"):
            continue
        keep = graph.layout_indices(layer.in_layout, kept)
        mask = torch.zeros(graph.layout_width(layer.in_layout), dtype=torch.bool)
        mask[keep] = True
        weight = modules[layer.name].weight
        if layer.kind == "grouped":  # row o reads the inputs of conv group o // (out / groups)
            groups = layer.module.groups
            mask = mask.view(groups, -1).repeat_interleave(weight.shape[0] // groups, dim=0)
        else:
            mask = mask.expand(weight.shape[0], -1)
        with torch.no_grad():
            weight[~mask] = 0
    return ref


def channel_manifest(model: nn.Module) -> dict[str, dict[str, int]]:
    """Shapes of every conv, linear and BatchNorm module: enough to rebuild a compact model."""
    manifest: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            manifest[name] = {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            manifest[name] = {"in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            manifest[name] = {"num_features": m.num_features}
    return manifest


def resize_to_manifest(model: nn.Module, manifest: Mapping[str, Mapping[str, int]]) -> nn.Module:
    """Give ``model``'s modules the shapes in ``manifest`` (uninitialised values; load a state_dict next)."""
    modules = dict(model.named_modules())
    unknown = [n for n in manifest if n not in modules]
    if unknown:
        raise AmcError(f"shape manifest names modules the model lacks: {', '.join(unknown[:5])}")
    for name, shape in manifest.items():
        m = modules[name]
        for key, value in shape.items():
            setattr(m, key, int(value))
        if isinstance(m, nn.Conv2d):
            m.weight = nn.Parameter(torch.empty(m.out_channels, m.in_channels // m.groups, *m.kernel_size))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(m.out_channels))
        elif isinstance(m, nn.Linear):
            m.weight = nn.Parameter(torch.empty(m.out_features, m.in_features))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(m.out_features))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.affine:
                m.weight, m.bias = nn.Parameter(torch.empty(n)), nn.Parameter(torch.empty(n))
            if m.track_running_stats:
                m.running_mean, m.running_var = torch.zeros(n), torch.ones(n)
    return model
