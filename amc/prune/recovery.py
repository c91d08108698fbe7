"""Recovery after pruning: least-squares reconstruction and BatchNorm recalibration.

Least squares, ``reconstruction="consumers"`` (AMC's channel-pruning step):

Given the Gram matrix G = X^T X of the layer's dense input samples X (im2col columns for convs),
the weights W' over the kept columns K that best reproduce the dense outputs Y = X W^T solve

    (X_K^T X_K + lambda I) W'^T = X_K^T X W^T,   i.e.   (G[K, K] + lambda I) W'^T = G[K, :] W^T

(AMC's channel-pruning step; the bias is unchanged because Y excludes it). ``lambda`` is
``ridge`` times the mean diagonal of G[K, K].

Least squares, ``reconstruction="sequential"`` (on the pruned model's own inputs, as in ThiNet and He et
al.'s channel pruning): every conv and linear layer whose input differs from the dense model's (a consumer of
a pruned group, or anything after one) is refitted in forward order, so that from the input X' the pruned
model actually feeds it, it reproduces the dense layer's kept outputs Y (bias excluded) at the same sampled
positions: (X'^T X' + lambda I) W'^T = X'^T Y, solved per conv group. Each refit sees the errors left by
the layers before it and corrects them, instead of each layer assuming an undamaged input. During that pass
every BatchNorm normalises with the pruned model's own statistics over the calibration images, and keeps
them. It costs one forward pass of the pruned model over all calibration images at once (their activations
must fit in memory) per pruning; the dense targets are computed once (:func:`dense_targets`). The normal
equations are solved in float64: in float32 the solves amplify rounding enough that a channels-last and a
contiguous rebuild differ visibly (6e-3 in ResNet-20's logits). Forming them, X'^T X' and X'^T Y, is most of
the cost; ``precision="float32"`` forms them from mean-centred samples in float32 and adds the means' part,
S m_x m_x^T and S m_x m_y^T, in float64: the same equations, with the large common offset of post-ReLU
inputs kept out of float32 (a channels-last and a contiguous rebuild then differ by 1e-4, as in float64).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import random_positions
from ..forward_context import attached_hooks, eval_mode
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


@dataclass
class LayerTarget:
    """The dense layer's outputs to reproduce: ``positions`` (N images, P sampled positions per image, flat
    output-position indices) and ``outputs`` (N * P, out features), without bias."""

    positions: torch.Tensor
    outputs: torch.Tensor


def refittable_layers(model: nn.Module, graph: DependencyGraph) -> list[str]:
    """Names of ``model``'s conv (2-d) and linear layers that ``graph`` knows, which sequential least squares refits."""
    return [name for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name in graph.layer]


def _positions(m: nn.Module, out: torch.Tensor) -> int:
    """Output positions per image of layer ``m`` for its output ``out``."""
    return out[0, 0].numel() if isinstance(m, nn.Conv2d) else out[0].numel() // out.shape[-1]


