"""The AMC channel-pruning environment."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amc.config import BUDGET_RULES, EnvConfig, check_reward_cost
from amc.cost import Budget
from amc.errors import AmcError
from amc.structure import GroupName

from .observation import FEATURES, Observer
from .task import PruningTask

SCORES = ("top1", "top5", "loss", "score")  # what scoring a policy may report (``score``: the user's evaluator)


@dataclass
class EpisodeResult:
    """What a finished episode produced (``info["result"]`` of the last step).

    keep: kept channels per group; requested: the agent's preserve ratios (before clipping,
    rounding and the clamp); executed: kept / channels; kept: kept channel indices of the groups
    that lost channels; cost_ratio: measured cost / dense per cost model (``macs``, ``params``);
    metrics: search-split ``top1``, ``top5``, ``loss`` (or the evaluator's ``score``); reward; timings:
    seconds per step.
    """

    keep: dict[GroupName, int]
    requested: dict[GroupName, float]
    executed: dict[GroupName, float]
    kept: dict[GroupName, list[int]]
    cost_ratio: dict[str, float]
    metrics: dict[str, float]
    reward: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Scored:
    """What scoring one policy produced, before it becomes an episode: a pure function of the kept counts,
    so it may be computed ahead, in another process (:mod:`amc_agents.parallel`).

    metrics: the task's metrics (scores, costs and cost ratios); kept: kept channel indices of the groups
    that lost channels; timings: seconds per step.
    """

    metrics: dict[str, float]
    kept: dict[GroupName, list[int]]
    timings: dict[str, float]


def policy_key(keep: dict[str, int]) -> tuple:
    """A hashable identity of kept counts (the key of :attr:`ChannelPruningEnv.ahead`)."""
    return tuple(sorted(keep.items()))


class ChannelPruningEnv(gym.Env):
    """
    ## Description
    Walks the prunable channel groups of a trained CNN in forward order (AMC, He et al. 2018). At each
    step the agent chooses how much of the current group to keep; after the last group the engine
    builds the physically compact model (channel selection, least-squares reconstruction and
    BatchNorm recalibration as the task's :class:`~amc.config.PruneConfig` says), checks that its
    measured MACs and params equal the accounting, and scores it on the *search* split.

    ## Action Space
    ``Box(0, 1, (1,), float32)``: the **preserve ratio** of the current group (fraction of channels
    kept; 1 = unpruned). It is clipped to ``[lbound, rbound]``, turned into a channel count (nearest
    multiple of ``round_to``, never zero). In resource-constrained mode the budget is met by
    ``budget_rule``: ``clamp`` caps each action so that the target stays reachable with every later
    group at ``lbound`` (AMC's clamp, :meth:`amc.cost.Budget.max_count`); ``scale`` leaves the actions
    alone during the episode and, at its end, multiplies all of them by the one factor that meets the
    budget (:meth:`amc.cost.Budget.scaled`). The ratio executed so far (count / channels; with
    ``scale``, before the final scaling) is reported in ``info["executed_action"]`` and is what the
    next observation carries; the final counts are in the :class:`EpisodeResult`.

    ## Observation Space
    ``Box(0, 1, (11,), float32)``: AMC's features (:mod:`amc_envs.observation`): ``index``, the group's
    ``out_channels``, the producer's ``in_channels``, ``in_height``, ``in_width``, ``stride``, ``kernel``
    (min-max scaled over the groups), ``cost`` (cost that scales with this group / dense), ``reduced``
    (cost removed by earlier decisions / dense), ``rest`` (cost later groups can still scale / dense)
    and ``previous_action`` (previous executed preserve ratio; 1 at the first step).

    ## Rewards
    0 on every step but the last. On the last step, with ``error = 1 - accuracy`` on the search
    split (``metric``: top-1 or top-5; or ``1 - score`` of the task's evaluator) and ``scale`` =
    ``reward_scale``:
    - ``mode="constrained"`` (resource-constrained): ``R = -scale * error``;
    - ``mode="accuracy"`` (accuracy-guaranteed): ``R = -scale * error * log(resource)``, resource being
      the compact model's measured cost (MACs or params), no clamp.

    ## Starting State
    The first group, with no decision taken; deterministic (the environment has no randomness of
    its own; ``reset(seed=...)`` seeds ``self.np_random`` as Gymnasium requires).

    ## Episode End
    After the last prunable group: ``terminated=True`` (never truncated). ``info["result"]`` then
    holds the :class:`EpisodeResult` (timings: seconds of prune, reconstruct, bn_recalibration, evaluate).
    A policy already scored ahead (:attr:`ahead`, filled by a pool of scoring processes from the
    episodes :meth:`plan` predicts, with scores or futures of them) is not scored again: scoring is a pure
    function of the kept counts.

    ## Arguments
    - ``task``: a :class:`~amc_envs.task.PruningTask` (default: a tiny synthetic task, for checks).
    - ``cfg``: :class:`~amc.config.EnvConfig`: ``cost`` (``macs`` | ``params``) and ``target`` (fraction
      of the dense cost to keep), ``mode`` (``constrained`` | ``accuracy``), ``lbound`` / ``rbound``
      (preserve-ratio bounds), ``round_to`` (counts are multiples of it), ``metric`` (``top1`` | ``top5``),
      ``reward_scale``, ``budget_rule`` (``clamp`` | ``scale``). A task with an ``evaluator`` is scored by it
      (accuracy = its score) whatever ``metric`` says.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: PruningTask | None = None, cfg: EnvConfig = EnvConfig()):
        if cfg.mode not in ("constrained", "accuracy") or cfg.metric not in ("top1", "top5") \
                or cfg.budget_rule not in BUDGET_RULES:
            raise AmcError(f"bad environment option: mode={cfg.mode!r}, metric={cfg.metric!r}, "
                           f"budget_rule={cfg.budget_rule!r}")
        check_reward_cost(cfg)
        if not math.isfinite(cfg.reward_scale) or cfg.reward_scale <= 0:
            raise AmcError(f"reward_scale must be a positive number, got {cfg.reward_scale}")
        self.task = task or PruningTask.tiny()
        self.cfg = cfg
        # accuracy mode has no budget: the target only bounds nothing, so check reachability at 1
        self.budget = self.make_budget(cfg.target if cfg.mode == "constrained" else 1.0)
        self.groups = self.budget.groups
        self.observer = self.make_observer()
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (len(FEATURES),), np.float32)
        self._t = 0
        self._keep: dict[GroupName, int] = {}
        self._requested: dict[GroupName, float] = {}
        self.ahead: dict[tuple, Any] = {}  # by policy_key: a Scored, or a future with .result() -> Scored
        self.scored_ahead = 0  # episodes whose score came from ``ahead``

    def make_budget(self, target: float) -> Budget:
        """The budget rule over what this environment prunes (channel groups here)."""
        cost = self.task.costs.get(self.cfg.cost, self.cfg.cost)  # the task's own model (a latency table)
        return Budget(self.task.graph, cost, target, round_to=self.cfg.round_to, lbound=self.cfg.lbound,
                      rbound=self.cfg.rbound)

    def make_observer(self) -> Observer:
        return Observer(self.budget)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        self._keep, self._requested = {}, {}
        return self.observer(0, self._keep), {"group": self.groups[0].name}

    def count_for(self, t: int, requested: float, keep: dict[GroupName, int] | None = None) -> int:
        """The channel count the action ``requested`` (a preserve ratio) executes at step ``t``, after the
        decisions ``keep`` (default: this episode's so far)."""
        g = self.groups[t]
        count = self.budget.count_for(g.name, requested)
        if self.cfg.mode == "constrained" and self.cfg.budget_rule == "clamp":
            count = min(count, self.budget.max_count(g.name, self._keep if keep is None else keep))
        return count

    def decide(self, t: int, action, keep: dict[GroupName, int], requested: dict[GroupName, float]) -> dict[str, Any]:
        """Execute ``action`` at step ``t`` into ``keep`` / ``requested`` (updated in place); returns the step's info."""
        g = self.groups[t]
        ratio = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        keep[g.name] = self.count_for(t, ratio, keep)
        requested[g.name] = ratio
        return {"group": g.name, "requested_action": ratio, "executed_action": keep[g.name] / self.budget.size(g.name)}

    def final_keep(self, keep: dict[GroupName, int], requested: dict[GroupName, float]) -> dict[GroupName, int]:
        """The counts an episode that decided ``keep`` prunes to (``budget_rule="scale"`` rescales them here)."""
        if self.cfg.mode == "constrained" and self.cfg.budget_rule == "scale":
            return self.budget.scaled(requested)[1]
        return keep

    def plan(self, actions) -> dict[GroupName, int]:
        """The counts an episode of these actions (one per group, in order) prunes to, without running it."""
        keep: dict[GroupName, int] = {}
        requested: dict[GroupName, float] = {}
        for t, action in enumerate(actions):
            self.decide(t, action, keep, requested)
        return self.final_keep(keep, requested)

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        info = self.decide(self._t, action, self._keep, self._requested)
        self._t += 1
        if self._t < len(self.groups):
            return self.observer(self._t, self._keep), 0.0, False, False, info
        self._keep = self.final_keep(self._keep, self._requested)
        result = self.evaluate(self._keep, self._requested)
        info["result"] = result
        return np.zeros(self.observation_space.shape, dtype=np.float32), result.reward, True, False, info

    @property
    def score_key(self) -> str:
        """The metric the reward is computed from: the evaluator's ``score`` when the task has one."""
        return "score" if self.task.evaluator is not None else self.cfg.metric

    def reward_of(self, accuracy: float, cost: float) -> float:
        error = 1.0 - accuracy
        if self.cfg.mode == "constrained":
            return -self.cfg.reward_scale * error
        return -self.cfg.reward_scale * error * math.log(cost)

    def score(self, keep: dict[GroupName, int]) -> Scored:
        """Prune to ``keep``, verify its costs, score it (what an episode's end computes; no state changes)."""
        metrics, result = self.task.evaluate(keep)
        return Scored(metrics, {name: idx.tolist() for name, idx in result.selection.kept.items()}, dict(result.timings))

    def evaluate(self, keep: dict[GroupName, int], requested: dict[GroupName, float] | None = None) -> EpisodeResult:
        """The :class:`EpisodeResult` of pruning to ``keep`` (scored now, or taken from :attr:`ahead`)."""
        scored = self.ahead.pop(policy_key(keep), None)
        if scored is None:
            scored = self.score(keep)
        else:
            scored = scored if isinstance(scored, Scored) else scored.result()  # waits for a worker
            self.scored_ahead += 1
        return self.episode_result(keep, requested, scored)

    def episode_result(self, keep: dict[GroupName, int], requested: dict[GroupName, float] | None,
                       scored: Scored) -> EpisodeResult:
        metrics, cost = scored.metrics, self.budget.cost.name
        return EpisodeResult(
            keep=dict(keep), requested=dict(requested or {g: keep[g] / self.task.graph.group[g].channels for g in keep}),
            executed={g.name: keep[g.name] / g.channels for g in self.groups}, kept=dict(scored.kept),
            cost_ratio={name: metrics[f"{name}_ratio"] for name in self.task.costs},
            metrics={k: metrics[k] for k in SCORES if k in metrics},
            reward=self.reward_of(metrics[self.score_key], metrics[cost]), timings=dict(scored.timings))
