"""Model architectures, the name registry, and opening/saving models with their checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import atomic_save, load_weights, read_checkpoint
from ..compaction import channel_manifest, resize_to_manifest
from ..errors import AmcError
from .registry import ModelSpec, available_models, build_model, default_input_shape

__all__ = ["ModelSpec", "available_models", "build_model", "default_input_shape", "open_model", "save_model"]


def open_model(name: str | None, checkpoint: str | Path | None = None, num_classes: int | None = None,
               input_shape: tuple[int, int, int] | None = None) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Build a model and load its weights; returns (model in eval mode, spec, checkpoint extras).

    ``checkpoint`` may be an amc checkpoint (it records its own spec and, when pruned, the channel
    shapes, so ``name`` may be omitted) or any state_dict-style file for the architecture ``name``.
    """
    ckpt = read_checkpoint(checkpoint) if checkpoint else {}
    if "model_spec" in ckpt:
        spec = ModelSpec.from_dict(ckpt["model_spec"])
        if name and name != spec.name:
            raise AmcError(f"checkpoint {checkpoint} holds a '{spec.name}' model, not '{name}'")
    elif name:
        classes = num_classes or _classes_in(ckpt.get("state_dict", {})) or 10
        spec = ModelSpec(name, classes, tuple(input_shape or default_input_shape(name)))
    else:
        raise AmcError("give a model name (e.g. resnet20) or an amc checkpoint that records one")
    model = build_model(spec)
    if ckpt.get("channel_manifest"):
        resize_to_manifest(model, ckpt["channel_manifest"])
    if ckpt:
        load_weights(model, ckpt["state_dict"], f"checkpoint {checkpoint}")
    return model.eval(), spec, {k: v for k, v in ckpt.items() if k != "state_dict"}


def _classes_in(state_dict: dict) -> int | None:
    """Output size of the last 2-d weight in the state dict (the classifier, for common CNNs)."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and getattr(v, "dim", lambda: 0)() == 2]
    return int(weights[-1].shape[0]) if weights else None


def save_model(path: str | Path, model: nn.Module, spec: ModelSpec, **extra: Any) -> None:
    """Save an amc checkpoint: state_dict, spec and the channel shapes needed to rebuild a compact model."""
    dense = channel_manifest(build_model(spec))
    shapes = channel_manifest(model)
    changed = {k: v for k, v in shapes.items() if dense.get(k) != v}
    atomic_save({"state_dict": model.state_dict(), "model_spec": spec.to_dict(), "channel_manifest": changed,
                 **extra}, path)
