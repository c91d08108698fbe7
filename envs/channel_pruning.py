"""The AMC channel-pruning environment."""
from __future__ import annotations

import math
import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amc.errors import AmcError
from amc.flops import flops_of, measure, params_of
from amc.ratios import allowed_counts, channels_for_ratio

from .task import PruningTask

OBSERVATION_FEATURES = ("index", "out_channels", "in_channels", "in_height", "in_width", "stride", "kernel",
                        "flops", "reduced", "rest", "previous_action")


class ChannelPruningEnv(gym.Env):
    """
    ## Description
    Walks the prunable channel groups of a trained CNN in forward order (AMC, He et al. 2018). At each
    step the agent chooses how much of the current group to keep; after the last group the engine
    builds the physically compact model (channel selection, least-squares reconstruction and
    BatchNorm recalibration as the task's :class:`~amc.pruner.PruneSettings` say), checks that its
    measured FLOPs equal the environment's accounting, and scores it on the *search* split.

    ## Action Space
    ``Box(0, 1, (1,), float32)``: the **preserve ratio** of the current group (fraction of channels
    kept; 1 = unpruned). It is clipped to ``[lbound, rbound]``, turned into a channel count (nearest
    multiple of ``round_to``, never zero) and, in resource-constrained mode, capped so that the target
    stays reachable with every later group at ``lbound`` (AMC's clamp). The *executed* ratio
    (count / channels) is reported in ``info`` and is what the next observation carries.

    ## Observation Space
    ``Box(0, 1, (11,), float32)``: ``index`` (t / (T-1)), the group's ``out_channels``, the producer's
    ``in_channels``, input ``in_height`` / ``in_width``, ``stride``, ``kernel`` (each min-max scaled over
    the groups), ``flops`` (FLOPs that scale with this group / dense FLOPs), ``reduced`` (FLOPs removed by
    earlier decisions / dense FLOPs), ``rest`` (FLOPs that later groups can still scale / dense
    FLOPs) and ``previous_action`` (the previous executed preserve ratio; 1 at the first step).

    ## Rewards
    0 on every step but the last. On the last step, with ``error = 1 - accuracy`` on the search
    split (``metric``: top-1 or top-5) and ``scale`` = ``reward_scale``:
    - ``mode="constrained"`` (resource-constrained): ``R = -scale * error``;
    - ``mode="accuracy"`` (accuracy-guaranteed): ``R = -scale * error * log(resource)``, resource being
      the compact model's FLOPs (or params), no clamp.

    ## Starting State
    The first group, with no decision taken; deterministic (the environment has no randomness of
    its own; ``reset(seed=...)`` seeds ``self.np_random`` as Gymnasium requires).

    ## Episode End
    After the last prunable group: ``terminated=True`` (never truncated). ``info`` then holds
    ``requested_ratios``, ``executed_ratios``, ``counts``, ``flops_ratio``, ``params_ratio``, ``top1``,
    ``top5``, ``reward`` and ``timings`` (seconds of prune, reconstruct, bn_recalibration, evaluate).

    ## Arguments
    - ``task``: a :class:`~envs.task.PruningTask` (default: a tiny synthetic task, for checks).
    - ``target``: resource to keep, as a ratio of the dense model's (constrained mode), e.g. 0.5.
    - ``resource``: ``"flops"`` or ``"params"``.
    - ``mode``: ``"constrained"`` or ``"accuracy"``.
    - ``lbound`` / ``rbound``: preserve-ratio bounds (defaults 0.2 / 1.0).
    - ``round_to``: channel counts are multiples of this (default 1; 8 is common for hardware).
    - ``metric``: ``"top1"`` or ``"top5"``; ``reward_scale``: multiplies the reward (default 1).
    """

    metadata = {"render_modes": []}

    def __init__(self, task: PruningTask | None = None, target: float = 0.5, resource: str = "flops",
                 mode: str = "constrained", lbound: float = 0.2, rbound: float = 1.0, round_to: int = 1,
                 metric: str = "top1", reward_scale: float = 1.0):
        self.task = task or PruningTask.tiny()
        if resource not in ("flops", "params") or mode not in ("constrained", "accuracy") or metric not in ("top1", "top5"):
            raise AmcError(f"bad environment option: resource={resource!r}, mode={mode!r}, metric={metric!r}")
        if not 0 < lbound <= rbound <= 1:
            raise AmcError(f"preserve-ratio bounds must satisfy 0 < lbound <= rbound <= 1, got {lbound}, {rbound}")
        self.target, self.resource, self.mode, self.metric = target, resource, mode, metric
        self.lbound, self.rbound, self.round_to, self.reward_scale = lbound, rbound, round_to, reward_scale
        self.graph = self.task.graph
        self.groups = self.graph.prunable_groups
        if not self.groups:
            raise AmcError("the model has no prunable channel groups (see `amc inspect`)")
        self._cost = flops_of if resource == "flops" else params_of
        self.dense_cost = self._cost(self.graph)
        self.dense_flops, self.dense_params = flops_of(self.graph), params_of(self.graph)
        self.min_counts = {g.space: allowed_counts(g.channels, g.count_step(round_to), lbound)[0] for g in self.groups}
        if mode == "constrained":
            floor = self._cost(self.graph, self.min_counts) / self.dense_cost
            if floor > target + 1e-12:
                raise AmcError(f"{resource} target {target:.3f} is unreachable: with every prunable group at "
                               f"lbound {lbound} the model keeps {floor:.3f} of its {resource}")
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (len(OBSERVATION_FEATURES),), np.float32)
        self._static = self._static_features()
        self._scaling = [(self.dense_flops - flops_of(self.graph, {g.space: 0})) / self.dense_flops for g in self.groups]
        self._t = 0
        self._counts: dict[int, int] = {}
        self._requested: dict[int, float] = {}

    # ------------------------------------------------------------ features
    def _static_features(self) -> np.ndarray:
        rows = []
        for g in self.groups:
            layer = self.graph.layer_by_name[g.producers[0]]
            m = layer.module
            stride = m.stride[0] if hasattr(m, "stride") else 1
            kernel = m.kernel_size[0] if hasattr(m, "kernel_size") else 1
            rows.append([g.channels, self.graph.layout_width(layer.in_layout), layer.in_hw[0], layer.in_hw[1],
                         stride, kernel])
        raw = np.asarray(rows, dtype=np.float64)
        lo, hi = raw.min(0), raw.max(0)
        return np.where(hi > lo, (raw - lo) / np.where(hi > lo, hi - lo, 1), 0.0)

    def _observation(self) -> np.ndarray:
        t = self._t
        decided = {g.space: self._counts[g.space] for g in self.groups[:t]}
        now = flops_of(self.graph, decided)
        later_zero = {**decided, **{g.space: 0 for g in self.groups[t:]}}
        reduced = (self.dense_flops - now) / self.dense_flops
        rest = (now - flops_of(self.graph, later_zero)) / self.dense_flops
        prev = self._counts[self.groups[t - 1].space] / self.groups[t - 1].channels if t > 0 else 1.0
        index = t / max(1, len(self.groups) - 1)
        obs = np.concatenate([[index], self._static[t], [self._scaling[t], reduced, rest, prev]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------ clamp
    def max_count(self, t: int) -> int:
        """Largest channel count of group ``t`` that keeps the target reachable (constrained mode)."""
        g = self.groups[t]
        counts = allowed_counts(g.channels, g.count_step(self.round_to), self.lbound)
        upper = channels_for_ratio(self.rbound, g.channels, g.count_step(self.round_to), self.lbound)
        counts = [c for c in counts if c <= upper]
        if self.mode != "constrained":
            return counts[-1]
        fixed = {**{h.space: self._counts[h.space] for h in self.groups[:t]},
                 **{h.space: self.min_counts[h.space] for h in self.groups[t + 1:]}}
        budget = self.target * self.dense_cost
        lo, hi = 0, len(counts) - 1  # counts[0] always fits: the target was checked reachable
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._cost(self.graph, {**fixed, g.space: counts[mid]}) <= budget + 1e-6:
                lo = mid
            else:
                hi = mid - 1
        return counts[lo]

    # ------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        self._counts, self._requested = {}, {}
        return self._observation(), {"group": self.groups[0].name}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        g = self.groups[self._t]
        requested = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        ratio = min(max(requested, self.lbound), self.rbound)
        count = min(channels_for_ratio(ratio, g.channels, g.count_step(self.round_to), self.lbound), self.max_count(self._t))
        self._counts[g.space] = count
        self._requested[g.space] = requested
        info: dict[str, Any] = {"group": g.name, "requested_action": requested, "executed_action": count / g.channels}
        self._t += 1
        if self._t < len(self.groups):
            return self._observation(), 0.0, False, False, info
        info.update(self.evaluate_counts(self._counts))
        info["requested_ratios"] = [self._requested[h.space] for h in self.groups]
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        return obs, float(info["reward"]), True, False, info

    # ------------------------------------------------------------ scoring
    def reward_of(self, accuracy: float, cost: float) -> float:
        error = 1.0 - accuracy
        if self.mode == "constrained":
            return -self.reward_scale * error
        return -self.reward_scale * error * math.log(cost)

    def evaluate_counts(self, counts: dict[int, int]) -> dict[str, Any]:
        """Prune to ``counts``, verify the compact model's FLOPs and score it on the search split."""
        result = self.task.pruner.prune(counts)
        expected = flops_of(self.graph, counts)
        measured = measure(result.model, self.task.spec.input_shape)
        if measured["flops"] != expected:
            raise RuntimeError(f"compact model has {measured['flops']} FLOPs but the accounting says {expected}: "
                               "a pruning bug, please report it")
        start = time.perf_counter()
        scores = self.task.score(result.model)
        timings = {**result.timings, "evaluate": time.perf_counter() - start}
        cost = measured[self.resource]
        return {"counts": {g.name: counts[g.space] for g in self.groups},
                "executed_ratios": [counts[g.space] / g.channels for g in self.groups],
                "flops_ratio": measured["flops"] / self.dense_flops, "params_ratio": measured["params"] / self.dense_params,
                "top1": scores["top1"], "top5": scores["top5"], "loss": scores["loss"],
                "reward": self.reward_of(scores[self.metric], cost), "timings": timings,
                "kept": result.kept}
