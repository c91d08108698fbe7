"""Accuracy and loss of a classifier on in-memory tensors, and a user's own evaluator for other tasks.

Also what makes scoring fast on CPU without changing its result: :func:`eval_batch_size` sizes batches by
activation memory (the largest activation tensor of a batch stays under a byte budget, so glibc serves it
from its heap instead of mapping fresh pages on every forward pass), and :func:`fold_batchnorm` folds
eval-mode BatchNorms into the conv/linear layer before them (outputs equal up to float rounding).
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from .errors import AmcError
from .forward_context import attached_hooks, eval_mode
from .models.registry import import_object


def load_evaluator(path: str) -> Callable[[nn.Module], float]:
    """The user's evaluator ``package.module:function``: ``function(model) -> float`` (a score in [0, 1], higher
    is better, e.g. mAP on the user's own validation data), checked to be callable."""
    fn = import_object(path, "evaluator")
    if not callable(fn):
        raise AmcError(f"evaluator '{path}' is a {type(fn).__name__}, not a function of the model")
    return fn


def custom_score(evaluator: Callable[[nn.Module], float], model: nn.Module) -> float:
    """``evaluator(model)`` in eval mode (training mode restored), checked to be a finite number."""
    with eval_mode(model):
        value = evaluator(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        name = getattr(evaluator, "__name__", "evaluator")
        raise AmcError(f"evaluator {name} returned {value!r}; it must return a finite number (higher = better)")
    return float(value)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Top-1/top-5 accuracy (fractions in [0, 1]) and mean cross-entropy loss.

    ``images``: already normalised float tensor (N, C, H, W) on the model's device.
    """
    correct1 = correct5 = 0
    loss = 0.0
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            x = images[start:start + batch_size]
            y = labels[start:start + batch_size].to(x.device)
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y.view(-1, 1)).any(1).sum().item()
    n = max(1, len(labels))
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss / n, "images": len(labels)}


# ------------------------------------------------------------------ batch sizes by activation memory
MIB = 2 ** 20


def _tensor_bytes(value) -> int:
    """Bytes of the largest tensor in ``value`` (a tensor, a ``TensorMetadata``, or nested tuples/lists/dicts)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # ShapeProp's TensorMetadata
        return math.prod(value.shape) * torch.empty((), dtype=value.dtype).element_size()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return max((_tensor_bytes(v) for v in value), default=0)
    return 0


def largest_activation_bytes(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes of the largest tensor that the forward pass of ``model`` on one input of ``input_shape``
    (C, H, W; batch of one, the dtype and device of the model's parameters) produces, the input included.

    Every value of the model's fx trace is measured (``ShapeProp``: module outputs, functional ops, adds,
    concatenations); a model fx cannot trace is measured by forward hooks on all of its modules instead
    (module outputs only). Runs in eval mode; ``model`` is not modified. Activations grow linearly with
    the batch, so a batch of ``b`` images holds tensors of up to ``b`` times this many bytes.
    """
    first = next(iter(model.parameters()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros(1, *input_shape, dtype=dtype, device=first.device if first is not None else "cpu")
    largest = _tensor_bytes(x)
    with eval_mode(model), torch.no_grad():
        try:
            gm = fx.symbolic_trace(model)
        except Exception:
            gm = None
        if gm is not None:
            ShapeProp(gm).propagate(x)
            for node in gm.graph.nodes:
                if node.op not in ("placeholder", "get_attr"):
                    largest = max(largest, _tensor_bytes(node.meta.get("tensor_meta")))
            return largest
        sizes: list[int] = []
        with attached_hooks(post=[(m, lambda _m, _i, out: sizes.append(_tensor_bytes(out))) for m in model.modules()]):
            model(x)
        return max([largest, *sizes])


def eval_batch_size(model: nn.Module, input_shape: Sequence[int], budget_bytes: float) -> int:
    """Images per scoring batch such that the largest activation tensor of a batch (see
    :func:`largest_activation_bytes`) stays within ``budget_bytes``; at least 1.

    A pruned copy of ``model`` never has larger activations, so the dense model's answer holds for all of them.
    """
    if not (isinstance(budget_bytes, (int, float)) and math.isfinite(budget_bytes) and budget_bytes > 0):
        raise AmcError(f"activation budget must be a finite number of bytes > 0, not {budget_bytes!r}")
    return max(1, int(budget_bytes // largest_activation_bytes(model, input_shape)))


# ------------------------------------------------------------------ BatchNorm folding
_FOLDABLE = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d, nn.Linear: nn.BatchNorm1d}


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None)
                or parametrize.is_parametrized(m))


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer, batchnorm)`` module names of ``model`` whose BatchNorm can be folded into the layer before it.

    A BatchNorm (1d/2d/3d, eval mode, running statistics) qualifies when its only input is the output of a
    Conv1d/2d/3d (Linear for BatchNorm1d on (N, features)) that is called once and used by nothing else (an
    fx trace decides). Not: BatchNorms after an add, a concatenation or an activation, layers called more
    than once, modules with hooks or parametrizations, training-mode ones. Empty for a model fx cannot
    trace, or one with hooks on a module the trace would inline.
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception:
        return []
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    if _hooked(model) or any(_hooked(m) for name, m in model.named_modules() if name and name not in calls):
        return []  # the trace would drop hooks of the modules it inlines
    modules = dict(model.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if bn is None or len(node.args) != 1 or node.kwargs or calls[node.target] != 1:
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1 or calls[prev.target] != 1:
            continue
        if _foldable(modules[prev.target], bn):
            pairs.append((prev.target, node.target))
    return pairs


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    return (_FOLDABLE.get(type(layer)) is type(bn) and not bn.training and not layer.training and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None and not _hooked(bn) and not _hooked(layer)
            and bn.num_features == (layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels))


def fold_pairs(model: nn.Module, pairs: Sequence[tuple[str, str]], *, in_place: bool = False) -> nn.Module | None:
    """A deep copy of ``model`` with each ``(layer, batchnorm)`` of ``pairs`` folded: the layer's weights and
    bias absorb the normalisation (``torch.nn.utils.fusion``; weights keep their memory format) and the
    BatchNorm becomes an ``nn.Identity``. ``pairs`` come from :func:`foldable_pairs` of this model or of one
    with the same structure (a pruned copy of it: the trace need not be repeated). None when a pair does not
    name a foldable layer and BatchNorm of ``model``, or ``model`` cannot be copied; ``model`` is not changed,
    unless ``in_place``: then ``model`` itself is folded and returned (no copy; for a model scored once and
    dropped, such as a search episode's compact model).
    """
    modules = dict(model.named_modules())
    if not all(a in modules and b in modules and _foldable(modules[a], modules[b]) for a, b in pairs):
        return None
    if in_place:
        folded = model
    else:
        try:
            folded = copy.deepcopy(model)
        except Exception:  # e.g. torch.nn.utils.prune's computed weights cannot be deep-copied
            return None
    for layer_name, bn_name in pairs:
        layer, bn = folded.get_submodule(layer_name), folded.get_submodule(bn_name)
        fuse = fuse_linear_bn_weights if isinstance(layer, nn.Linear) else fuse_conv_bn_weights
        # torch.nn.utils.fusion's arithmetic (elementwise on the weight: keeps its memory format), on this layer
        layer.weight, layer.bias = fuse(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
        _replace(folded, bn_name, nn.Identity())
    return folded


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A module computing ``model``'s eval-mode function with BatchNorms folded into the layer before them
    (:func:`foldable_pairs`, :func:`fold_pairs`). Outputs equal ``model``'s up to float rounding. ``model``
    is never modified and shares nothing with the result; a model with nothing to fold, or one fx cannot
    trace or copy, is returned as it is (not a copy).
    """
    pairs = foldable_pairs(model)
    folded = fold_pairs(model, pairs) if pairs else None
    return model if folded is None else folded
