"""Recovery after pruning: least-squares reconstruction of consumers and BatchNorm recalibration.

Least squares (AMC's channel-pruning step):

Given the Gram matrix G = X^T X of the layer's dense input samples X (im2col columns for convs),
the weights W' over the kept columns K that best reproduce the dense outputs Y = X W^T solve

    (X_K^T X_K + lambda I) W'^T = X_K^T X W^T,   i.e.   (G[K, K] + lambda I) W'^T = G[K, :] W^T

(AMC's channel-pruning step; the bias is unchanged because Y excludes it). ``lambda`` is
``ridge`` times the mean diagonal of G[K, K].
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from ..structure import DependencyGraph, Kept


def kept_columns(in_features_kept: torch.Tensor, kernel_positions: int) -> torch.Tensor:
    """im2col column indices (channel major) of kept input features for a kernel of ``kernel_positions``."""
    return (in_features_kept.view(-1, 1) * kernel_positions + torch.arange(kernel_positions)).flatten()


def least_squares_weight(weight: torch.Tensor, gram: torch.Tensor, kept_in: torch.Tensor,
                         ridge: float = 1e-4, groups: int = 1) -> torch.Tensor:
    """Reconstructed weight (out, len(kept_in) / groups, *kernel) for a conv/linear ``weight`` (out, in / groups, *kernel).

    ``gram``: (in * kernel positions) squared Gram matrix of the dense input samples (all input
    channels, channel-major im2col columns). ``kept_in``: sorted indices of the kept input features
    (channels), the same number in each of the ``groups`` conv groups. Each conv group is solved on
    its own: its output channels only read its own inputs.
    """
    out_c, in_per_group = weight.shape[:2]
    k = weight[0, 0].numel()
    rows = out_c // groups
    kept_per_group = kept_in.view(groups, -1)
    g = gram.double()
    solved = []
    for j in range(groups):
        dense_cols = kept_columns(torch.arange(j * in_per_group, (j + 1) * in_per_group), k)
        cols = kept_columns(kept_per_group[j], k)
        w2d = weight[j * rows:(j + 1) * rows].detach().reshape(rows, in_per_group * k).double().cpu()
        a = g[cols][:, cols]
        a = a + ridge * a.diagonal().mean().clamp_min(1e-12) * torch.eye(len(cols), dtype=a.dtype)
        b = g[cols][:, dense_cols] @ w2d.T
        solved.append(torch.linalg.solve(a, b).T)
    return torch.cat(solved).to(weight.dtype).reshape(out_c, kept_per_group.shape[1], *weight.shape[2:])


def reconstruct(small: nn.Module, dense_modules: Mapping[str, nn.Module], graph: DependencyGraph, kept: Kept,
                gram: Mapping[str, torch.Tensor], ridge: float = 1e-4) -> None:
    """Refit, in place, the weights of ``small``'s layers that read a pruned group (least squares).

    ``dense_modules``: the dense model's modules by name; ``gram``: Gram matrices of the dense
    consumers' inputs (:func:`amc.calibration.collect_stats` with ``Needs.GRAM``).
    """
    modules = dict(small.named_modules())
    touched = sorted({c for name in kept for c in graph.group[name].consumers})
    for name in touched:
        layer = graph.layer[name]
        in_idx = graph.feature_index(layer.in_layout, kept)
        out_idx = graph.feature_index(layer.out_layout, kept)
        dense = dense_modules[name]
        weight = least_squares_weight(dense.weight, gram[name], in_idx, ridge, getattr(dense, "groups", 1))
        with torch.no_grad():
            modules[name].weight.copy_(weight.index_select(0, out_idx.to(weight.device)))


def batchnorms_after(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """BatchNorm name -> name of the conv/linear whose output it normalises directly (one forward of ``example``)."""
    producers: dict[int, str] = {}
    found: dict[str, str] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: producers.__setitem__(id(o), name)))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, i, name=name: found.__setitem__(name, producers[id(i[0])]) if id(i[0]) in producers else None))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return found


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], only: Iterable[str] | None = None) -> int:
    """Re-estimate BatchNorm running statistics on ``batches`` (cumulative average); returns batches used.

    Only BatchNorm layers switch to training mode; weights are not touched. ``only``: names of the
    BatchNorms to re-estimate (default: all); the others keep their statistics.
    """
    names = None if only is None else set(only)
    bns = [m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and (names is None or n in names)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
                used += 1
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return used
