"""Sparse model files that are really smaller: bitmask + non-zero values per pruned weight.

:func:`save_sparse` writes one file: a magic line, a JSON header (tensor names, shapes, dtypes,
encodings, offsets; the architecture spec when given) and one binary payload. Each floating
tensor with two or more dimensions (conv/linear weights) whose sparse encoding is smaller than its
dense bytes is stored as a bitmask of its non-zero positions (``numpy.packbits``, one bit per
element) plus its non-zero values, in the tensor's own dtype (exact), or, with ``quantize=True``,
as int8 with one scale per tensor (``value ~= q * scale``, error at most ``scale / 2``; Deep
Compression style). Every other tensor (biases, BatchNorm, counters) is stored dense. The file is
written atomically (temporary file, fsync, rename).

:func:`load_sparse` returns the dense ``state_dict`` (equal to the saved one for float storage);
:func:`open_sparse` also rebuilds the model when the file records its spec.
:func:`sparse_size_report` compares the bytes on disk with ``torch.save`` of the dense state_dict.
Masks of ``torch.nn.utils.prune`` modules are folded before saving (the file holds the weights
the model computes with).
"""
from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import AmcError
from .io import atomic_write, channel_manifest, load_weights, resize_to_manifest
from .models import ModelSpec, build_model

MAGIC = b"AMCSPARSE\x01\n"
FORMAT_VERSION = 1


def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state_dict with ``torch.nn.utils.prune`` masks folded (``weight`` keys; ``model`` untouched)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for key in [k for k in state if k.endswith("weight_orig")]:
        stem = key[:-len("weight_orig")]
        if stem + "weight_mask" in state:
            state[stem + "weight"] = state.pop(key) * state.pop(stem + "weight_mask")
    return state


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _encode(name: str, t: torch.Tensor, quantize: bool) -> tuple[dict, list[bytes]]:
    entry: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if t.is_floating_point() and t.dim() >= 2:
        flat = t.contiguous().reshape(-1)
        nonzero = flat != 0
        values = flat[nonzero]
        bits = np.packbits(nonzero.numpy()).tobytes()
        if quantize:
            peak = float(values.abs().max()) if values.numel() else 0.0
            scale = peak / 127 if peak > 0 else 1.0
            q = torch.clamp(torch.round(values.double() / scale), -127, 127).to(torch.int8)
            entry.update(encoding="sparse_int8", nnz=int(values.numel()), scale=scale)
            return entry, [bits, _raw(q)]
        if len(bits) + values.numel() * values.element_size() < flat.numel() * flat.element_size():
            entry.update(encoding="sparse", nnz=int(values.numel()))
            return entry, [bits, _raw(values)]
    entry["encoding"] = "dense"
    return entry, [_raw(t)]


def save_sparse(model: nn.Module | dict[str, torch.Tensor], path: str | os.PathLike, *, quantize: bool = False,
                spec: ModelSpec | None = None) -> int:
    """Write ``model`` (a module, masks folded, or a state_dict) to ``path`` as a sparse file; returns its bytes.

    ``quantize``: store non-zero weight values as int8 with a per-tensor scale (error <= scale / 2)
    instead of their exact values. ``spec``: the architecture, recorded so :func:`open_sparse`
    rebuilds the model (with the channel shapes of a channel-pruned model).
    """
    state = dense_state_dict(model) if isinstance(model, nn.Module) else {k: v.detach().cpu() for k, v in model.items()}
    entries, chunks, offset = [], [], 0
    for name, tensor in state.items():
        entry, parts = _encode(name, tensor, quantize)
        entry["offset"] = offset
        entry["nbytes"] = sum(len(p) for p in parts)
        offset += entry["nbytes"]
        entries.append(entry)
        chunks.extend(parts)
    header: dict[str, Any] = {"format": "amc.sparse", "version": FORMAT_VERSION, "quantized": quantize,
                              "tensors": entries}
    if spec is not None:
        header["model_spec"] = spec.to_dict()
        if isinstance(model, nn.Module):
            dense = channel_manifest(build_model(spec))
            header["channel_manifest"] = {k: v for k, v in channel_manifest(model).items() if dense.get(k) != v}
    head = json.dumps(header, separators=(",", ":")).encode()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for chunk in chunks:
                f.write(chunk)

    atomic_write(path, write)
    return os.path.getsize(path)


