"""Policy files: which fraction of each channel group to keep, and everything needed to rebuild the model.

A policy is JSON (``"format": "amc.policy"``, ``"schema_version": 2``) with:

- ``model`` (the :class:`~amc.models.ModelSpec` plus ``exclude``) and ``input_shape`` (C, H, W);
- ``fingerprint``: the architecture's prunable groups (name, channels) and a hash of every
  conv/linear/BN shape, so applying it to another architecture fails loudly, naming the groups;
- ``groups``: per prunable group, in forward order: ``name``, ``channels``, ``requested_ratio`` and
  ``executed_ratio`` (preserve ratios: kept / original), ``kept_channels`` and ``kept_indices``;
- how the scored model was built: ``prune`` (:class:`~amc.config.PruneConfig`), ``calibration``
  (:class:`~amc.config.CalibrationConfig`) and ``data`` (:class:`~amc.config.DataConfig`: the split
  the calibration images come from); ``cost`` (name and definition of the budgeted cost);
- ``metrics`` (cost ratios, search-split accuracies, reward, ...) and ``provenance``.

A **weight** policy (``"granularity": "weight"``, :meth:`Policy.for_weights`) has the same format,
no ``groups`` decisions and a ``layers`` list of ``{"layer": name, "sparsity": s}`` entries
(sparsity = fraction of the layer's weights removed, in [0, 1)); ``amc prune`` applies it.

Schema-1 files (written before the restructuring) still load; they lack the recovery settings, so
applying one uses the defaults unless the caller passes its own.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Mapping

import torch

from .config import CalibrationConfig, DataConfig, PruneConfig, from_dict, recorded_prune, replace, to_dict
from .errors import AmcError
from .io import atomic_write_text
from .provenance import provenance
from .structure import DependencyGraph, GroupName

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)


@dataclass
class GroupDecision:
    """One group's decision. Ratios are preserve ratios (fraction of channels kept, in (0, 1])."""

    name: GroupName
    channels: int
    requested_ratio: float
    executed_ratio: float
    kept_channels: int
    kept_indices: list[int] | None = None


@dataclass
class LayerDecision:
    """One layer's weight sparsity: the fraction of its weight elements removed, in [0, 1)."""

    layer: str
    sparsity: float


GRANULARITIES = ("channel", "weight")


