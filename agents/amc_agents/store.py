"""The run folder of a search: its only reader and writer.

Files: ``config.yaml`` (the resolved :class:`~amc.config.SearchConfig`), ``episodes.csv`` (one tidy
row per episode, appended), ``best_policy.json`` and ``top_policies/policy_K.json``,
``uniform_policy.json`` and ``baselines.json`` (the uniform baseline, scored in this run),
``run.log`` (heartbeat lines), ``checkpoint.pt`` (the search state; written atomically before every
episode and at the end), plots and ``summary.md`` (:mod:`amc_agents.report`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import yaml

from amc.config import SearchConfig, from_dict, to_dict
from amc.errors import AmcError
from amc.io import atomic_save, atomic_write_text
from amc.policy import Policy

# columns of runs written before the restructuring, renamed on read
_OLD_COLUMNS = {"flops_ratio": "macs_ratio"}


class RunStore:
    """The files of one search run in ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    # ------------------------------------------------------------ config
    @classmethod
    def create(cls, folder: str | Path, cfg: SearchConfig) -> "RunStore":
        """A new run folder holding ``cfg``; refuses a folder that already holds a search."""
        store = cls(folder)
        if store.state_path.exists() or (store.folder / "episodes.csv").exists():
            raise AmcError(f"{store.folder} already holds a search; use --resume {store.folder} or another --out")
        store.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), store.folder / "config.yaml")
        return store

    @classmethod
    def open(cls, folder: str | Path) -> "RunStore":
        store = cls(folder)
        if not (store.folder / "config.yaml").is_file() or not store.state_path.is_file():
            raise AmcError(f"{store.folder} is not a resumable run (needs config.yaml and checkpoint.pt)")
        return store

    def config(self) -> SearchConfig:
        path = self.folder / "config.yaml"
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise AmcError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        return from_dict(SearchConfig, data, str(path))

    def write_config(self, cfg: SearchConfig) -> None:
        atomic_write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), self.folder / "config.yaml")

    # ------------------------------------------------------------ episodes
    def append_episode(self, row: dict) -> None:
        csv = self.folder / "episodes.csv"
        pd.DataFrame([row]).to_csv(csv, mode="a", header=not csv.is_file(), index=False)

    def episodes(self) -> pd.DataFrame:
        csv = self.folder / "episodes.csv"
        if not csv.is_file():
            raise AmcError(f"{self.folder} is not a search run folder (no episodes.csv)")
        try:
            return pd.read_csv(csv).rename(columns=_OLD_COLUMNS)
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
            raise AmcError(f"cannot read {csv}: {str(exc).splitlines()[0]}") from None

    def truncate_episodes(self, count: int) -> None:
        """Keep the first ``count`` episode rows (an episode that ran after the last checkpoint is re-run)."""
        csv = self.folder / "episodes.csv"
        if csv.is_file():
            rows = pd.read_csv(csv)
            atomic_write_text(rows[rows.episode <= count].to_csv(index=False), csv)

    # ------------------------------------------------------------ policies and baselines
    def write_policies(self, ranked: Sequence[Policy]) -> None:
        if ranked:
            ranked[0].save(self.folder / "best_policy.json")
        for rank, policy in enumerate(ranked, 1):
            policy.save(self.folder / "top_policies" / f"policy_{rank}.json")

    def best_policy(self) -> Policy:
        return Policy.load(self.folder / "best_policy.json")

    def write_baseline(self, name: str, record: dict, policy: Policy | None = None) -> None:
        baselines = {**self.baselines(), name: record}
        atomic_write_text(json.dumps(baselines, indent=2) + "\n", self.folder / "baselines.json")
        if policy is not None:
            policy.save(self.folder / f"{name}_policy.json")

    def baselines(self) -> dict:
        path = self.folder / "baselines.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise AmcError(f"cannot read {path}: {exc}") from None

    # ------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.folder / "checkpoint.pt"

    def save_state(self, state: dict) -> None:
        atomic_save(state, self.state_path)

    def load_state(self) -> dict | None:
        if not self.state_path.is_file():
            return None
        try:  # the state holds numpy RNG states and replay buffers: written by amc itself, not user input
            return torch.load(self.state_path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise AmcError(f"cannot read {self.state_path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    def log(self, line: str) -> None:
        with open(self.folder / "run.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