def _read(path: str | os.PathLike) -> tuple[dict, bytes]:
    p = Path(path)
    if not p.is_file():
        raise AmcError(f"sparse model file not found: {p}")
    data = p.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise AmcError(f"{p} is not an amc sparse model file (written by amc.save_sparse)")
    (size,) = struct.unpack("<Q", data[len(MAGIC):len(MAGIC) + 8])
    start = len(MAGIC) + 8
    try:
        header = json.loads(data[start:start + size].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AmcError(f"{p} has a corrupt header") from None
    if header.get("version") != FORMAT_VERSION:
        raise AmcError(f"{p} has sparse format version {header.get('version')}, this amc reads {FORMAT_VERSION}")
    return header, data[start + size:]


def _decode(entry: dict, payload: bytes, source: str) -> torch.Tensor:
    dtype = getattr(torch, entry["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise AmcError(f"{source}: tensor '{entry['name']}' has unknown dtype {entry['dtype']}")
    shape, start = tuple(entry["shape"]), entry["offset"]
    blob = bytearray(payload[start:start + entry["nbytes"]])
    if len(blob) != entry["nbytes"]:
        raise AmcError(f"{source} is truncated (tensor '{entry['name']}')")
    numel = int(np.prod(shape)) if shape else 1
    if entry["encoding"] == "dense":
        return torch.frombuffer(blob, dtype=torch.uint8).view(dtype).reshape(shape).clone() if blob else \
            torch.zeros(shape, dtype=dtype)
    nbits = (numel + 7) // 8
    mask = torch.from_numpy(np.unpackbits(np.frombuffer(bytes(blob[:nbits]), dtype=np.uint8))[:numel].astype(bool))
    rest = blob[nbits:]
    if entry["encoding"] == "sparse_int8":
        q = torch.frombuffer(rest, dtype=torch.int8) if rest else torch.zeros(0, dtype=torch.int8)
        values = (q.double() * entry["scale"]).to(dtype)
    elif entry["encoding"] == "sparse":
        values = torch.frombuffer(rest, dtype=torch.uint8).view(dtype) if rest else torch.zeros(0, dtype=dtype)
    else:
        raise AmcError(f"{source}: tensor '{entry['name']}' has unknown encoding {entry['encoding']}")
    if int(mask.sum()) != values.numel() or values.numel() != entry["nnz"]:
        raise AmcError(f"{source} is corrupt: tensor '{entry['name']}' has {values.numel()} values for "
                       f"{int(mask.sum())} non-zero positions")
    out = torch.zeros(numel, dtype=dtype)
    out[mask] = values
    return out.reshape(shape)


def load_sparse(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The dense ``state_dict`` stored in a :func:`save_sparse` file (load it with ``model.load_state_dict``)."""
    header, payload = _read(path)
    try:
        return {e["name"]: _decode(e, payload, str(path)) for e in header["tensors"]}
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise AmcError(f"{path} is corrupt: {exc}") from None


def sparse_header(path: str | os.PathLike) -> dict:
    """The JSON header of a sparse file: ``tensors`` (name, shape, dtype, encoding, nnz, scale), ``model_spec``..."""
    return _read(path)[0]


def open_sparse(path: str | os.PathLike) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model stored by ``save_sparse(..., spec=...)``: (dense model in eval mode, spec)."""
    header = sparse_header(path)
    if "model_spec" not in header:
        raise AmcError(f"{path} records no architecture (saved without spec); use load_sparse and your own model")
    spec = ModelSpec.from_dict(header["model_spec"])
    model = build_model(spec)
    if header.get("channel_manifest"):
        resize_to_manifest(model, header["channel_manifest"])
    load_weights(model, load_sparse(path), f"sparse file {path}")
    return model.eval(), spec


def sparse_size_report(model: nn.Module | dict[str, torch.Tensor], path: str | os.PathLike) -> dict[str, float]:
    """Bytes on disk: ``dense_bytes`` (``torch.save`` of the dense state_dict), ``sparse_bytes`` (the file at
    ``path``), their ``ratio`` (sparse / dense) and the ``sparsity`` (fraction of zero elements) of the
    conv/linear weights stored sparse."""
    state = dense_state_dict(model) if isinstance(model, nn.Module) else dict(model)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    dense, sparse = buffer.getbuffer().nbytes, os.path.getsize(path)
    header = sparse_header(path)
    stored = [e for e in header["tensors"] if e["encoding"] != "dense"]
    total = sum(int(np.prod(e["shape"])) for e in stored)
    nnz = sum(e["nnz"] for e in stored)
    return {"dense_bytes": dense, "sparse_bytes": sparse, "ratio": sparse / dense,
            "sparsity": 1 - nnz / total if total else 0.0}