@dataclass
class Policy:
    """A per-group channel policy tied to the architecture and the recovery it was scored with."""

    model: dict
    input_shape: list[int]
    fingerprint: dict
    groups: list[GroupDecision]
    prune: PruneConfig = field(default_factory=PruneConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    data: DataConfig | None = None
    cost: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    granularity: str = "channel"
    layers: list[LayerDecision] = field(default_factory=list)

    # ------------------------------------------------------------ views
    @property
    def sparsities(self) -> dict[str, float]:
        """Weight sparsity (fraction removed) per layer name of a weight policy (empty for channel policies)."""
        return {d.layer: d.sparsity for d in self.layers}

    @property
    def ratios(self) -> dict[GroupName, float]:
        """Executed preserve ratio (kept / channels) per group name."""
        return {d.name: d.kept_channels / d.channels for d in self.groups}

    def kept(self) -> dict[GroupName, torch.Tensor]:
        """Recorded kept channel indices per group that loses channels (may be empty)."""
        return {d.name: torch.tensor(d.kept_indices, dtype=torch.long) for d in self.groups
                if d.kept_indices is not None and d.kept_channels < d.channels}

    def keep(self, graph: DependencyGraph, *, force: bool = False) -> dict[GroupName, int]:
        """Kept channels per group name, after checking that ``graph`` is the policy's architecture.

        ``force``: skip the layer-shape hash check (the groups must still match), for a
        deliberate transfer to a model with other non-prunable layers.
        """
        if self.granularity != "channel":
            raise AmcError(f"this is a {self.granularity} policy (sparsity per layer), not a channel policy; "
                           "apply it with amc prune or amc.prune_unstructured(model, sparsities=policy.sparsities)")
        check_fingerprint(self, graph, force=force)
        return {d.name: d.kept_channels for d in self.groups}

    # ------------------------------------------------------------ building
    @classmethod
    def build(cls, graph: DependencyGraph, keep: Mapping[GroupName, int], *, model: dict,
              kept: Mapping[GroupName, torch.Tensor] | None = None, requested: Mapping[GroupName, float] | None = None,
              cost: dict | None = None, prune: PruneConfig = PruneConfig(),
              calibration: CalibrationConfig = CalibrationConfig(), data: DataConfig | None = None,
              metrics: dict | None = None, seed: int | None = None) -> "Policy":
        """A policy over ``graph``'s prunable groups keeping ``keep[name]`` channels (absent: all)."""
        decisions = []
        for g in graph.prunable:
            n = int(keep.get(g.name, g.channels))
            idx = (kept or {}).get(g.name)
            decisions.append(GroupDecision(g.name, g.channels, round(float((requested or {}).get(g.name, n / g.channels)), 6),
                                           round(n / g.channels, 6), n, idx.tolist() if idx is not None else None))
        return cls(model, list(graph.input_shape), fingerprint(graph), decisions, prune, calibration, data,
                   cost or {}, metrics or {}, provenance(seed))

    @classmethod
    def for_weights(cls, sparsities: Mapping[str, float], *, model: dict, input_shape: list[int] | tuple[int, ...],
                    graph: DependencyGraph | None = None, cost: dict | None = None, data: DataConfig | None = None,
                    metrics: dict | None = None, seed: int | None = None,
                    prune: PruneConfig = PruneConfig(granularity="weight"),
                    calibration: CalibrationConfig = CalibrationConfig()) -> "Policy":
        """A weight policy: ``sparsities`` maps layer names to fractions of weights removed, in [0, 1).

        ``graph``: the model's structure, recorded as the fingerprint when given. Sparsities are
        stored unrounded (JSON keeps a float exactly), so ``round(sparsity * size)`` gives back the
        exact number of weights removed in every layer.
        """
        layers = [LayerDecision(str(name), float(s)) for name, s in sparsities.items()]
        for d in layers:
            _check_layer(d, "weight policy")
        return cls(model, list(input_shape), fingerprint(graph) if graph is not None else {}, [],
                   prune, calibration, data, cost or {}, metrics or {}, provenance(seed), "weight", layers)

    # ------------------------------------------------------------ files
    def to_dict(self) -> dict:
        out = {"format": "amc.policy", "schema_version": SCHEMA_VERSION, "granularity": self.granularity,
               "model": self.model, "input_shape": list(self.input_shape), "fingerprint": self.fingerprint,
               "groups": [asdict(g) for g in self.groups], "prune": to_dict(self.prune),
               "calibration": to_dict(self.calibration), "data": to_dict(self.data) if self.data else None,
               "cost": self.cost, "metrics": self.metrics, "provenance": self.provenance}
        if self.granularity == "weight":
            out["layers"] = [asdict(d) for d in self.layers]
        return out

    def save(self, path: str | Path) -> None:
        atomic_write_text(json.dumps(self.to_dict(), indent=2) + "\n", path)

    @classmethod
    def from_dict(cls, d: dict, source: str = "policy") -> "Policy":
        if not isinstance(d, dict) or d.get("format") != "amc.policy":
            raise AmcError(f"{source} is not an amc policy file (no \"format\": \"amc.policy\")")
        if d.get("schema_version") not in READABLE_SCHEMAS:
            raise AmcError(f"{source} has schema version {d.get('schema_version')}, this amc reads "
                           f"{', '.join(map(str, READABLE_SCHEMAS))}")
        try:
            groups = [_decision(g, source) for g in d["groups"]]
            if d["schema_version"] == 1:  # the recovery settings were recorded among the metrics
                saved = d.get("metrics", {}).get("prune_settings", {})
                known = {f.name for f in fields(PruneConfig)}
                prune = from_dict(PruneConfig, recorded_prune({k: v for k, v in saved.items() if k in known}),
                                  f"{source}: metrics.prune_settings")
                calibration = replace(CalibrationConfig(), batch_size=saved.get("batch_size"))
                data, cost = None, {"name": "macs", "definition": d.get("flops_definition")}
            else:
                prune = from_dict(PruneConfig, recorded_prune(d.get("prune")), f"{source}: prune")
                calibration = from_dict(CalibrationConfig, d.get("calibration"), f"{source}: calibration")
                data = from_dict(DataConfig, d["data"], f"{source}: data") if d.get("data") else None
                cost = d.get("cost", {})
            granularity = d.get("granularity", "channel")
            if granularity not in GRANULARITIES:
                raise AmcError(f"{source} has granularity {granularity!r}; expected channel or weight")
            layers = [_check_layer(LayerDecision(**e), source) for e in d.get("layers", [])] \
                if granularity == "weight" else []
            policy = cls(d["model"], list(d["input_shape"]), d["fingerprint"], groups, prune, calibration, data, cost,
                         d.get("metrics", {}), d.get("provenance", {}), granularity, layers)
        except (KeyError, TypeError, ValueError) as exc:
            raise AmcError(f"{source} is malformed: {exc}") from None
        layer_names = [e.layer for e in policy.layers]
        twice = sorted({n for n in layer_names if layer_names.count(n) > 1})
        if twice:
            raise AmcError(f"{source} decides layer(s) {', '.join(twice)} more than once")
        names = [g.name for g in groups]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise AmcError(f"{source} decides group(s) {', '.join(twice)} more than once")
        return policy

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        p = Path(path)
        if not p.is_file():
            raise AmcError(f"policy file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AmcError(f"policy file {p} is not valid JSON: {exc}") from None
        return cls.from_dict(data, str(p))


def _check_layer(d: LayerDecision, source: str) -> LayerDecision:
    if not isinstance(d.layer, str) or not d.layer:
        raise AmcError(f"{source}: layer entry {d.layer!r} is not a layer name")
    s = d.sparsity
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s < 1:
        raise AmcError(f"{source}: layer '{d.layer}' has sparsity {s!r}; sparsity (fraction of weights removed) "
                       "lies in [0, 1)")
    return d


def _decision(g: dict, source: str) -> GroupDecision:
    d = GroupDecision(**g)
    for key in ("channels", "kept_channels"):
        value = getattr(d, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise AmcError(f"{source}: group '{d.name}' has {key} {value!r}, not a whole number")
    for key in ("requested_ratio", "executed_ratio"):
        value = getattr(d, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 1:
            raise AmcError(f"{source}: group '{d.name}' has {key} {value!r}; preserve ratios lie in (0, 1]")
    if d.kept_channels >= 1 and d.channels >= 1 and abs(d.executed_ratio - d.kept_channels / d.channels) > 1e-3:
        raise AmcError(f"{source}: group '{d.name}' keeps {d.kept_channels} of {d.channels} channels but records "
                       f"executed_ratio {d.executed_ratio}")
    return d


def fingerprint(graph: DependencyGraph) -> dict:
    """Identity of an architecture: its prunable groups and a hash of all conv/linear/BN shapes."""
    shapes = [[layer.name, layer.kind.name, list(layer.module.weight.shape) if getattr(layer.module, "weight", None)
               is not None else [graph.width(layer.in_layout)]] for layer in graph.layers]
    digest = hashlib.sha256(json.dumps([list(graph.input_shape), shapes]).encode()).hexdigest()[:16]
    return {"groups": [[g.name, g.channels] for g in graph.prunable], "layer_shapes_sha256": digest}


def check_fingerprint(policy: Policy, graph: DependencyGraph, *, force: bool = False) -> None:
    """Raise :class:`AmcError` naming what differs between ``policy`` and ``graph``."""
    theirs = {name: ch for name, ch in policy.fingerprint.get("groups", [])}
    ours = {g.name: g.channels for g in graph.prunable}
    problems = [f"{n}: policy {theirs[n]} channels, model {ours[n]}" for n in theirs if n in ours and theirs[n] != ours[n]]
    problems += [f"{n}: not a prunable group of the model" for n in theirs if n not in ours]
    problems += [f"{n}: missing from the policy" for n in ours if n not in theirs]
    decided = {d.name for d in policy.groups}
    problems += [f"{d}: decision for an unknown group" for d in decided if d not in ours]
    problems += [f"{n}: no decision in the policy" for n in ours if n not in decided and n in theirs]
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        raise AmcError("policy does not match the model: " + "; ".join(problems[:4]) + more)
    if not force and policy.fingerprint.get("layer_shapes_sha256") not in (None, fingerprint(graph)["layer_shapes_sha256"]):
        raise AmcError("policy does not match the model: same prunable groups but other layer shapes or input shape "
                       f"(policy input {tuple(policy.input_shape)}, model {tuple(graph.input_shape)}); use --force "
                       "for a deliberate transfer")
    for d in policy.groups:
        g = graph.group[d.name]
        if d.channels != g.channels:
            raise AmcError(f"policy says group '{d.name}' has {d.channels} channels, the model has {g.channels}")
        if not 1 <= d.kept_channels <= g.channels:
            raise AmcError(f"policy keeps {d.kept_channels} of {g.channels} channels in group '{d.name}'")
        if d.kept_channels % g.blocks:
            raise AmcError(f"policy keeps {d.kept_channels} channels in group '{d.name}', which feeds a grouped conv "
                           f"and must keep a multiple of {g.blocks}")
