"""Unstructured magnitude pruning of conv and linear weights, with ``torch.nn.utils.prune`` masks.

Units: **sparsity** is the fraction of a layer's weight elements that is removed (0 = dense,
0.9 = nine in ten weights are zero). ``scope="layer"`` removes that fraction of the smallest
weights (by absolute value) in every prunable layer; ``scope="global"`` removes that fraction of
all prunable weights together, with one magnitude threshold, so layers with small weights lose
more. Exactly ``round(sparsity * n)`` elements are removed (ties broken by position), so the
resulting sparsity is the requested one up to one element.

Masks are installed with :func:`torch.nn.utils.prune.custom_from_mask`: each pruned layer has
``weight_orig``, ``weight_mask`` (True = kept) and computes ``weight = weight_orig * weight_mask``;
:class:`amc.training.KeepMasks` keeps masked weights (and their momentum) at zero through
training and :func:`amc.prune.fold_masks` makes the zeros permanent.
"""
from __future__ import annotations

import copy
import fnmatch
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from .errors import AmcError

PRUNABLE = (nn.Conv2d, nn.Conv1d, nn.Conv3d, nn.Linear)
SCOPES = ("layer", "global")


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module computes with: ``weight_orig * weight_mask`` when masked (never stale), else ``weight``."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return module.weight_orig * module.weight_mask
    return module.weight


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works for masked modules after a forward pass with autograd on.

    (Their ``weight`` is then a non-leaf tensor, which deepcopy refuses; it is recomputed without
    history first -- the same value, so the model's behaviour does not change.)
    """
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "weight_orig") and hasattr(m, "weight_mask") and not isinstance(m.weight, nn.Parameter):
                m.weight = m.weight_orig * m.weight_mask
    return copy.deepcopy(model)


def prunable_layers(model: nn.Module, keep_dense: Sequence[str] = ()) -> dict[str, nn.Module]:
    """Conv and linear modules by name (in ``named_modules`` order), minus those matching a ``keep_dense`` glob.

    A pattern that matches no conv/linear layer is an :class:`AmcError` (a typo would silently prune).
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE)}
    for pattern in keep_dense:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in layers):
            raise AmcError(f"keep_dense pattern '{pattern}' matches no conv or linear layer "
                           f"(layers: {', '.join(list(layers)[:6])}{', ...' if len(layers) > 6 else ''})")
    return {name: m for name, m in layers.items() if not any(fnmatch.fnmatchcase(name, p) for p in keep_dense)}


