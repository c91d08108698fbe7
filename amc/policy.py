"""Policy files: which fraction of each channel group to keep, tied to the model it was made for.

A policy is JSON (``"format": "amc.policy"``, ``"schema_version": 1``) with:

- ``model``: the :class:`~amc.models.registry.ModelSpec`; ``input_shape`` (C, H, W);
- ``fingerprint``: the architecture's prunable groups (name, channels) and a hash of every
  conv/linear/BN shape, so that applying it to another model fails loudly instead of silently;
- ``groups``: per prunable group, in forward order: ``name``, ``channels``, ``requested_ratio`` and
  ``executed_ratio`` (preserve ratios: kept / original), ``kept_channels`` and optionally
  ``kept_indices``;
- ``flops_definition``, ``metrics`` (dense/compact FLOPs and params, ratios, accuracies where known)
  and ``provenance`` (seed, library versions, creation time, command).
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from .checkpoint import atomic_write_text
from .errors import AmcError
from .flops import FLOPS_DEFINITION, flops_of
from .graph import PruningGraph
from .ratios import channels_for_ratio

SCHEMA_VERSION = 1


@dataclass
class GroupDecision:
    name: str
    channels: int
    requested_ratio: float
    executed_ratio: float
    kept_channels: int
    kept_indices: list[int] | None = None


@dataclass
class Policy:
    model: dict
    input_shape: list[int]
    fingerprint: dict
    groups: list[GroupDecision]
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    flops_definition: str = FLOPS_DEFINITION

    def to_dict(self) -> dict:
        return {"format": "amc.policy", "schema_version": SCHEMA_VERSION, "model": self.model,
                "input_shape": list(self.input_shape), "fingerprint": self.fingerprint,
                "groups": [asdict(g) for g in self.groups], "flops_definition": self.flops_definition,
                "metrics": self.metrics, "provenance": self.provenance}

    def save(self, path: str | Path) -> None:
        atomic_write_text(json.dumps(self.to_dict(), indent=2) + "\n", path)

    @classmethod
    def from_dict(cls, d: dict, source: str = "policy") -> "Policy":
        if d.get("format") != "amc.policy":
            raise AmcError(f"{source} is not an amc policy file (no \"format\": \"amc.policy\")")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise AmcError(f"{source} has schema version {d.get('schema_version')}, this amc reads {SCHEMA_VERSION}")
        try:
            groups = [GroupDecision(**g) for g in d["groups"]]
            return cls(d["model"], list(d["input_shape"]), d["fingerprint"], groups, d.get("metrics", {}),
                       d.get("provenance", {}), d.get("flops_definition", FLOPS_DEFINITION))
        except (KeyError, TypeError) as exc:
            raise AmcError(f"{source} is malformed: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        p = Path(path)
        if not p.is_file():
            raise AmcError(f"policy file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise AmcError(f"policy file {p} is not valid JSON: {exc}") from None
        return cls.from_dict(data, str(p))

    def counts(self, graph: PruningGraph) -> dict[int, int]:
        """Group space -> kept channels, after checking that ``graph`` is the policy's architecture."""
        check_fingerprint(self, graph)
        by_name = {g.name: g for g in graph.groups}
        return {by_name[d.name].space: d.kept_channels for d in self.groups}


def fingerprint(graph: PruningGraph) -> dict:
    """Identity of an architecture: its prunable groups and a hash of all conv/linear/BN shapes."""
    shapes = [[layer.name, layer.kind, list(layer.module.weight.shape) if getattr(layer.module, "weight", None)
               is not None else [graph.layout_width(layer.in_layout)]] for layer in graph.layers]
    digest = hashlib.sha256(json.dumps([graph.input_shape, shapes]).encode()).hexdigest()[:16]
    return {"groups": [[g.name, g.channels] for g in graph.prunable_groups], "layer_shapes_sha256": digest}


