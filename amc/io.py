"""Files: checkpoints, models with their shape manifest, atomic writes, ONNX export.

Accepted checkpoints: a plain ``state_dict``; a dict holding one under ``state_dict``, ``model``,
``model_state_dict`` or ``net``; keys may carry a ``module.`` prefix (DataParallel). Files are read
with ``torch.load(weights_only=True)``. amc's own checkpoints are dicts with ``state_dict``,
``model_spec`` and, for pruned models, ``channel_manifest`` (the conv/linear/BN shapes that differ
from the dense architecture), so :func:`open_model` rebuilds a compact model in a fresh process.

Every write goes to a temporary file in the target's folder, is fsync'ed and renamed over the
target, and the folder is fsync'ed: a crash leaves the old file or the new one, never a torn one.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any, Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import AmcError
from .config import ModelConfig
from .models import ModelSpec, build_model, default_input_shape, default_num_classes, model_arguments
from .structure.layers import kind_of

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU as a dict (``{"state_dict": ...}`` for plain state dicts)."""
    p = Path(path)
    if not p.is_file():
        raise AmcError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a torch file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AmcError(f"cannot read checkpoint {p}: {first}") from None
    if not isinstance(obj, dict):
        raise AmcError(f"checkpoint {p} holds a {type(obj).__name__}, expected a state_dict or a dict with one")
    for key in STATE_DICT_KEYS:
        if isinstance(obj.get(key), dict):
            return {**obj, "state_dict": obj[key]}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    raise AmcError(f"checkpoint {p} has no state_dict (keys: {', '.join(map(str, list(obj)[:8]))})")


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly; a mismatch is an :class:`AmcError` listing the keys."""
    state_dict = strip_prefix(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise AmcError(f"{source} does not match the model; " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=False)  # only BatchNorm counters may be absent (checked above)
    return model


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        if path.exists():  # keep the mode the user gave the file
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:  # mkstemp creates 0600; give a new file the usual mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ---------------------------------------------------------------- compact models
def channel_manifest(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shapes of every conv, linear, BatchNorm and LayerNorm module, and of the tensors held directly by
    other modules (per-channel layer scales: ``{"shape": [...]}`` under their qualified name): enough to
    rebuild a compact model."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        kind = kind_of(m)
        if kind is not None:
            out[name] = kind.manifest(m)
            continue
        for attr, tensor in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            out[f"{name}.{attr}" if name else attr] = {"shape": list(tensor.shape)}
    return out


def resize_to_manifest(model: nn.Module, manifest: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Give ``model``'s modules the shapes in ``manifest`` (uninitialised values; load a state_dict next)."""
    modules = dict(model.named_modules())
    tensors = {**dict(model.named_buffers()), **dict(model.named_parameters())}

    def known(name: str, entry: Mapping[str, Any]) -> bool:
        if "shape" in entry:
            return name in tensors
        return name in modules and kind_of(modules[name]) is not None

    unknown = [n for n, entry in manifest.items() if not known(n, entry)]
    if unknown:
        raise AmcError(f"shape manifest names layers the model lacks: {', '.join(unknown[:5])}")
    for name, entry in manifest.items():
        if "shape" not in entry:
            kind_of(modules[name]).resize(modules[name], dict(entry))
            continue
        owner, _, attr = name.rpartition(".")
        old, empty = tensors[name], torch.empty(*entry["shape"], dtype=tensors[name].dtype)
        setattr(modules[owner], attr, nn.Parameter(empty, requires_grad=old.requires_grad)
                if isinstance(old, nn.Parameter) else empty)
    return model


