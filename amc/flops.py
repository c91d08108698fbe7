"""FLOPs and parameter accounting.

Definition used everywhere in amc: **FLOPs = multiply-accumulate operations (MACs) of Conv2d and
Linear layers for one input example** (a k x k conv producing an H x W x C_out map from C_in
channels costs C_out * C_in / groups * k * k * H * W). Bias additions, BatchNorm, activations,
pooling and residual additions are not counted. ``torch.utils.flop_counter.FlopCounterMode``
counts 2 FLOPs per MAC, i.e. exactly twice this number on conv/linear-only models.

Parameters: every parameter element of the model (BatchNorm affine weights included, buffers not).

Two independent paths: :func:`flops_of` computes analytically from a :class:`PruningGraph` and
per-group channel counts (used by the search for budgets); :func:`measure` runs the model and
counts what its layers really do (used to verify compact models).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .graph import Layer, PruningGraph

FLOPS_DEFINITION = ("FLOPs = multiply-accumulates (MACs) of Conv2d and Linear layers per input example; "
                    "bias, BatchNorm, activation, pooling and addition ops are not counted")


def layer_flops(graph: PruningGraph, layer: Layer, counts: Mapping[int, int] | None = None) -> int:
    """MACs of one conv/linear layer when groups keep ``counts[space]`` channels (others: all)."""
    m = layer.module
    if layer.kind == "bn":
        return 0
    c_in = graph.layout_width(layer.in_layout, counts)
    c_out = graph.layout_width(layer.out_layout, counts)
    hw = layer.out_hw[0] * layer.out_hw[1]
    if layer.kind == "linear":
        return c_in * c_out
    k = m.kernel_size[0] * m.kernel_size[1]
    if layer.kind == "depthwise":
        return c_in * k * hw
    return c_out * (c_in // m.groups) * k * hw


def layer_params(graph: PruningGraph, layer: Layer, counts: Mapping[int, int] | None = None) -> int:
    m = layer.module
    c_in = graph.layout_width(layer.in_layout, counts)
    c_out = graph.layout_width(layer.out_layout, counts)
    if layer.kind == "bn":
        return 2 * c_in if m.affine else 0
    bias = c_out if m.bias is not None else 0
    if layer.kind == "linear":
        return c_in * c_out + bias
    k = m.kernel_size[0] * m.kernel_size[1]
    if layer.kind == "depthwise":
        return c_in * k + bias
    return c_out * (c_in // m.groups) * k + bias


def flops_of(graph: PruningGraph, counts: Mapping[int, int] | None = None) -> int:
    """Total MACs of the model with group channel counts ``counts`` (group space -> kept channels)."""
    return sum(layer_flops(graph, layer, counts) for layer in graph.layers)


def params_of(graph: PruningGraph, counts: Mapping[int, int] | None = None) -> int:
    """Total parameters of the model with group channel counts ``counts``."""
    return graph.fixed_params + sum(layer_params(graph, layer, counts) for layer in graph.layers)


def measure(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Run ``model`` on one zero input of ``input_shape`` (C, H, W) and count MACs and parameters.

    Returns ``{"flops": MACs, "params": parameter elements, "per_layer": {name: MACs}}``.
    """
    per_layer: dict[str, int] = {}
    hooks = []

    def hook(name):
        def count(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                macs = output[0].numel() * (module.in_channels // module.groups) * k
            else:
                macs = output[0].numel() * module.in_features
            per_layer[name] = per_layer.get(name, 0) + int(macs)
        return count

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {"flops": sum(per_layer.values()), "params": sum(p.numel() for p in model.parameters()),
            "per_layer": per_layer}
