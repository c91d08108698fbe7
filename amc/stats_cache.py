"""A disk cache for what a search computes once per model and data: calibration statistics and baseline episodes.

Building a search's environment gathers calibration statistics (Gram matrices for least squares,
activation statistics for data criteria) and scores the uniform baseline policy: tens of seconds
for a CIFAR ResNet, minutes for an ImageNet-size model, repeated on every resume and every new search
of the same model. :class:`StatsCache` keeps both in a folder, under a key that hashes everything
they depend on -- the dense weights, the calibration (or search) images and labels, and the settings
-- so a changed input can never be served stale results. Files are written atomically under a file
lock (several searches may share one cache); a file that cannot be read is recomputed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from .calibration import CalibrationSet, CalibrationStats
from .io import atomic_save, atomic_write_text


def digest(*parts: Any) -> str:
    """SHA-256 (hex, 32 characters) of tensors (their bytes, shape and dtype), modules (their state_dict)
    and JSON-able values, in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, nn.Module):
            for name, value in part.state_dict().items():
                h.update(name.encode())
                _tensor(h, value)
        elif isinstance(part, torch.Tensor):
            _tensor(h, part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


class StatsCache:
    """Calibration statistics and baseline records in ``folder`` (created on first write).

    ``FORMAT`` is part of every key: it changes whenever what a key must cover changes, so entries written
    by an older amc are never served (2: the calibration batch size joined the statistics' key, because
    the positions sampled for the Gram matrices follow the batch order; 3: the device type joined both keys,
    because CPU and CUDA kernels round differently, so statistics gathered on one are not the ones a run on
    the other would compute).
    """

    FORMAT = 3

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    def stats_key(self, model: nn.Module, calibration: CalibrationSet, settings: dict) -> str:
        """Key of the statistics of ``model`` on ``calibration`` (its images, labels, batch size and device type)
        gathered with ``settings`` (needs, sampling, seed)."""
        labels = calibration.labels if calibration.labels is not None else torch.zeros(0)
        return "stats-" + digest(self.FORMAT, model, calibration.images, labels, calibration.batch_size,
                                 calibration.images.device.type, settings)

    def load_stats(self, key: str) -> CalibrationStats | None:
        path = self.folder / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return CalibrationStats(**{f.name: saved[f.name] for f in fields(CalibrationStats)})
        except Exception:  # a torn or foreign file: recompute (and overwrite it)
            return None

    def save_stats(self, key: str, stats: CalibrationStats) -> None:
        self._write(key, lambda path: atomic_save(asdict(stats), path), ".pt")

    def load_record(self, key: str) -> dict | None:
        """A JSON record (e.g. a baseline episode) saved under ``key``; None if absent or unreadable."""
        path = self.folder / f"{key}.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None

    def save_record(self, key: str, record: dict) -> None:
        self._write(key, lambda path: atomic_write_text(json.dumps(record) + "\n", path), ".json")

    def _write(self, key: str, write, suffix: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.folder / f"{key}.lock")):
            write(self.folder / f"{key}{suffix}")
