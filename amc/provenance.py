"""Where a result came from: library versions, machine, time, command (recorded in policies and records).

Versions are read with :mod:`importlib.metadata`, so recording them imports none of the libraries.
"""
from __future__ import annotations

import platform
import sys
import time
from importlib import metadata

PACKAGES = ("torch", "gymnasium", "stable-baselines3", "numpy", "pandas")


def versions() -> dict[str, str | None]:
    """Installed versions of Python and the libraries amc stands on (None when absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(seed: int | None = None, command: str | None = None) -> dict:
    """Seed, creation time, command line (default: this process's), versions and machine."""
    return {"seed": seed, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command if command is not None else " ".join(sys.argv),
            "versions": versions(), "machine": platform.platform()}