def check_fingerprint(policy: Policy, graph: PruningGraph) -> None:
    """Raise :class:`AmcError` naming the groups that differ between ``policy`` and ``graph``."""
    theirs = {name: ch for name, ch in policy.fingerprint.get("groups", [])}
    ours = {g.name: g.channels for g in graph.prunable_groups}
    problems = [f"{n}: policy {theirs[n]} channels, model {ours[n]}" for n in theirs if n in ours and theirs[n] != ours[n]]
    problems += [f"{n}: not a prunable group of the model" for n in theirs if n not in ours]
    problems += [f"{n}: missing from the policy" for n in ours if n not in theirs]
    decided = {d.name for d in policy.groups}
    problems += [f"{d}: decision for an unknown group" for d in decided if d not in ours]
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        raise AmcError("policy does not match the model: " + "; ".join(problems[:4]) + more)
    blocks = {g.name: g.blocks for g in graph.prunable_groups}
    for d in policy.groups:
        if not 1 <= d.kept_channels <= ours[d.name]:
            raise AmcError(f"policy keeps {d.kept_channels} of {ours[d.name]} channels in group '{d.name}'")
        if d.kept_channels % blocks[d.name]:
            raise AmcError(f"policy keeps {d.kept_channels} channels in group '{d.name}', which feeds a grouped conv "
                           f"and must keep a multiple of {blocks[d.name]}")


def provenance(seed: int | None = None, command: str | None = None) -> dict:
    import gymnasium  # noqa: PLC0415
    import stable_baselines3  # noqa: PLC0415
    import torch  # noqa: PLC0415

    return {"seed": seed, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "gymnasium": gymnasium.__version__, "stable_baselines3": stable_baselines3.__version__},
            "machine": platform.platform()}


def make_policy(graph: PruningGraph, model_spec: dict, counts: Mapping[int, int],
                requested: Mapping[int, float] | None = None, kept=None, metrics: dict | None = None,
                seed: int | None = None, command: str | None = None) -> Policy:
    """A :class:`Policy` for ``counts`` (group space -> kept channels) over the prunable groups."""
    decisions = []
    for g in graph.prunable_groups:
        n = counts.get(g.space, g.channels)
        idx = kept.get(g.space) if kept else None
        decisions.append(GroupDecision(g.name, g.channels, round(float((requested or {}).get(g.space, n / g.channels)), 6),
                                       round(n / g.channels, 6), n, idx.tolist() if idx is not None else None))
    return Policy(model_spec, list(graph.input_shape), fingerprint(graph), decisions, metrics or {},
                  provenance(seed, command))


def uniform_counts(graph: PruningGraph, ratio: float, round_to: int = 1, lbound: float = 0.0) -> dict[int, int]:
    """The same preserve ratio for every prunable group."""
    return {g.space: channels_for_ratio(ratio, g.channels, g.count_step(round_to), lbound) for g in graph.prunable_groups}


def uniform_for_flops(graph: PruningGraph, target: float, round_to: int = 1, lbound: float = 0.0,
                      steps: int = 40) -> tuple[float, dict[int, int]]:
    """Largest uniform preserve ratio whose FLOPs are <= ``target`` x dense FLOPs (bisection).

    Returns (ratio, counts). Raises :class:`AmcError` when even ``lbound`` cannot reach the target.
    """
    dense = flops_of(graph)
    if not 0 < target <= 1:
        raise AmcError(f"FLOPs target must be a ratio in (0, 1], got {target}")
    lowest = flops_of(graph, uniform_counts(graph, lbound, round_to, lbound)) / dense
    if lowest > target + 1e-12:
        raise AmcError(f"FLOPs target {target:.3f} is unreachable: with every prunable group at the lower bound "
                       f"{lbound} the model keeps {lowest:.3f} of its FLOPs")
    lo, hi = lbound, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if flops_of(graph, uniform_counts(graph, mid, round_to, lbound)) / dense <= target:
            lo = mid
        else:
            hi = mid
    return lo, uniform_counts(graph, lo, round_to, lbound)
