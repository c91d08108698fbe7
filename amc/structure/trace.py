"""Structure discovery: trace a CNN with ``torch.fx`` and find which channels must be pruned together.

The model is traced with an example input; every tensor with a channel dimension (dim 1, or the
last dim of a channels-last tensor made by ``permute(0, 2, 3, 1)``) gets a layout of *channel
spaces* (one normally, several after ``torch.cat``; each channel may span ``mult`` features after
flattening). Layers that only act per channel (BatchNorm, activations, dropout and stochastic depth,
pooling, depthwise convs, spatial slicing, a LayerNorm over the channels of a channels-last tensor --
module or ``F.layer_norm`` with a LayerNorm module's weight, torchvision's LayerNorm2d --, elementwise
ops with a per-channel parameter such as ConvNeXt's layer scale) pass the layout through, the
LayerNorms and parameters as *follower* layers sliced with the channels; elementwise ops merge the spaces
of their operands (union-find): residual additions, and broadcasts where one side is per channel
(N, C, 1, 1), e.g. squeeze-and-excitation gates, whose excite conv thereby becomes a producer of
the gated channels. A conv or linear with ``groups=1`` consumes its input layout and produces a
fresh space (a linear over the last dim of a channels-last tensor like a 1x1 conv). A grouped conv
(1 < groups < channels) constrains the spaces it reads and writes to keep the same number of
channels in each of its ``groups`` equal contiguous blocks. ``chunk(n)`` along channels folds a
space into ``n`` copies of one smaller space (every piece keeps the same channels); ``split`` with
explicit sizes cuts spaces at the piece boundaries (groups named ``producer[start:end]``) and pins
them, the sizes being constants of the code. ``x.size()`` / ``x.shape`` may size reshapes:
``x.view(x.size(0), -1)`` is a flatten; sizes written as constants pin the channels they fix. A
channel shuffle (view as (N, g, C/g, H, W), transpose dims 1 and 2, view back) is a permutation
followed when its g parts can be pruned alike: one conv's output (also a grouped conv's, ShuffleNet
V1) is folded into g copies of one space, or g parts laid out alike are merged; each kept channel of
the common part then spans g interleaved output channels (``mult`` g).

A group is *prunable* unless something it touches cannot be sliced, and the reason is recorded
instead of raising: the model's input or output, an op the analysis does not know, channel padding
(the option-A shortcut of CIFAR ResNets), a module called twice, a channel shuffle whose parts are
laid out differently (ShuffleNetV2's stream after its first unit), a per-channel tensor that is not a
parameter or buffer (computed in the forward pass), or the user's ``exclude`` patterns. Every conv,
linear, BatchNorm and LayerNorm call is recorded as a layer, also when it cannot be sliced (its groups
are then pinned), so cost accounting always covers the whole model.

The union-find's integer space ids are private to this module: :func:`trace` returns a
:class:`~amc.structure.graph.DependencyGraph` whose layouts and groups are keyed by group name.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
import itertools
import math
import operator
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import AmcError
from ..forward_context import eval_mode
from .graph import ChannelGroup, DependencyGraph, Layer, Segment
from .layers import BATCHNORM, CONV, DEPTHWISE, GROUPED, LAYERNORM, LINEAR, ChannelParameter, LayerKind

ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
                       nn.Sigmoid, nn.Tanh, nn.Mish, nn.Hardtanh, nn.Softplus, nn.Dropout, nn.Dropout1d,
                       nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity)
PER_CHANNEL_MODULES = ELEMENTWISE_MODULES + (nn.PReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                                             nn.AdaptiveMaxPool2d)
ELEMENTWISE_FUNCTIONS = {"relu", "relu_", "relu6", "leaky_relu", "elu", "gelu", "silu", "hardswish", "hardsigmoid",
                         "sigmoid", "tanh", "mish", "softplus", "neg", "clamp", "hardtanh", "dropout", "dropout1d",
                         "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "stochastic_depth",
                         "drop_path", "contiguous", "clone", "detach", "float", "to"}
PER_CHANNEL_FUNCTIONS = ELEMENTWISE_FUNCTIONS | {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                                                 "adaptive_max_pool2d"}
ARITHMETIC = {"add", "add_", "iadd", "sub", "sub_", "isub", "rsub", "mul", "mul_", "imul", "truediv", "div", "div_",
              "pow", "maximum", "minimum"}
REDUCTIONS = {"mean", "sum", "amax", "max", "amin", "min"}
RESHAPES = {"flatten", "view", "reshape", "unsqueeze", "squeeze", "expand", "expand_as"}
SIZED = {"view", "reshape", "expand"}  # ops whose arguments are target sizes
SPLITS = {"split", "chunk", "split_with_sizes", "tensor_split"}
SIZE_QUERIES = {"size", "dim", "numel", "nelement", "ndimension"}
TO_CHANNELS_LAST, TO_CHANNELS_FIRST = (0, 2, 3, 1), (0, 3, 1, 2)


@dataclass(frozen=True)
class _Seg:
    """``length`` channels of channel space ``space`` (an integer private to this module)."""

    space: int
    length: int
    mult: int = 1


_Layout = tuple[_Seg, ...]


@dataclass(frozen=True)
class _Shuffle:
    """A channel shuffle in progress: ``layout`` (of the 4-d input) viewed as ``groups`` x (C / groups)."""

    layout: _Layout
    groups: int
    shape: tuple[int, ...]  # the 4-d input's shape, which the last view restores
    transposed: bool = False


@dataclass
class _Layer:
    name: str
    module: nn.Module
    kind: LayerKind
    in_layout: _Layout
    out_layout: _Layout
    out_hw: tuple[int, int] = (1, 1)
    in_hw: tuple[int, int] = (1, 1)
    call: int = 1


class _Spaces:
    """Union-find over channel spaces, with a 'not prunable' reason per space."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.length: list[int] = []
        self.reason: dict[int, str] = {}
        self.blocks: dict[int, int] = {}

    def new(self, length: int, reason: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.length.append(length)
        if reason:
            self.reason[len(self.parent) - 1] = reason
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        if rb in self.reason and ra not in self.reason:
            self.reason[ra] = self.reason[rb]
        self.constrain(ra, self.blocks.pop(rb, 1))

    def constrain(self, s: int, blocks: int) -> None:
        """Space ``s`` must keep equal channel counts in ``blocks`` equal contiguous blocks."""
        root = self.find(s)
        self.blocks[root] = math.lcm(self.blocks.get(root, 1), blocks)

    def members(self, s: int) -> list[int]:
        root = self.find(s)
        return [i for i in range(len(self.parent)) if self.find(i) == root]

    def block(self, s: int, reason: str) -> None:
        self.reason.setdefault(self.find(s), reason)

    def why(self, s: int) -> str | None:
        return self.reason.get(self.find(s))


def _name_of(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t.split(".")[-1] if node.op == "call_module" else t
    return getattr(t, "__name__", str(t)).lstrip("_")


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def trace(model: nn.Module, input_shape: Sequence[int], exclude: Sequence[str] = ()) -> DependencyGraph:
    """Layers and channel groups of ``model``, found by tracing it on one input of ``input_shape`` (C, H, W).

    ``model`` is not modified (traced in eval mode on its device). ``exclude``: glob patterns of
    module names whose groups must not be pruned; a pattern that matches no conv/linear/BN layer
    is an :class:`~amc.errors.AmcError`, and so is a model that fx cannot trace or run.
    """
    return _Tracer(model, tuple(int(s) for s in input_shape)).graph(exclude)


class _Tracer:
    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        self.input_shape = input_shape
        self.spaces = _Spaces()
        self.layers: list[_Layer] = []
        self._layouts: dict[fx.Node, _Layout] = {}
        self._pieces: dict[fx.Node, list[_Layout]] = {}  # outputs of split/chunk along channels
        self._last: set[fx.Node] = set()  # channels-last tensors: their layout describes the last dim
        self._mixed: dict[fx.Node, str] = {}  # tensors inside a shuffle that is not followed -> the reason
        self._shuffles: dict[fx.Node, _Shuffle] = {}  # 5-d tensors inside a channel shuffle (view, transpose, view)
        self._sizes: set[fx.Node] = set()  # values computed from tensor sizes (x.size(), x.shape)
        self._calls: dict[str, int] = {}
        self._tensors: dict[str, torch.Tensor] = {}  # parameters and buffers by qualified name
        self._modules: dict[str, nn.Module] = {}  # modules by qualified name
        self.fixed_params = 0
        self._trace(model)

    # ------------------------------------------------------------ tracing
    def _trace(self, model: nn.Module) -> None:
        with eval_mode(model):  # the trace shares the model's modules: ShapeProp runs them in eval mode
            self._trace_in_eval_mode(model)

    def _trace_in_eval_mode(self, model: nn.Module) -> None:
        try:
            gm = fx.symbolic_trace(model)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise AmcError(f"cannot trace {type(model).__name__} with torch.fx: {first}") from None
        device = next(model.parameters()).device
        self._tensors = {**dict(model.named_buffers()), **dict(model.named_parameters())}
        self._modules = dict(model.named_modules())
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback on errors
            try:
                ShapeProp(gm).propagate(torch.zeros(1, *self.input_shape, device=device))
            except Exception as exc:
                cause = exc.__cause__ or exc  # ShapeProp wraps the model's own error
                first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
                raise AmcError(f"model does not run on input shape {self.input_shape}: {first} (give the model's input "
                               f"shape C H W, e.g. --input-shape 3 224 224)") from None
        for node in gm.graph.nodes:
            self._visit(node, gm)
        in_layers = {id(p) for layer in self.layers for p in layer.kind.owned(layer.module)}
        self.fixed_params = sum(p.numel() for p in model.parameters() if id(p) not in in_layers)
        for name, count in self._calls.items():
            if count > 1:
                for layer in self.layers:
                    if layer.name == name:
                        for seg in layer.in_layout + layer.out_layout:
                            self.spaces.block(seg.space, f"module '{name}' is called {count} times")

    def _fresh(self, node: fx.Node, reason: str | None = None, dim: int = 1) -> _Layout | None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        return (_Seg(self.spaces.new(shape[dim], reason), shape[dim]),)

    def _block(self, inputs: list[_Layout], why: str) -> None:
        for layout in inputs:
            for seg in layout:
                self.spaces.block(seg.space, why)

    def _unsupported(self, node: fx.Node, inputs: list[_Layout], why: str) -> _Layout | None:
        self._block(inputs, why)
        return self._fresh(node, why)

    def _tensor_args(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n in self._layouts else None)
        return found

    def _visit(self, node: fx.Node, gm: fx.GraphModule) -> None:
        if node.op == "placeholder":
            self._layouts[node] = self._fresh(node, "model input") or ()
            return
        if node.op == "output":
            for arg in self._tensor_args(node):
                self._block([self._layouts[arg]], "model output")
            return
        if node.op == "get_attr":
            return  # constants/parameters: handled by the op that uses them
        if node.target is operator.getitem and node.args[0] in self._pieces:
            self._layouts[node] = self._pieces[node.args[0]][node.args[1]]
            return
        args = self._tensor_args(node)
        inputs = [self._layouts[a] for a in args]
        if self._is_size(node, args):
            self._sizes.add(node)
            return
        shape = _shape(node)
        if shape is None and _name_of(node) in SPLITS and len(inputs) == 1 and args[0] not in self._last:
            pieces = self._split(node, args[0], inputs[0])
            metas, in_shape = node.meta.get("tensor_meta", ()), _shape(args[0])
            shapes = [tuple(getattr(m, "shape", ())) for m in metas] if isinstance(metas, (tuple, list)) else []
            along_channels = bool(shapes) and in_shape is not None and all(
                len(t) == len(in_shape) and t[0] == in_shape[0] and t[2:] == in_shape[2:] for t in shapes) \
                and sum(t[1] for t in shapes) == in_shape[1]
            sizes = [t[1] for t in shapes] if along_channels else []
            if pieces is None and sizes and all(sizes):
                why = f"'{_name_of(node)}' cuts channels into pieces that cannot be pruned alike"
                self._block(inputs, why)
                pieces = [(_Seg(self.spaces.new(n, why), n),) for n in sizes]
            if pieces is not None:
                self._pieces[node] = pieces
                return
        if shape is None:  # a tuple of tensors, a number computed from a tensor, ...
            if node.op == "call_function" and node.target is getattr and args:
                return  # x.dtype, x.device
            if inputs and any(n.op in ("call_module", "call_function", "call_method") for n in node.users):
                self._unsupported(node, inputs, f"output feeds non-tensor op '{_name_of(node)}'")
            return
        mixed = next((self._mixed[a] for a in args if a in self._mixed), None)
        shuffle = next((self._shuffles[a] for a in args if a in self._shuffles), None)
        if shuffle is not None:
            layout = self._shuffle_step(node, inputs, shuffle)
        elif mixed is not None and node.op != "call_module":
            layout = self._unsupported(node, inputs, mixed)
            if len(shape) != 4:
                self._mixed[node] = mixed
        elif node.op == "call_module":
            layout = self._visit_module(node, gm.get_submodule(node.target), args, inputs)
        elif args and args[0] in self._last:
            layout = self._visit_channels_last(node, args, inputs, shape)
        else:
            layout = self._visit_function(node, args, inputs, shape)
        if layout is not None:
            self._layouts[node] = layout

    def _is_size(self, node: fx.Node, args: list[fx.Node]) -> bool:
        """``x.size()``, ``x.shape``, ``x.dim()`` and numbers computed from them only (no tensor result)."""
        name = _name_of(node)
        if name in SIZE_QUERIES or (name == "getattr" and len(node.args) > 1 and node.args[1] in ("shape", "ndim")):
            return True
        if args or node.op == "call_module":
            return False
        used: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), used.append)
        return bool(used) and all(n in self._sizes for n in used)

    # ------------------------------------------------------------ modules
    def _call(self, node: fx.Node) -> tuple[str, int]:
        return self._count(str(node.target))

    def _count(self, name: str) -> tuple[str, int]:
        """(name, how many times the module or tensor ``name`` has been used so far, this use included)."""
        self._calls[name] = self._calls.get(name, 0) + 1
        return name, self._calls[name]

    def _visit_module(self, node: fx.Node, module: nn.Module, args: list[fx.Node],
                      inputs: list[_Layout]) -> _Layout | None:
        name, call = self._call(node)
        x = inputs[0] if inputs else ()
        last = bool(args) and args[0] in self._last
        mixed = next((self._mixed[a] for a in args if a in self._mixed), None)
        if isinstance(module, nn.Conv2d):
            return self._conv(node, name, call, module, x) if not last and args else \
                self._fixed_layer(node, name, call, module, CONV, inputs, f"conv '{name}' on a channels-last tensor")
        if isinstance(module, nn.Linear):
            return self._linear(node, name, call, module, args, x)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if last or not args or _features(x) != module.num_features:
                return self._fixed_layer(node, name, call, module, BATCHNORM, inputs,
                                         f"BatchNorm '{name}' on a tensor whose channels are not dim 1")
            self.layers.append(_Layer(name, module, BATCHNORM, x, x, call=call))
            return x
        if isinstance(module, nn.LayerNorm):
            return self._layer_norm(node, name, call, module, args, x)
        if mixed is not None:
            layout = self._unsupported(node, inputs, mixed)
            if len(_shape(node) or ()) != 4:
                self._mixed[node] = mixed
            return layout
        if isinstance(module, ELEMENTWISE_MODULES) and last and _same_shape(node):
            self._last.add(node)
            return x
        if isinstance(module, PER_CHANNEL_MODULES) and not last and _channels_kept(node):
            if isinstance(module, nn.PReLU) and module.num_parameters > 1:
                return self._unsupported(node, inputs, f"per-channel PReLU '{name}'")
            return x
        if isinstance(module, nn.Flatten) and not last:
            return self._reshape(node, inputs)
        return self._unsupported(node, inputs, f"unsupported module '{name}' ({type(module).__name__})")

    def _conv(self, node: fx.Node, name: str, call: int, module: nn.Conv2d, x: _Layout) -> _Layout | None:
        shape, in_shape = _shape(node), _shape(node.args[0])
        hw, in_hw = (shape[2], shape[3]), (in_shape[2], in_shape[3])
        if module.groups == 1:
            out = self._fresh(node)
            self.layers.append(_Layer(name, module, CONV, x, out, hw, in_hw, call))
            return out
        if module.groups == module.in_channels == module.out_channels:
            self.layers.append(_Layer(name, module, DEPTHWISE, x, x, hw, in_hw, call))
            return x
        return self._grouped_conv(node, name, call, module, x, hw, in_hw)

    def _grouped_conv(self, node: fx.Node, name: str, call: int, module: nn.Conv2d, x: _Layout, hw,
                      in_hw) -> _Layout | None:
        """A conv with 1 < groups: input and output spaces keep equal counts per conv group.

        Its input is pinned when it cannot be cut into the conv groups (a concatenation, one
        channel per group); its output stays prunable unless it has one channel per group.
        """
        g = module.groups
        if len(x) != 1 or x[0].length % g:
            self._block([x], f"grouped conv '{name}' reads a concatenation")
        elif module.in_channels == g:
            self._block([x], f"grouped conv '{name}' has one channel per group")
        else:
            self.spaces.constrain(x[0].space, g)
        if module.out_channels == g:
            out = self._fresh(node, f"grouped conv '{name}' has one channel per group")
        else:
            out = self._fresh(node)
            self.spaces.constrain(out[0].space, g)
        self.layers.append(_Layer(name, module, GROUPED, x, out, hw, in_hw, call))
        return out

    def _linear(self, node: fx.Node, name: str, call: int, module: nn.Linear, args: list[fx.Node],
                x: _Layout) -> _Layout | None:
        """A linear over (N, features), or over the last (channel) dim of a channels-last tensor."""
        shape, in_shape = _shape(node), _shape(node.args[0])
        last = bool(args) and args[0] in self._last
        if in_shape is None or not args or not (len(in_shape) == 2 or last) or _features(x) != module.in_features:
            return self._fixed_layer(node, name, call, module, LINEAR, [x] if args else [],
                                     f"linear '{name}' applied to a {len(in_shape or ())}-d tensor")
        positions = _positions(shape)
        out = self._fresh(node, dim=-1)
        self.layers.append(_Layer(name, module, LINEAR, x, out, positions, positions, call))
        if last:
            self._last.add(node)
        return out

    def _layer_norm(self, node: fx.Node, name: str, call: int, module: nn.LayerNorm, args: list[fx.Node],
                    x: _Layout) -> _Layout | None:
        """LayerNorm over the channels of a channels-last tensor: a follower (its weight and bias are sliced)."""
        last = bool(args) and args[0] in self._last
        if len(module.normalized_shape) == 1 and last \
                and _features(x) == module.normalized_shape[0] and _same_shape(node):
            self.layers.append(_Layer(name, module, LAYERNORM, x, x, _positions(_shape(node)),
                                      _positions(_shape(node)), call))
            self._last.add(node)
            return x
        why = f"LayerNorm '{name}' over {tuple(module.normalized_shape)} is not over the channels"
        if len(module.normalized_shape) == 1:
            return self._fixed_layer(node, name, call, module, LAYERNORM, [x] if args else [], why)
        return self._unsupported(node, [x] if args else [], why)  # its parameters are counted as fixed

    def _fixed_layer(self, node: fx.Node, name: str, call: int, module: nn.Module, kind: LayerKind,
                     inputs: list[_Layout], why: str) -> _Layout | None:
        """Record a layer the analysis cannot slice: its own pinned layouts keep its full cost counted."""
        self._block(inputs, why)
        c_in, c_out = kind.dense_widths(module)
        in_layout = (_Seg(self.spaces.new(c_in, why), c_in),)
        out_layout = in_layout if kind.role == "follower" else (_Seg(self.spaces.new(c_out, why), c_out),)
        shape = _shape(node)
        positions = (shape[2], shape[3]) if kind is not LINEAR and shape is not None and len(shape) == 4 \
            else _positions(shape)
        self.layers.append(_Layer(name, module, kind, in_layout, out_layout, positions, positions, call))
        if kind.role == "producer" and shape is not None and len(shape) >= 2 and shape[1] == c_out:
            return out_layout
        return self._fresh(node, why)

    def _split(self, node: fx.Node, arg: fx.Node, layout: _Layout) -> list[_Layout] | None:
        """Layouts of the pieces of a split/chunk along channels, or None if it is not one we can follow.

        ``chunk(n)`` sizes its pieces from the tensor, so the chunked space is folded into one space
        of ``length / n`` channels repeated ``n`` times (channel i is kept or removed in every piece).
        Explicit split sizes are constants of the model's code: the pieces are cut into their own
        spaces (so consumers still slice the right features) but cannot lose channels.
        """
        metas, in_shape = node.meta.get("tensor_meta"), _shape(arg)
        if not isinstance(metas, (tuple, list)) or in_shape is None or \
                any(u.target is not operator.getitem for u in node.users):
            return None
        shapes = [tuple(getattr(m, "shape", ())) for m in metas]
        if any(len(s) != len(in_shape) or s[0] != in_shape[0] or s[2:] != in_shape[2:] for s in shapes) \
                or sum(s[1] for s in shapes) != in_shape[1]:
            return None
        sizes = [s[1] for s in shapes]
        if _name_of(node) == "chunk":
            if len(layout) != 1 or len(set(sizes)) != 1 or self.spaces.blocks.get(self.spaces.find(layout[0].space), 1) > 1:
                return None
            piece = self._fold(layout[0], len(sizes))
            return None if piece is None else [(piece,)] * len(sizes)
        for seg in layout:
            self.spaces.block(seg.space, f"'{_name_of(node)}' with sizes fixed in the model's code")
        bounds = list(itertools.accumulate(sizes))
        while True:  # cut spaces until every piece boundary falls between segments
            offset, cut = 0, None
            for seg in layout:
                inner = [b for b in bounds if offset < b < offset + seg.length * seg.mult]
                if inner:
                    cut = (seg, inner[0] - offset)
                    break
                offset += seg.length * seg.mult
            if cut is None:
                break
            seg, at = cut
            if seg.mult != 1 or len(self.spaces.members(seg.space)) > 1:
                return None
            reason = self.spaces.why(seg.space)
            self._replace_space(seg.space, ((self.spaces.new(at, reason), at),
                                            (self.spaces.new(seg.length - at, reason), seg.length - at)))
            layout = self._layouts[arg]
        pieces, current, offset = [], [], 0
        for seg in layout:
            current.append(seg)
            offset += seg.length * seg.mult
            if offset in bounds:
                pieces.append(tuple(current))
                current = []
        return pieces

    def _fold(self, seg: _Seg, n: int) -> _Seg | None:
        """Fold ``seg``'s space (with every space merged with it) into ``n`` copies of one space of ``length / n``
        channels. Returns the copy as it appears in ``seg``'s place (same ``mult``), or None if ``n`` does not
        divide the length."""
        if seg.length % n:
            return None
        length = seg.length // n
        piece = self.spaces.new(length, self.spaces.why(seg.space))
        self._replace_space(seg.space, ((piece, length),) * n)
        return _Seg(piece, length, seg.mult)

    def _replace_space(self, space: int, parts: Sequence[tuple[int, int]]) -> None:
        """Replace every segment of ``space`` and of the spaces merged with it by segments of the ``(space,
        length)`` ``parts`` in all layouts so far; each keeps the ``mult`` of the segment it replaces."""
        members = set(self.spaces.members(space))

        def rewrite(lay: _Layout) -> _Layout:
            return tuple(part for seg in lay for part in (
                tuple(_Seg(s, n, seg.mult) for s, n in parts) if seg.space in members else (seg,)))

        for node, lay in self._layouts.items():
            self._layouts[node] = rewrite(lay)
        for node, pieces in self._pieces.items():
            self._pieces[node] = [rewrite(p) for p in pieces]
        for layer in self.layers:
            layer.in_layout, layer.out_layout = rewrite(layer.in_layout), rewrite(layer.out_layout)

    # ------------------------------------------------------------ functions and methods
    def _visit_function(self, node: fx.Node, args: list[fx.Node], inputs: list[_Layout],
                        shape: tuple[int, ...]) -> _Layout | None:
        fname = _name_of(node)
        if not inputs:
            return self._fresh(node, f"tensor made by '{fname}' in the forward pass")
        if fname in PER_CHANNEL_FUNCTIONS and len(inputs) == 1 and _channels_kept(node):
            return inputs[0]
        if fname in ARITHMETIC:
            return self._arithmetic(node, args, inputs)
        if fname == "cat":
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            if dim in (1, -3) and len(shape) == 4 or dim in (1, -1) and len(shape) == 2:
                return tuple(seg for layout in inputs for seg in layout)
            return self._unsupported(node, inputs, f"concatenation along dim {dim}")
        if fname == "permute" and len(inputs) == 1 and _dims(node) == TO_CHANNELS_LAST:
            self._last.add(node)
            return inputs[0]
        if fname in RESHAPES:
            return self._reshape(node, inputs)
        if fname in REDUCTIONS and len(inputs) == 1:
            in_shape = _shape(args[0])
            if in_shape and len(in_shape) == 4 and shape[:2] == in_shape[:2]:
                return inputs[0]
        if fname == "getitem" and len(inputs) == 1:
            index = node.args[1]
            whole = isinstance(index, tuple) and len(index) >= 2 and index[1] == slice(None)
            if whole and _channels_kept(node):
                return inputs[0]
            return self._unsupported(node, inputs, "indexing along the channel dimension")
        if fname == "pad" and len(inputs) == 1:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
            if _channels_kept(node):
                return inputs[0]
            return self._unsupported(node, inputs, f"channel zero-padding (pad={tuple(pad)}, e.g. option-A shortcut)")
        return self._unsupported(node, inputs, f"unsupported op '{fname}'")

    def _visit_channels_last(self, node: fx.Node, args: list[fx.Node], inputs: list[_Layout],
                             shape: tuple[int, ...]) -> _Layout | None:
        """An op on a channels-last tensor (N, H, W, C): elementwise ops, arithmetic, permute back."""
        fname = _name_of(node)
        if fname == "permute" and len(inputs) == 1 and _dims(node) == TO_CHANNELS_FIRST:
            return inputs[0]
        if fname in ELEMENTWISE_FUNCTIONS and len(inputs) == 1 and _same_shape(node):
            layout = inputs[0]
        elif fname in ARITHMETIC:
            layout = self._arithmetic(node, args, inputs, channel_dim=-1)
        elif fname == "layer_norm" and len(inputs) == 1 and _same_shape(node):
            layout = self._functional_layer_norm(node, inputs[0])
        else:
            layout = None
        if layout is None:
            return self._unsupported(node, inputs, f"'{fname}' on a channels-last tensor")
        if len(shape) == 4:
            self._last.add(node)
        return layout

    def _functional_layer_norm(self, node: fx.Node, x: _Layout) -> _Layout | None:
        """``F.layer_norm`` over the channels of a channels-last tensor (e.g. torchvision's LayerNorm2d).

        Its weight and bias must be those of an ``nn.LayerNorm`` module (then it is that module's layer) or
        absent; weights from anywhere else cannot be sliced and pin the channels.
        """
        shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
        weight = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
        bias = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
        if not isinstance(shape, (tuple, list)) or list(shape) != [_features(x)]:
            self._block([x], f"layer_norm over {shape} is not over the channels")
            return x
        if weight is None and bias is None:
            return x  # no parameters: normalizes the channels that are kept
        owner = str(weight.target).rpartition(".")[0] if isinstance(weight, fx.Node) and weight.op == "get_attr" \
            else None
        module = self._modules.get(owner) if owner is not None else None
        prefix = f"{owner}." if owner else ""
        if not isinstance(module, nn.LayerNorm) or weight.target != f"{prefix}weight" or not (
                bias is None and module.bias is None or isinstance(bias, fx.Node) and bias.target == f"{prefix}bias"):
            self._block([x], f"layer_norm '{node.name}' with a weight or bias that is not a LayerNorm module's")
            return x
        name, call = self._count(owner)
        self.layers.append(_Layer(name, module, LAYERNORM, x, x, _positions(_shape(node)), _positions(_shape(node)),
                                  call))
        return x

    def _channel_parameter(self, node: fx.Node, args: list[fx.Node], inputs: list[_Layout],
                           channel_dim: int) -> _Layout | None:
        """``x * gamma`` (or +, -, /) with a parameter or buffer that is per channel: a follower layer slicing it."""
        if len(inputs) != 1 or _shape(args[0]) != _shape(node) or any(s.mult != 1 for s in inputs[0]):
            return None
        others = [a for a in node.args if isinstance(a, fx.Node) and a not in self._layouts]
        if len(others) != 1 or others[0].op != "get_attr" or str(others[0].target) not in self._tensors:
            return None
        target, out_shape = str(others[0].target), _shape(node)
        shape = tuple(self._tensors[target].shape)
        axis = channel_dim % len(out_shape) - len(out_shape) + len(shape)  # right-aligned broadcast
        if not (0 <= axis < len(shape)) or shape[axis] != _features(inputs[0]) \
                or any(d != 1 for i, d in enumerate(shape) if i != axis):
            return None
        owner, _, attr = target.rpartition(".")
        name, call = self._count(target)
        self.layers.append(_Layer(name, self._modules[owner], ChannelParameter(owner, attr, axis), inputs[0], inputs[0],
                                  call=call))
        return inputs[0]

    def _arithmetic(self, node: fx.Node, args: list[fx.Node], inputs: list[_Layout],
                    channel_dim: int = 1) -> _Layout | None:
        """Elementwise ops: operands share channels; one side may broadcast (per channel or per position)."""
        fname, out_shape = _name_of(node), _shape(node)
        scaled = self._channel_parameter(node, args, inputs, channel_dim)
        if scaled is not None:
            return scaled
        constant = self._constant_operand(node, channel_dim)
        if constant is not None:  # the layout still flows through; its channels cannot be removed
            self._block(inputs, constant)
        shapes = [_shape(a) for a in args]
        if len(inputs) == 1:
            if shapes[0] != out_shape:
                return self._unsupported(node, inputs, f"'{fname}' with a broadcast tensor")
            return inputs[0]
        a, b = inputs[0], inputs[1]
        if len(inputs) > 2 or len(shapes[0]) != len(out_shape) or len(shapes[1]) != len(out_shape):
            return self._unsupported(node, inputs, f"'{fname}' of differently laid out tensors")
        ca, cb, c = shapes[0][channel_dim], shapes[1][channel_dim], out_shape[channel_dim]
        if ca == cb == c and [(s.length, s.mult) for s in a] == [(s.length, s.mult) for s in b]:
            for sa, sb in zip(a, b):
                self.spaces.union(sa.space, sb.space)
            return a if shapes[0] == out_shape else b
        if ca == 1 and cb == c and shapes[1] == out_shape:  # a per-position gate (N, 1, H, W)
            return b
        if cb == 1 and ca == c and shapes[0] == out_shape:
            return a
        return self._unsupported(node, inputs, f"'{fname}' of differently laid out tensors")

    def _constant_operand(self, node: fx.Node, channel_dim: int) -> str | None:
        """Why an operand without a layout (parameter, buffer, size) stops the channels from being pruned, if it does."""
        out_shape = _shape(node)
        for arg in node.args:
            if not isinstance(arg, fx.Node) or arg in self._layouts:
                continue
            if arg in self._sizes:
                return f"'{_name_of(node)}' by a size of a tensor"
            shape = _shape(arg)
            if shape is None or out_shape is None:
                continue  # a Python number
            axis = channel_dim % len(out_shape) - len(out_shape) + len(shape)  # right-aligned broadcast
            if 0 <= axis < len(shape) and shape[axis] > 1:
                what = arg.target if arg.op == "get_attr" else arg.name
                return f"'{_name_of(node)}' with a per-channel tensor '{what}'"
        return None

    def _shuffle_step(self, node: fx.Node, inputs: list[_Layout], state: _Shuffle) -> _Layout | None:
        """Follow a channel shuffle: view as (N, g, C/g, H, W), transpose dims 1 and 2, view back to (N, C, H, W)."""
        fname, shape = _name_of(node), _shape(node)
        if len(inputs) == 1 and fname in ("contiguous", "clone"):
            self._shuffles[node] = state
            return inputs[0]
        dims = [d % 5 for d in node.args[1:3] if isinstance(d, int)] if fname == "transpose" else []
        swaps = (len(dims) == 2 and set(dims) == {1, 2}) or (fname == "permute" and _dims(node) == (0, 2, 1, 3, 4))
        if len(inputs) == 1 and swaps and not state.transposed:
            self._shuffles[node] = _Shuffle(state.layout, state.groups, state.shape, transposed=True)
            return inputs[0]
        if len(inputs) == 1 and state.transposed and fname in ("view", "reshape", "flatten") and shape == state.shape:
            if _literal_channels(node, 1):
                return self._unsupported(node, inputs, f"channel shuffle: '{fname}' restores {shape[1]} channels "
                                                       f"written as a constant in the model's code")
            return self._interleave(node, state)
        why = f"'{fname}' of a channel-shuffle view is not followed"
        layout = self._unsupported(node, inputs, why)
        if len(shape or ()) != 4:
            self._mixed[node] = why
        return layout

    def _interleave(self, node: fx.Node, state: _Shuffle) -> _Layout | None:
        """The layout after a channel shuffle of ``state.groups`` parts: output channel j * g + i is channel j of
        part i. The parts must be pruned alike: one space is folded into g identical parts (a conv's or grouped
        conv's output), or g parts with the same segment structure are merged; either way each channel of the
        common part then spans g consecutive output features (``mult`` x g)."""
        g, layout = state.groups, state.layout
        why = (f"channel shuffle: its {g} parts are laid out differently (e.g. a stream shuffled before beside a "
               f"fresh branch), so no pruning keeps them alike")
        if len(layout) == 1:
            seg = layout[0]
            blocks = self.spaces.blocks.get(self.spaces.find(seg.space), 1)
            if blocks % g and g % blocks:
                return self._unsupported(node, [layout], why)
            piece = self._fold(seg, g)
            if piece is None:
                return self._unsupported(node, [layout], why)
            self.spaces.constrain(piece.space, max(blocks // g, 1))
            common = (piece,)
        else:
            size, parts, current, offset = _features(layout) // g, [], [], 0
            for seg in layout:
                current.append(seg)
                offset += seg.length * seg.mult
                if offset % size == 0:
                    parts.append(tuple(current))
                    current = []
            shapes = {tuple((s.length, s.mult) for s in part) for part in parts}
            if current or len(parts) != g or len(shapes) != 1:
                return self._unsupported(node, [layout], why)
            for part in parts[1:]:
                for a, b in zip(parts[0], part):
                    self.spaces.union(a.space, b.space)
            common = parts[0]
        return tuple(_Seg(s.space, s.length, s.mult * g) for s in common)

    def _reshape(self, node: fx.Node, inputs: list[_Layout]) -> _Layout | None:
        """Flatten by batch, adding or dropping trailing size-1 dims, expanding them; a channel split is a shuffle."""
        in_shape, out_shape, fname = _shape(node.args[0]), _shape(node), _name_of(node)
        if not in_shape or not out_shape:
            return self._unsupported(node, inputs, f"'{fname}' of an unknown shape")
        if len(in_shape) == 4 and len(out_shape) == 5 and out_shape[0] == in_shape[0] \
                and out_shape[1] * out_shape[2] == in_shape[1] and out_shape[3:] == in_shape[2:]:
            if _literal_channels(node, 2):  # C / g written as a number: it cannot follow pruned channels
                why = f"channel shuffle: '{fname}' splits the channels into {out_shape[2]} written as a constant"
                self._mixed[node] = why
                return self._unsupported(node, inputs, why)
            self._shuffles[node] = _Shuffle(inputs[0], out_shape[1], in_shape)
            return inputs[0]  # a placeholder: the ops on the 5-d tensor go through _shuffle_step
        fixed = _fixed_sizes(node)
        if fixed:
            return self._unsupported(node, inputs, f"'{fname}' to sizes fixed in the model's code {fixed}")
        if len(out_shape) == 2 and out_shape[0] == in_shape[0] and out_shape[1] == math.prod(in_shape[1:]):
            mult = math.prod(in_shape[2:])
            return tuple(_Seg(s.space, s.length, s.mult * mult) for s in inputs[0])
        if in_shape == out_shape:
            return inputs[0]
        if len(in_shape) >= 2 and len(out_shape) >= 2 and in_shape[:2] == out_shape[:2]:
            trailing_ones = all(d == 1 for d in in_shape[2:]) and all(d == 1 for d in out_shape[2:])
            expanded = fname in ("expand", "expand_as") and len(in_shape) == len(out_shape)
            if (trailing_ones or expanded) and all(s.mult == 1 for s in inputs[0]):
                return inputs[0]
        return self._unsupported(node, inputs, f"reshape from {in_shape} to {out_shape}")

    # ------------------------------------------------------------ groups
    def graph(self, exclude: Sequence[str]) -> DependencyGraph:
        """The public graph: spaces become group names, layouts name their groups."""
        by_root: dict[int, ChannelGroup] = {}
        taken: set[str] = set()
        for layer in self.layers:
            if layer.kind.role != "producer":
                continue
            offset = 0
            several = len({self.spaces.find(seg.space) for seg in layer.out_layout}) > 1
            base = layer.name if layer.call == 1 else f"{layer.name}#{layer.call}"
            for seg in layer.out_layout:
                root = self.spaces.find(seg.space)
                if root not in by_root:
                    name = _unique(f"{base}[{offset}:{offset + seg.length}]" if several else base, taken)
                    by_root[root] = ChannelGroup(len(by_root), name, self.spaces.length[root],
                                                 blocks=self.spaces.blocks.get(root, 1))
                    by_root[root].reason = self.spaces.why(root)
                if layer.name not in by_root[root].producers:
                    by_root[root].producers.append(layer.name)
                offset += seg.length

        def name(space: int) -> str:
            root = self.spaces.find(space)
            return by_root[root].name if root in by_root else f"~{root}"

        def public(layout: _Layout) -> tuple[Segment, ...]:
            return tuple(Segment(name(s.space), s.length, s.mult) for s in layout)

        layers = [Layer(la.name, la.module, la.kind, public(la.in_layout), public(la.out_layout), la.out_hw, la.in_hw,
                        la.call) for la in self.layers]
        by_name = {g.name: g for g in by_root.values()}
        for layer in layers:
            role = "consumers" if layer.kind.role == "producer" else "followers"
            for seg in layer.in_layout:
                group = by_name.get(seg.group)
                if group is not None and layer.name not in getattr(group, role):
                    getattr(group, role).append(layer.name)
        groups = list(by_root.values())
        for g in groups:
            if g.reason is None and g.channels % g.blocks:
                g.reason = f"grouped convs need {g.blocks} equal blocks of its {g.channels} channels"
            if g.reason is None and not g.consumers:
                g.reason = "no consumer layer"
        _apply_exclusions(layers, groups, exclude)
        return DependencyGraph(self.input_shape, layers, groups, self.fixed_params)


def _apply_exclusions(layers: list[Layer], groups: list[ChannelGroup], patterns: Sequence[str]) -> None:
    names = [layer.name for layer in layers]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise AmcError(f"exclude pattern '{pattern}' matches no conv, linear or BatchNorm layer "
                           f"(layer names look like: {', '.join(names[:4])})")
        for g in groups:
            if g.prunable and any(fnmatch.fnmatch(n, pattern) for n in g.producers + g.followers):
                g.reason = f"excluded by pattern '{pattern}'"


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name#2``, ``name#3``... if it is taken; the result is added to ``taken``."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}#{n}"
    taken.add(candidate)
    return candidate


def _features(layout: _Layout) -> int:
    return sum(s.length * s.mult for s in layout)


def _channels_kept(node: fx.Node) -> bool:
    """True when the op keeps dim 1 as it is (same size as its first tensor input)."""
    out = _shape(node)
    first = next((a for a in node.args if isinstance(a, fx.Node)), None)
    inp = _shape(first) if first is not None else None
    return out is not None and inp is not None and len(out) >= 2 and len(inp) >= 2 and out[1] == inp[1] \
        and out[0] == inp[0] and len(out) == len(inp)




def _same_shape(node: fx.Node) -> bool:
    """True when the op's output has the shape of its first tensor input."""
    first = next((a for a in node.args if isinstance(a, fx.Node)), None)
    return first is not None and _shape(node) is not None and _shape(node) == _shape(first)


def _positions(shape: tuple[int, ...] | None) -> tuple[int, int]:
    """Positions a layer over the last dim runs at: (H, W) of (N, H, W, C), (T, 1) of (N, T, C), (1, 1) of (N, C)."""
    if shape is None or len(shape) <= 2:
        return (1, 1)
    middle = shape[1:-1]
    return (middle[0], middle[1]) if len(middle) == 2 else (math.prod(middle), 1)


def _dims(node: fx.Node) -> tuple | None:
    """The dims of a ``permute`` call, however they were passed."""
    dims = node.kwargs.get("dims", node.args[1:])
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def _size_args(node: fx.Node) -> list:
    """The size arguments of a view/reshape/expand, batch first (ints, or nodes computed from sizes)."""
    sizes = node.kwargs.get("size", node.kwargs.get("shape", node.args[1:]))
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    return list(sizes)


def _literal_channels(node: fx.Node, position: int) -> bool:
    """True when a view/reshape writes the size at ``position`` (a channel dim) as a number > 1 in the code."""
    if _name_of(node) not in SIZED:
        return False
    sizes = _size_args(node)
    return position < len(sizes) and isinstance(sizes[position], int) and sizes[position] > 1


def _fixed_sizes(node: fx.Node) -> tuple[int, ...]:
    """Sizes written as constants where a view/reshape/expand sets the channel (or flattened feature) count."""
    if _name_of(node) not in SIZED:
        return ()
    sizes = _size_args(node)
    sizes = sizes[1:2] if _name_of(node) == "expand" else sizes[1:]
    return tuple(d for d in sizes if isinstance(d, int) and d not in (-1, 1))