def open_model(name: str | None, checkpoint: str | Path | None = None, num_classes: int | None = None,
               input_shape: tuple[int, ...] | None = None, kwargs: dict | None = None,
               ) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Build a model and load its weights; returns (model in eval mode, spec, checkpoint extras).

    ``checkpoint`` may be an amc checkpoint (it records its own spec and, when pruned, the channel
    shapes, so ``name`` may be omitted) or any state_dict-style file for the architecture ``name``.
    ``kwargs``: the architecture's constructor arguments (an amc checkpoint records its own).
    """
    ckpt = read_checkpoint(checkpoint) if checkpoint else {}
    if "model_spec" in ckpt:
        spec = ModelSpec.from_dict(ckpt["model_spec"])
        if name and name != spec.name:
            raise AmcError(f"checkpoint {checkpoint} holds a '{spec.name}' model, not '{name}'")
        if kwargs and kwargs != spec.kwargs:
            raise AmcError(f"checkpoint {checkpoint} records the model arguments {spec.kwargs}, not {kwargs}")
    elif name:
        classes = num_classes or _classes_in(ckpt.get("state_dict", {})) or default_num_classes(name)
        spec = ModelSpec(name, classes, tuple(input_shape or default_input_shape(name)), dict(kwargs or {}))
    else:
        raise AmcError("give a model name (e.g. resnet20) or an amc checkpoint that records one")
    model = build_model(spec)
    if ckpt.get("channel_manifest"):
        resize_to_manifest(model, ckpt["channel_manifest"])
    if ckpt:
        load_weights(model, ckpt["state_dict"], f"checkpoint {checkpoint}")
    return model.eval(), spec, {k: v for k, v in ckpt.items() if k != "state_dict"}


def open_configured(model: ModelConfig, num_classes: int | None = None) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """:func:`open_model` for a :class:`~amc.config.ModelConfig` (name, checkpoint, classes, input shape,
    constructor arguments); ``num_classes`` is used when the config gives none."""
    return open_model(model.name, model.checkpoint, model.num_classes or num_classes, model.input_shape,
                      model_arguments(model.arguments))


def _classes_in(state_dict: dict) -> int | None:
    """Output size of the last 2-d weight in the state dict (the classifier, for common CNNs)."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and getattr(v, "dim", lambda: 0)() == 2]
    return int(weights[-1].shape[0]) if weights else None


def save_model(path: str | Path, model: nn.Module, spec: ModelSpec, **extra: Any) -> None:
    """Save an amc checkpoint: state_dict, spec and the channel shapes needed to rebuild a compact model."""
    dense = channel_manifest(build_model(spec))
    changed = {k: v for k, v in channel_manifest(model).items() if dense.get(k) != v}
    atomic_save({"state_dict": model.state_dict(), "model_spec": spec.to_dict(), "channel_manifest": changed,
                 **extra}, path)


def export_torchscript(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> str:
    """Save ``model`` as TorchScript (``torch.jit.trace`` on a batch of 2), load it back and check its outputs.

    Returns a one-line description of what was checked."""
    x = torch.randn(2, *input_shape)
    model = model.cpu().eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about Python values in the forward pass
            traced = torch.jit.trace(model, x)
    except Exception as exc:
        raise AmcError(f"TorchScript export failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch >= 2.10 marks TorchScript deprecated (torch.export is its successor)
        atomic_write(path, lambda t: torch.jit.save(traced, t))
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        got, want = loaded(x), model(x)
    if not (isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor)):
        return "saved; loaded back (outputs are not one tensor: not compared)"
    diff = float((got - want).abs().max())
    if diff > 1e-4:
        raise AmcError(f"the saved TorchScript module's outputs differ from torch by {diff:.2e}")
    return f"saved; loaded back, outputs match (max |diff| {diff:.1e}); load with torch.jit.load"


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> str:
    """Export ``model`` to ONNX; when onnxruntime is installed, check its outputs against torch's.

    Returns a one-line description of what was checked.
    """
    x = torch.randn(2, *input_shape)
    model = model.cpu().eval()
    tmp = Path(path).with_name(f".{Path(path).name}.export.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's constant-folding notes
            # dynamo=False: the TorchScript exporter needs only the onnx package (no onnxscript)
            torch.onnx.export(model, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        data = tmp.read_bytes()
    except Exception as exc:
        raise AmcError(f"ONNX export failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write(path, lambda t: Path(t).write_bytes(data))
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        return "exported (onnxruntime not installed: outputs not checked)"
    got = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        diff = float((torch.from_numpy(got) - model(x)).abs().max())
    if diff > 1e-3:
        raise AmcError(f"ONNX Runtime outputs differ from torch by {diff:.2e}")
    return f"exported; ONNX Runtime matches torch (max |diff| {diff:.1e})"
