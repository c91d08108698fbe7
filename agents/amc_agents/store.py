"""The run folder of a search: its only reader and writer.

Files: ``config.yaml`` (the resolved :class:`~amc.config.SearchConfig`), ``fingerprints.json`` (the
model's and the data split's identity), ``episodes.csv`` (one tidy row per episode, appended and
fsync'ed, never rewritten), ``best_policy.json`` and ``top_policies/policy_K.json``,
``uniform_policy.json`` and ``baselines.json`` (the uniform baseline, scored in this run),
``run.log`` (heartbeat lines), ``checkpoint.pt`` (the search state; written atomically before every
episode and at the end; it records how many bytes of ``episodes.csv`` it covers; read back with
``torch.load(weights_only=True)``), ``run.lock`` (held
while a search runs in the folder), plots and ``summary.md`` (:mod:`amc_agents.report`).

What a crash can cost: the episode that was running. On resume, ``episodes.csv`` is cut back to the
bytes the checkpoint covers (a torn or extra last row disappears), orphan temporary files are
removed, and every other file was replaced atomically, so it is either the old or the new version.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import yaml
from filelock import FileLock, Timeout

from amc.config import SearchConfig, from_dict, recorded_prune, to_dict
from amc.errors import AmcError
from amc.io import atomic_save, atomic_write_text
from amc.policy import Policy

# the numpy types a search state holds (replay buffer arrays, RNG states), allowed by torch.load(weights_only=True)
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
_NUMPY_GLOBALS = [_reconstruct, np.ndarray, np.dtype, *(getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType"))]

# columns of runs written before the restructuring, renamed on read
_OLD_COLUMNS = {"flops_ratio": "macs_ratio"}


class RunStore:
    """The files of one search run in ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    # ------------------------------------------------------------ config and lock
    @classmethod
    def create(cls, folder: str | Path, cfg: SearchConfig) -> "RunStore":
        """A new run folder holding ``cfg``; refuses a folder that holds a search or anything else."""
        store = cls.check_new(folder)
        try:
            store.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AmcError(f"cannot create the run folder {store.folder}: {exc.strerror}") from None
        store.lock()
        store.write_config(cfg)
        return store

    @classmethod
    def check_new(cls, folder: str | Path) -> "RunStore":
        """Raise :class:`AmcError` unless ``folder`` can become a new run folder (absent or empty)."""
        store = cls(folder)
        if store.state_path.exists() or (store.folder / "episodes.csv").exists():
            raise AmcError(f"{store.folder} already holds a search; use --resume {store.folder} or another --out")
        if store.folder.exists() and (not store.folder.is_dir() or any(store.folder.iterdir())):
            raise AmcError(f"{store.folder} exists and is not an empty folder; choose a new --out")
        parent = next((p for p in store.folder.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise AmcError(f"cannot create {store.folder}: {parent} is a file")
        return store

    @classmethod
    def open(cls, folder: str | Path) -> "RunStore":
        store = cls(folder)
        if not (store.folder / "config.yaml").is_file() or not store.state_path.is_file():
            raise AmcError(f"{store.folder} is not a resumable run (needs config.yaml and checkpoint.pt)")
        store.lock()
        for orphan in store.folder.rglob(".*.tmp"):  # temporary files of writes a crash interrupted
            orphan.unlink()
        return store

    def lock(self) -> None:
        """Hold the folder's lock for the life of this process; a second search into it stops at once."""
        self._lock = FileLock(str(self.folder / "run.lock"))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            other = (self.folder / "run.pid").read_text().strip() if (self.folder / "run.pid").is_file() else "?"
            raise AmcError(f"another search (process {other}) is running in {self.folder}; wait for it or stop it") from None
        atomic_write_text(f"{os.getpid()}\n", self.folder / "run.pid")

    def unlock(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def fingerprints(self) -> dict:
        path = self.folder / "fingerprints.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_fingerprints(self, prints: dict) -> None:
        atomic_write_text(json.dumps(prints, indent=2) + "\n", self.folder / "fingerprints.json")

    def config(self) -> SearchConfig:
        path = self.folder / "config.yaml"
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise AmcError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise AmcError(f"{path} is empty or damaged: the run's settings are unknown")
        if data.get("prune") is None or isinstance(data["prune"], dict):  # a resumed run keeps scoring as it did
            data["prune"] = recorded_prune(data.get("prune"))
        return from_dict(SearchConfig, data, str(path))

    def write_config(self, cfg: SearchConfig) -> None:
        atomic_write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), self.folder / "config.yaml")

    # ------------------------------------------------------------ episodes
    @property
    def episodes_path(self) -> Path:
        return self.folder / "episodes.csv"

    def append_episode(self, row: dict) -> None:
        """Append one row (header first in a new file), flushed and fsync'ed; the file is never rewritten."""
        path = self.episodes_path
        new = not path.is_file() or path.stat().st_size == 0
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row) if new else self._header(), lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)
        with open(path, "a") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())

    def _header(self) -> list[str]:
        with open(self.episodes_path) as f:
            return next(csv.reader(f))

    def episodes_bytes(self) -> int:
        """Size of ``episodes.csv`` (recorded in each checkpoint)."""
        return self.episodes_path.stat().st_size if self.episodes_path.is_file() else 0

    def episodes(self) -> pd.DataFrame:
        if not self.episodes_path.is_file():
            raise AmcError(f"{self.folder} is not a search run folder (no episodes.csv)")
        try:
            return pd.read_csv(self.episodes_path).rename(columns=_OLD_COLUMNS)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise AmcError(f"cannot read {self.episodes_path}: {str(exc).splitlines()[0]}") from None

    def cut_episodes(self, size: int) -> None:
        """Cut ``episodes.csv`` back to ``size`` bytes: rows (or a torn row) written after the last checkpoint go."""
        have = self.episodes_bytes()
        if have < size:
            raise AmcError(f"{self.episodes_path} has {have} bytes but the checkpoint covers {size}: rows were lost "
                           "outside amc; the run cannot continue exactly")
        if have > size:
            with open(self.episodes_path, "r+") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())

    # ------------------------------------------------------------ policies and baselines
    def write_policies(self, ranked: Sequence[Policy], first_rank: int = 1) -> None:
        """Write the top policies from ``first_rank`` on (``ranked[0]`` has that rank; 1 is also the best policy)."""
        if ranked and first_rank == 1:
            ranked[0].save(self.folder / "best_policy.json")
        for rank, policy in enumerate(ranked, first_rank):
            policy.save(self.folder / "top_policies" / f"policy_{rank}.json")

    def write_reselection(self, rows: Sequence[dict], best: Policy) -> None:
        """The top-k's scores on the held-out rest (``reselection.csv``) and the policy chosen there."""
        atomic_write_text(pd.DataFrame(rows).to_csv(index=False), self.folder / "reselection.csv")
        best.save(self.folder / "best_policy.json")

    def drop_reselection(self, search_best: Policy) -> bool:
        """Undo an earlier re-selection (a run resumed with ``--no-reselect``): ``best_policy.json`` becomes
        ``search_best`` again and ``reselection.csv`` goes. Returns whether there was one."""
        path = self.folder / "reselection.csv"
        if not path.is_file():
            return False
        search_best.save(self.folder / "best_policy.json")
        path.unlink()
        return True

    def best_policy(self) -> Policy:
        return Policy.load(self.folder / "best_policy.json")

    def write_baseline(self, name: str, record: dict, policy: Policy | None = None) -> None:
        baselines = {**self.baselines(), name: record}
        atomic_write_text(json.dumps(baselines, indent=2) + "\n", self.folder / "baselines.json")
        if policy is not None:
            policy.save(self.folder / f"{name}_policy.json")

    def baselines(self) -> dict:
        """The baselines scored in this run ({} when none, or when a damaged file must be recomputed)."""
        path = self.folder / "baselines.json"
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    # ------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.folder / "checkpoint.pt"

    def save_state(self, state: dict) -> None:
        atomic_save(state, self.state_path)

    def load_state(self) -> dict:
        if not self.state_path.is_file() or self.state_path.stat().st_size == 0:
            raise AmcError(f"{self.state_path} is missing or empty: the run cannot continue exactly; start a new run")
        try:  # weights_only: tensors, numpy arrays (replay buffer, RNG states) and plain containers only
            with torch.serialization.safe_globals(_NUMPY_GLOBALS):
                state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AmcError(f"{self.state_path} is damaged ({first}): the run cannot continue exactly") from None
        if not isinstance(state, dict) or "episode" not in state:
            raise AmcError(f"{self.state_path} is not an amc search checkpoint")
        return state

    def log(self, line: str) -> None:
        with open(self.folder / "run.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
