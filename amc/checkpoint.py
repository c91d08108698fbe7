"""Reading and writing checkpoints.

Accepted inputs: a plain ``state_dict``; a dict holding one under ``state_dict``, ``model``,
``model_state_dict`` or ``net``; keys may carry a ``module.`` prefix (DataParallel). amc's own
checkpoints are dicts with ``state_dict``, ``model_spec`` and, for pruned models, ``channel_manifest``
(see :mod:`amc.compaction`). Writes are atomic: a temporary file is renamed over the target.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import AmcError

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


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