def _sampled_outputs(m: nn.Module, out: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(N * P, out features) of ``out`` at ``positions`` (N, P), bias removed."""
    flat = out.flatten(2) if isinstance(m, nn.Conv2d) else out.reshape(len(out), -1, out.shape[-1]).transpose(1, 2)
    picked = flat.gather(2, positions.unsqueeze(1).expand(-1, flat.shape[1], -1))  # (N, out, P)
    picked = picked.transpose(1, 2).reshape(-1, flat.shape[1])
    return picked - m.bias.detach() if m.bias is not None else picked


def _padding(m: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of conv ``m`` as torch applies it ("same" pads an even kernel unevenly)."""
    if isinstance(m.padding, str):
        pads = [(0, 0) if m.padding == "valid" else (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                for k, d in zip(m.kernel_size, m.dilation)]
    else:
        pads = [(p, p) for p in m.padding]
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def sampled_inputs(m: nn.Module, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(N * P, in features * kernel positions) input samples of ``m`` that produce its outputs at ``positions``
    (N, P): im2col patches (channel major, as ``weight.reshape(out, -1)``) of a conv, rows of a linear."""
    if isinstance(m, nn.Linear):
        rows = x.reshape(len(x), -1, x.shape[-1])
        return rows.gather(1, positions.unsqueeze(2).expand(-1, -1, rows.shape[2])).reshape(-1, rows.shape[2])
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    pad = _padding(m)
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    padded = F.pad(x, pad, mode=mode).permute(0, 2, 3, 1)  # (N, H, W, C): one gather per patch
    out_w = (padded.shape[2] - dw * (kw - 1) - 1) // sw + 1
    oy, ox = positions // out_w, positions % out_w
    image = torch.arange(len(x), device=x.device).view(-1, 1, 1, 1)
    iy = (oy * sh).unsqueeze(-1).unsqueeze(-1) + (torch.arange(kh, device=x.device) * dh).view(-1, 1)
    ix = (ox * sw).unsqueeze(-1).unsqueeze(-1) + (torch.arange(kw, device=x.device) * dw).view(1, -1)
    patches = padded[image, iy, ix]  # (N, P, kh, kw, C)
    return patches.permute(0, 1, 4, 2, 3).reshape(-1, x.shape[1] * kh * kw)


def dense_targets(model: nn.Module, layers: list[str], images: torch.Tensor, points_per_image: int = 10,
                  seed: int = 0) -> dict[str, LayerTarget]:
    """One forward pass of the dense ``model`` over ``images``: for each of ``layers``, ``points_per_image``
    random output positions per image (0 = all) and its outputs there (a layer run twice: its first call)."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    targets: dict[str, LayerTarget] = {}

    def record(name):
        def hook(m, inputs, out):
            if name in targets:
                return
            count = _positions(m, out)
            if 0 < points_per_image < count:
                pos = random_positions(count, len(out), points_per_image, gen)
            else:
                pos = torch.arange(count).expand(len(out), -1)
            pos = pos.to(out.device)
            targets[name] = LayerTarget(pos, _sampled_outputs(m, out, pos).float())
        return hook

    with eval_mode(model), attached_hooks(post=[(modules[name], record(name)) for name in layers]), torch.no_grad():
        model(images)
    return targets


def normal_equations(x: torch.Tensor, y: torch.Tensor, precision: str = "float32") -> tuple[torch.Tensor, torch.Tensor]:
    """(x^T x, x^T y) in float64 for samples ``x`` (..., S, F) and ``y`` (..., S, O), batched over leading dims.

    ``float64``: the products in float64. ``float32``: products of the mean-centred samples in float32 plus
    S m_x^T m_x and S m_x^T m_y in float64 (m: the sample means), which is the same sum.
    """
    if precision == "float64":
        x, y = x.double(), y.double()
        return x.transpose(-1, -2) @ x, x.transpose(-1, -2) @ y
    mx, my = x.mean(-2, keepdim=True, dtype=torch.float64), y.mean(-2, keepdim=True, dtype=torch.float64)
    xc, yc = x.float() - mx.float(), y.float() - my.float()
    count = x.shape[-2]
    xtx = (xc.transpose(-1, -2) @ xc).double() + count * mx.transpose(-1, -2) @ mx
    xty = (xc.transpose(-1, -2) @ yc).double() + count * mx.transpose(-1, -2) @ my
    return xtx, xty


def _solve_grouped(x: torch.Tensor, y: torch.Tensor, groups: int, ridge: float, precision: str) -> torch.Tensor:
    """W (out, in per group) minimising |x W^T - y|^2 + ridge-term, each conv group on its own columns and rows."""
    xg = x.reshape(len(x), groups, -1).transpose(0, 1)  # (G, S, F)
    yg = y.reshape(len(y), groups, -1).transpose(0, 1)  # (G, S, O)
    a, b = normal_equations(xg, yg, precision)
    scale = a.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12) * ridge
    a = a + scale.view(-1, 1, 1) * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(a, b).transpose(1, 2).reshape(len(y[0]), -1)  # (out, in per group)


def reconstruct_sequentially(small: nn.Module, graph: DependencyGraph, kept: Kept, targets: Mapping[str, LayerTarget],
                             images: torch.Tensor, ridge: float = 1e-4, precision: str = "float32") -> list[str]:
    """Refit, in place and in forward order, ``small``'s layers of ``targets`` whose input may differ from the
    dense model's (on the pruned model's own inputs; see the module docstring); returns their names.

    A module run twice is refitted at most at its first call. A layer with more unknowns per output than
    samples (a wide classifier over few calibration images) is still refitted: the ridge term keeps it
    determined, and on MobileNet-V2 with 64 calibration images that beat leaving such layers sliced.

    ``kept``: the executed selection (sorted kept indices per group); ``targets``: :func:`dense_targets` of
    the dense model on the same ``images``; ``precision``: see :func:`normal_equations`.
    """
    modules = dict(small.named_modules())
    consumers = {c for name in kept for c in graph.group[name].consumers}
    changed, refitted, called = False, [], set()

    def before(name):
        def hook(m, inputs):
            if name in called:  # the targets are the first call's (a module run twice keeps that refit)
                return
            called.add(name)
            if not (changed or name in consumers):
                return
            target = targets[name]
            x = sampled_inputs(m, inputs[0], target.positions)
            groups = getattr(m, "groups", 1)
            out_idx = graph.feature_index(graph.layer[name].out_layout, kept).to(target.outputs.device)
            w = _solve_grouped(x, target.outputs.index_select(1, out_idx), groups, ridge, precision)
            m.weight.copy_(w.reshape(m.weight.shape).to(m.weight.dtype))
            refitted.append(name)
        return hook

    def after(name):
        def hook(m, inputs, out):
            nonlocal changed
            changed = changed or name in refitted or out.shape[1 if isinstance(m, nn.Conv2d) else -1] < len(
                targets[name].outputs[0])
        return hook

    with attached_hooks(pre=[(modules[name], before(name)) for name in targets],
                        post=[(modules[name], after(name)) for name in targets]):
        if not recalibrate_batchnorm(small, [images]):  # no BatchNorm to re-estimate: a plain pass
            with eval_mode(small), torch.no_grad():
                small(images)
    return refitted


def batchnorms_after(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """BatchNorm name -> name of the conv/linear whose output it normalises directly (one forward of ``example``)."""
    producers: dict[int, str] = {}
    found: dict[str, str] = {}

    def produced(name):
        return lambda mod, inputs, out: producers.__setitem__(id(out), name)

    def normalises(name):
        def hook(mod, inputs):
            if id(inputs[0]) in producers:
                found[name] = producers[id(inputs[0])]
        return hook

    modules = list(model.named_modules())
    layers = [(m, produced(n)) for n, m in modules if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    bns = [(m, normalises(n)) for n, m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with eval_mode(model), attached_hooks(pre=bns, post=layers), torch.no_grad():
        model(example)
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
    momenta = [m.momentum for m in bns]
    used = 0
    with eval_mode(model):
        try:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            with torch.no_grad():
                for x in batches:
                    model(x)
                    used += 1
        finally:
            for m, momentum in zip(bns, momenta):
                m.momentum = momentum
    return used