def _check_sparsity(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise AmcError(f"{what} = {value!r} is not valid: expected a fraction of weights removed in [0, 1)")
    return float(value)


def _smallest(magnitudes: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask (True = kept) removing the ``count`` smallest entries of a flat tensor (ties: lower index first)."""
    keep = torch.ones(magnitudes.numel(), dtype=torch.bool, device=magnitudes.device)
    if count > 0:
        order = torch.argsort(magnitudes, stable=True)
        keep[order[:count]] = False
    return keep


def magnitude_masks(model: nn.Module, sparsity: float = 0.0, *, scope: str = "layer", keep_dense: Sequence[str] = (),
                    sparsities: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Weight-shaped bool masks (True = kept) per prunable layer name; ``model`` is not changed.

    ``sparsity``: fraction of weights removed (per layer, or of all prunable weights for
    ``scope="global"``). ``sparsities``: per-layer fractions (layer name -> sparsity) that replace
    ``sparsity`` for the layers they name (``scope="layer"`` only). ``keep_dense``: glob patterns of
    layers left dense (no mask). Already masked layers are ranked by their effective weights, so
    pruned weights stay pruned when the sparsity grows.
    """
    if scope not in SCOPES:
        raise AmcError(f"unknown scope '{scope}' (choose layer or global)")
    sparsity = _check_sparsity(sparsity, "sparsity")
    layers = prunable_layers(model, keep_dense)
    per_layer = {name: sparsity for name in layers}
    if sparsities:
        if scope == "global":
            raise AmcError("per-layer sparsities need scope='layer' (global scope uses one threshold)")
        unknown = [n for n in sparsities if n not in layers]
        if unknown:
            raise AmcError(f"sparsities name layers that are not prunable conv/linear layers of the model "
                           f"(or are kept dense): {', '.join(unknown[:5])}")
        per_layer.update({n: _check_sparsity(s, f"sparsity of '{n}'") for n, s in sparsities.items()})
    if not layers:
        raise AmcError("the model has no prunable conv or linear layers")
    with torch.no_grad():
        weights = {name: effective_weight(m).detach() for name, m in layers.items()}
        if scope == "layer":
            return {name: _smallest(w.abs().flatten(), round(per_layer[name] * w.numel())).view_as(w)
                    for name, w in weights.items()}
        flat = torch.cat([w.abs().flatten().float().cpu() for w in weights.values()])
        keep = _smallest(flat, round(sparsity * flat.numel()))
        out, offset = {}, 0
        for name, w in weights.items():
            out[name] = keep[offset:offset + w.numel()].view_as(w).to(w.device)
            offset += w.numel()
        return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Install (or replace) ``torch.nn.utils.prune`` weight masks in place; returns ``model``.

    A layer that already has a ``weight_mask`` gets the new mask copied into it (the parameter
    ``weight_orig`` the optimizer holds stays the same object) and its masked weights set to zero;
    other layers get :func:`torch.nn.utils.prune.custom_from_mask`.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if module is None or getattr(module, "weight", None) is None:
            raise AmcError(f"mask for '{name}', which is not a layer with a weight")
        if tuple(mask.shape) != tuple(effective_weight(module).shape):
            raise AmcError(f"mask for '{name}' has shape {tuple(mask.shape)}, its weight "
                           f"{tuple(effective_weight(module).shape)}")
        if hasattr(module, "weight_mask") and hasattr(module, "weight_orig"):
            module.weight_mask.copy_(mask.to(module.weight_mask.device, module.weight_mask.dtype))
            module.weight_orig.mul_(module.weight_mask)
            module.weight = module.weight_orig * module.weight_mask  # what the forward pre-hook computes
        else:
            prune.custom_from_mask(module, "weight", mask.to(module.weight.device))
    return model


def prune_unstructured(model: nn.Module, sparsity: float = 0.0, *, scope: str = "layer",
                       keep_dense: Sequence[str] = (), sparsities: Mapping[str, float] | None = None) -> nn.Module:
    """A new model (``model`` is untouched) whose conv/linear weights are magnitude-pruned with masks.

    ``sparsity``: fraction of weights removed, in [0, 1). ``scope``: ``layer`` (that fraction in
    every prunable layer, or ``sparsities[name]`` for the layers it names, e.g. from
    ``Policy.sparsities``) or ``global`` (one magnitude threshold over all prunable weights).
    ``keep_dense``: glob patterns of layers left dense (e.g. ``("conv1", "fc")``).
    """
    masks = magnitude_masks(model, sparsity, scope=scope, keep_dense=keep_dense, sparsities=sparsities)
    return apply_masks(copy_model(model), masks)


def export_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Bool weight masks (True = kept) per layer name, loadable with ``prune.custom_from_mask(module, "weight", mask)``.

    Layers pruned with ``torch.nn.utils.prune`` give their ``weight_mask``; other conv/linear layers
    give ``weight != 0`` (the masks of a model whose masks were folded).
    """
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "weight_mask"):
            out[name] = m.weight_mask.detach().bool().cpu().clone()
        elif isinstance(m, PRUNABLE):
            out[name] = (m.weight.detach() != 0).cpu()
    return out


def layer_sparsities(model: nn.Module) -> dict[str, float]:
    """Fraction of weight elements that are exactly zero, per conv/linear layer (effective weights)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            w = effective_weight(m)
            out[name] = float((w == 0).sum()) / max(w.numel(), 1)
    return out
