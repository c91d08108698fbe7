"""Models by name: built-in CIFAR/ImageNet CNNs, ``torchvision:NAME`` and a user's ``package.module:factory``.

A :class:`ModelSpec` is what a checkpoint or policy file records to rebuild the same architecture:
the registry name (or factory path), the number of classes and the input shape (C, H, W).
"""
from __future__ import annotations

import ast
import fnmatch
import importlib
import inspect
import os
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable, Sequence

from torch import nn

from ..errors import AmcError
from .mobilenet import MobileNetV1, MobileNetV2
from .resnet_cifar import CifarResNet
from .vgg import VGG

BUILTIN: dict[str, tuple[Callable[..., nn.Module], tuple[int, int, int]]] = {
    **{f"resnet{d}": (partial(CifarResNet, d), (3, 32, 32)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "plain20": (partial(CifarResNet, 20, residual=False), (3, 32, 32)),
    "vgg16": (VGG, (3, 32, 32)),
    "mobilenet_v1": (partial(MobileNetV1, stem="cifar"), (3, 32, 32)),
    "mobilenet_v2": (partial(MobileNetV2, stem="cifar"), (3, 32, 32)),
    "mobilenet_v1_imagenet": (partial(MobileNetV1, stem="imagenet"), (3, 224, 224)),
    "mobilenet_v2_imagenet": (partial(MobileNetV2, stem="imagenet"), (3, 224, 224)),
}


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild an architecture: ``name`` is a registry name, ``torchvision:NAME`` or ``pkg.mod:factory``."""

    name: str
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (3, 32, 32)
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(d["name"], int(d.get("num_classes", 10)), tuple(d.get("input_shape", (3, 32, 32))), dict(d.get("kwargs", {})))


def model_arguments(items: Sequence[str]) -> dict:
    """Constructor keyword arguments from ``KEY=VALUE`` strings (``width=0.5`` -> ``{"width": 0.5}``).

    VALUE is read as a Python literal (number, bool, None, tuple, quoted string) and kept as a string otherwise."""
    kwargs = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise AmcError(f"model argument '{item}' must look like KEY=VALUE (e.g. width=0.5)")
        if key in kwargs:
            raise AmcError(f"model argument '{key}' given twice")
        try:
            kwargs[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            kwargs[key] = text.strip()
    return kwargs


def available_models() -> list[str]:
    return sorted(BUILTIN)


def default_input_shape(name: str) -> tuple[int, int, int]:
    if name in BUILTIN:
        return BUILTIN[name][1]
    return (3, 224, 224) if name.startswith("torchvision:") else (3, 32, 32)


def default_num_classes(name: str) -> int:
    """Classifier outputs when neither the user nor a checkpoint says: 1000 for ImageNet architectures
    (``*_imagenet``, ``torchvision:NAME``), a factory's own ``num_classes`` default, else 10 (CIFAR-10)."""
    if name.endswith("_imagenet") or name.startswith("torchvision:"):
        return 1000
    if name not in BUILTIN and ":" in name:
        default = inspect.signature(import_object(name)).parameters.get("num_classes")
        if default is not None and isinstance(default.default, int):
            return default.default
    return 10


def import_object(path: str, what: str = "model") -> Callable:
    """The object ``package.module:name`` names (importing that module runs its code)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise AmcError(f"{what} '{path}' must look like package.module:name")
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:  # console scripts do not look in the working folder; python -m does
        sys.path.append(here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AmcError(f"cannot import module '{module_name}' for {what} '{path}': {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AmcError(f"module '{module_name}' has no attribute '{attr}' ({what} '{path}')") from None




def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model of the given spec (random weights)."""
    name = spec.name
    if name in BUILTIN:
        try:
            return BUILTIN[name][0](num_classes=spec.num_classes, **spec.kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:  # only model arguments can make a built-in fail
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AmcError(f"model '{name}' cannot be built with the arguments {spec.kwargs}: {first[:200]}") from None
    if name.startswith("torchvision:"):
        try:
            import torchvision.models as tvm  # noqa: PLC0415  (optional dependency)
        except Exception as exc:  # torchvision may exist but fail to load its compiled ops
            raise AmcError(f"model '{name}' needs torchvision, which does not import here: {exc}") from None
        try:
            return tvm.get_model(name.split(":", 1)[1], weights=None, num_classes=spec.num_classes, **spec.kwargs)
        except ValueError as exc:
            raise AmcError(f"unknown torchvision model '{name}': {exc}") from None
    if ":" in name:
        factory = import_object(name)
        try:
            model = factory(num_classes=spec.num_classes, **spec.kwargs)
        except TypeError:
            model = factory(**spec.kwargs)
        if not isinstance(model, nn.Module):
            raise AmcError(f"factory '{name}' returned {type(model).__name__}, not a torch.nn.Module")
        return model
    close = fnmatch.filter(BUILTIN, f"*{name}*")
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise AmcError(f"unknown model '{name}'{hint}; known: {', '.join(available_models())}, "
                   "torchvision:NAME or package.module:factory")
