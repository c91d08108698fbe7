"""Layer kinds: the one place that knows how each prunable module type is counted, sliced and masked.

A :class:`LayerKind` adapter answers, for one module type, every question the rest of amc asks:
its MACs and parameters at given channel widths (cost models), how to slice it to kept channels
(physical pruning), which weights read which input channels (masks and magnitude criteria), and
its shape manifest (rebuilding a compact model in a fresh process). :func:`kind_of` picks the
adapter of a module; adding a layer type means adding one adapter here and one case to the tracer.

Kinds: ``conv`` (Conv2d, groups=1), ``grouped`` (1 < groups, sliced keeping equal counts per conv
group), ``depthwise`` (groups = in = out channels: a follower of its input's channels), ``linear``
(also over the last dim of an N-d tensor, e.g. channels-last (N, H, W, C): its MACs count every
position), ``bn`` (BatchNorm1d/2d, a follower), ``layernorm`` (LayerNorm over one dim, a follower
whose weight and bias are sliced) and ``parameter`` (a per-channel tensor in an elementwise op, e.g. a
layer scale; one adapter per tensor, not a module type). *Producers* create channels (conv, grouped,
linear); *followers* act per channel of their input (depthwise, bn, layernorm, parameter).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


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
    """Weight (len(out_idx), len(in_idx) / groups, kh, kw) of a conv keeping these channels.

    ``in_idx``/``out_idx``: sorted kept input/output channels, the same number in every conv group.
    """
    per_group_in = weight.shape[1]
    per_group_out = weight.shape[0] // groups
    local = in_idx.to(weight.device).view(groups, -1) - (torch.arange(groups, device=weight.device) * per_group_in).view(-1, 1)
    out_idx = out_idx.to(weight.device)
    rows = weight.detach().index_select(0, out_idx)
    cols = local[out_idx // per_group_out]  # each kept output channel reads its own group's kept inputs
    return rows.gather(1, cols[:, :, None, None].expand(-1, -1, *rows.shape[2:])).clone()


class LayerKind:
    """Adapter interface; widths are channel (or feature) counts, ``out_hw`` the output's (H, W)."""

    name: str = "?"
    role: Literal["producer", "follower"] = "producer"
    feature_dim: int = 1  # the dim of the layer's input that holds its features (Linear: the last)

    def macs(self, m: nn.Module, c_in: int, c_out: int, out_hw: tuple[int, int]) -> int:
        """Multiply-accumulates for one example."""
        return 0

    def dense_widths(self, m: nn.Module) -> tuple[int, int]:
        """(input, output) features of the unpruned module."""
        raise NotImplementedError

    def params(self, m: nn.Module, c_in: int, c_out: int) -> int:
        """Parameter elements at these widths."""
        raise NotImplementedError

    def slice(self, m: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor) -> None:
        """Keep only input features ``in_idx`` and output features ``out_idx`` (in place)."""
        raise NotImplementedError

    def input_mask(self, m: nn.Module, keep_in: torch.Tensor) -> torch.Tensor | None:
        """Weight-shaped bool mask that zeroes every weight reading a dropped input (``keep_in``: bool per input)."""
        return None

    def input_importance(self, m: nn.Module, power: int = 1) -> torch.Tensor | None:
        """Sum of |weight|**power over the weights that read each input feature (magnitude criteria)."""
        return None

    def input_columns(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as (N, features, positions): im2col patches (channel major) for convs."""
        raise NotImplementedError

    def owned(self, m: nn.Module) -> list[torch.Tensor]:
        """The tensors of ``m`` this layer accounts for (the rest of the model's are fixed parameters)."""
        return list(m.parameters(recurse=False))

    def module_name(self, layer_name: str) -> str:
        """Qualified name of the module a layer of this kind named ``layer_name`` lives in."""
        return layer_name

    def manifest(self, m: nn.Module) -> dict[str, int]:
        raise NotImplementedError

    def resize(self, m: nn.Module, shape: dict[str, int]) -> None:
        """Give ``m`` the shapes of ``manifest`` with uninitialised values (a state_dict is loaded next)."""
        raise NotImplementedError


class Conv(LayerKind):
    """A Conv2d; with 1 < groups every conv group keeps the same number of inputs and outputs."""

    name = "conv"

    def macs(self, m, c_in, c_out, out_hw):
        return c_out * (c_in // m.groups) * m.kernel_size[0] * m.kernel_size[1] * out_hw[0] * out_hw[1]

    def params(self, m, c_in, c_out):
        return c_out * (c_in // m.groups) * m.kernel_size[0] * m.kernel_size[1] + (c_out if m.bias is not None else 0)

    def slice(self, m, in_idx, out_idx):
        if m.groups == 1:
            _set(m, "weight", _take(_take(m.weight, 0, out_idx), 1, in_idx))
        else:
            _set(m, "weight", grouped_weight(m.weight, in_idx, out_idx, m.groups))
        _set(m, "bias", _take(m.bias, 0, out_idx))
        m.in_channels, m.out_channels = len(in_idx), len(out_idx)

    def input_mask(self, m, keep_in):
        per_group = keep_in.view(m.groups, -1).repeat_interleave(m.out_channels // m.groups, dim=0)
        return per_group[:, :, None, None].expand_as(m.weight)

    def input_importance(self, m, power=1):
        w = m.weight.detach().abs().pow(power)
        return w.reshape(m.groups, w.shape[0] // m.groups, w.shape[1], -1).sum(dim=(1, 3)).flatten()

    def input_columns(self, m, x):
        return F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)

    def dense_widths(self, m):
        return m.in_channels, m.out_channels

    def manifest(self, m):
        return {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}

    def resize(self, m, shape):
        for key, value in shape.items():
            setattr(m, key, int(value))
        m.weight = nn.Parameter(torch.empty(m.out_channels, m.in_channels // m.groups, *m.kernel_size))
        if m.bias is not None:
            m.bias = nn.Parameter(torch.empty(m.out_channels))


class Grouped(Conv):
    name = "grouped"


class Depthwise(Conv):
    """groups = in = out channels: channel c only reads input c, so it follows its input's channels."""

    name = "depthwise"
    role = "follower"

    def macs(self, m, c_in, c_out, out_hw):
        return c_in * m.kernel_size[0] * m.kernel_size[1] * out_hw[0] * out_hw[1]

    def params(self, m, c_in, c_out):
        return c_in * m.kernel_size[0] * m.kernel_size[1] + (c_in if m.bias is not None else 0)

    def slice(self, m, in_idx, out_idx):
        _set(m, "weight", _take(m.weight, 0, in_idx))
        _set(m, "bias", _take(m.bias, 0, in_idx))
        m.in_channels = m.out_channels = m.groups = len(in_idx)

    def input_mask(self, m, keep_in):
        return None  # its outputs of dropped channels are ignored by the consumers downstream

    def input_importance(self, m, power=1):
        return None


class Linear(LayerKind):
    """A Linear layer; on an N-d input it acts on the last dim, once per position (``out_hw``: the positions)."""

    name = "linear"
    feature_dim = -1

    def macs(self, m, c_in, c_out, out_hw):
        return c_in * c_out * out_hw[0] * out_hw[1]

    def dense_widths(self, m):
        return m.in_features, m.out_features

    def params(self, m, c_in, c_out):
        return c_in * c_out + (c_out if m.bias is not None else 0)

    def slice(self, m, in_idx, out_idx):
        _set(m, "weight", _take(_take(m.weight, 0, out_idx), 1, in_idx))
        _set(m, "bias", _take(m.bias, 0, out_idx))
        m.in_features, m.out_features = len(in_idx), len(out_idx)

    def input_mask(self, m, keep_in):
        return keep_in.view(1, -1).expand_as(m.weight)

    def input_importance(self, m, power=1):
        return m.weight.detach().abs().pow(power).sum(0)

    def input_columns(self, m, x):
        return x.reshape(x.shape[0], -1, m.in_features).transpose(1, 2)  # (N, features, positions)

    def manifest(self, m):
        return {"in_features": m.in_features, "out_features": m.out_features}

    def resize(self, m, shape):
        m.in_features, m.out_features = int(shape["in_features"]), int(shape["out_features"])
        m.weight = nn.Parameter(torch.empty(m.out_features, m.in_features))
        if m.bias is not None:
            m.bias = nn.Parameter(torch.empty(m.out_features))


class BatchNorm(LayerKind):
    name = "bn"
    role = "follower"

    def params(self, m, c_in, c_out):
        return 2 * c_in if m.affine else 0

    def dense_widths(self, m):
        return m.num_features, m.num_features

    def slice(self, m, in_idx, out_idx):
        for attr in ("weight", "bias"):
            _set(m, attr, _take(getattr(m, attr), 0, in_idx))
        for attr in ("running_mean", "running_var"):
            _set(m, attr, _take(getattr(m, attr), 0, in_idx), parameter=False)
        m.num_features = len(in_idx)

    def manifest(self, m):
        return {"num_features": m.num_features}

    def resize(self, m, shape):
        n = m.num_features = int(shape["num_features"])
        if m.affine:
            m.weight, m.bias = nn.Parameter(torch.empty(n)), nn.Parameter(torch.empty(n))
        if m.track_running_stats:
            m.running_mean, m.running_var = torch.zeros(n), torch.ones(n)


class LayerNorm(LayerKind):
    """LayerNorm over the channel dim (channels-last): weight and bias are sliced like BatchNorm's.

    It normalizes over the channels, so removing channels also changes the statistics the kept
    channels are normalized with (as in Torch-Pruning): the compact model is not the masked one,
    and :class:`~amc.prune.MaskPruner` refuses to mask channels a LayerNorm normalizes.
    """

    name = "layernorm"
    role = "follower"
    feature_dim = -1

    def params(self, m, c_in, c_out):
        return sum(c_in for p in (m.weight, m.bias) if p is not None)

    def dense_widths(self, m):
        return m.normalized_shape[-1], m.normalized_shape[-1]

    def slice(self, m, in_idx, out_idx):
        for attr in ("weight", "bias"):
            _set(m, attr, _take(getattr(m, attr), 0, in_idx))
        m.normalized_shape = (len(in_idx),)

    def manifest(self, m):
        return {"normalized_shape": m.normalized_shape[-1]}

    def resize(self, m, shape):
        n = int(shape["normalized_shape"])
        m.normalized_shape = (n,)
        for attr in ("weight", "bias"):
            if getattr(m, attr) is not None:
                setattr(m, attr, nn.Parameter(torch.empty(n)))


class ChannelParameter(LayerKind):
    """A parameter or buffer broadcast per channel in an elementwise op (ConvNeXt's layer scale ``gamma * x``).

    One adapter per tensor: ``attr`` is its attribute on the module named ``owner`` ("" for the model
    itself), ``axis`` the dim of the tensor that runs over the channels (e.g. 0 for a (C, 1, 1) scale).
    The layer is named by the tensor's qualified name (``features.1.0.layer_scale``). A follower: its values are
    sliced with the channels; it has no MACs (elementwise ops are not counted, as in FlopCounterMode).
    """

    name = "parameter"
    role = "follower"

    def __init__(self, owner: str, attr: str, axis: int):
        self.owner, self.attr, self.axis = owner, attr, axis

    def module_name(self, layer_name):
        return self.owner

    def tensor(self, m: nn.Module) -> torch.Tensor:
        return getattr(m, self.attr)

    def owned(self, m: nn.Module) -> list[torch.Tensor]:
        return [self.tensor(m)]

    def dense_widths(self, m):
        c = self.tensor(m).shape[self.axis]
        return c, c

    def params(self, m, c_in, c_out):
        t = self.tensor(m)
        return t.numel() // t.shape[self.axis] * c_in if isinstance(t, nn.Parameter) else 0

    def slice(self, m, in_idx, out_idx):
        t = self.tensor(m)
        _set(m, self.attr, _take(t, self.axis, in_idx), parameter=isinstance(t, nn.Parameter))


CONV, GROUPED, DEPTHWISE, LINEAR, BATCHNORM, LAYERNORM = Conv(), Grouped(), Depthwise(), Linear(), BatchNorm(), LayerNorm()


def kind_of(module: nn.Module) -> LayerKind | None:
    """The adapter of ``module``, or None for modules that have no channel-dependent weights."""
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return CONV
        if module.groups == module.in_channels == module.out_channels:
            return DEPTHWISE
        return GROUPED
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return BATCHNORM
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return LAYERNORM
    return None
