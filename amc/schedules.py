"""Pruning schedules for fine-tuning: one-shot, automated gradual pruning (AGP) and prune -> fine-tune rounds.

A schedule says *when* and *how much*; what it prunes is a small object with ``final``, ``unit``
and ``masks(model, level)``: :class:`WeightMagnitude` (the default: weights by magnitude,
:mod:`amc.unstructured`; level = sparsity = fraction of weights removed) or :class:`ChannelMasks`
(whole channels chosen by a criterion, masked during training and removed for real at the end by
``ChannelMasks.compact``; level = fraction of the prunable channels removed). Schedules plug into
:class:`amc.training.Trainer` as callbacks, next to :class:`~amc.training.KeepMasks` (which keeps
masked weights and their momentum at zero between pruning steps):

- **one-shot**: ``prune_unstructured`` to the final sparsity, then train E epochs with ``KeepMasks``;
- :class:`AGP` (Zhu & Gupta 2017): at optimizer steps ``t0, t0 + dt, ..., t0 + n dt`` the masks are
  recomputed to ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` (:func:`agp_sparsity`);
- :class:`PruneRounds`: ``rounds`` equal stretches of the epochs; at the start of round k
  (1-based) the masks are recomputed to ``1 - (1 - s_f)^(k / rounds)`` (each round removes the
  same fraction of the remaining weights; the last reaches ``s_f``).

Each pruning step records ``{"step", "epoch", <unit>, "measured"}`` (channels: also
``macs_kept``, the fraction of the dense MACs kept) in the callback's ``events`` and puts the
current level in the Trainer's metrics row, so the history shows
the accuracy (with :class:`~amc.training.Validate`) next to the sparsity of every epoch.
:func:`schedule_callbacks` builds the callbacks of a named schedule with the same total epochs.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import torch
from torch import nn

from .calibration import CalibrationSet, Needs, collect_stats
from .cost import MacsCost, check_costs
from .errors import AmcError
from .importance import ScoringContext, criterion as get_criterion
from .prune import ChannelPruner, MaskPruner, fold_masks
from .selection import Selection, top_channels
from .structure import DependencyGraph, GroupName, Keep
from .training import Callback, KeepMasks, TrainState
from .unstructured import apply_masks, copy_model, magnitude_masks, prune_unstructured

SCHEDULES = ("oneshot", "agp", "rounds")


def agp_sparsity(step: int, *, final: float, initial: float = 0.0, start: int = 0, every: int = 1,
                 count: int = 10) -> float:
    """AGP's target sparsity after ``step`` optimizer steps: ``initial`` before ``start``, the cubic ramp
    over ``count`` pruning steps ``every`` steps apart, ``final`` from ``start + count * every`` on."""
    if step < start:
        return initial
    progress = min(1.0, (step - start) / (count * every))
    return final + (initial - final) * (1 - progress) ** 3


class WeightMagnitude:
    """What a weight schedule prunes: conv/linear weights by magnitude (:func:`amc.unstructured.magnitude_masks`).

    ``level``: fraction of weights removed. ``final``: the level the schedule ends at (with per-layer
    ``sparsities``, their largest; every layer is then scaled to ``level / final`` of its own).
    """

    unit = "sparsity"

    def __init__(self, final: float, scope: str = "layer", keep_dense: Sequence[str] = (),
                 sparsities: Mapping[str, float] | None = None):
        if sparsities:
            final = max(sparsities.values())
        if not 0 <= final < 1:
            raise AmcError(f"final sparsity {final} is not a fraction of weights removed in [0, 1)")
        self.final, self.scope, self.keep_dense = final, scope, tuple(keep_dense)
        self.sparsities = dict(sparsities or {})

    def masks(self, model: nn.Module, level: float) -> tuple[dict[str, torch.Tensor], dict]:
        """(masks at ``level``, measured figures: ``measured`` = fraction of the masked layers' weights that is zero)."""
        per_layer = None
        if self.sparsities:
            factor = level / self.final if self.final > 0 else 0.0
            per_layer = {n: v * factor for n, v in self.sparsities.items()}
        masks = magnitude_masks(model, 0.0 if per_layer else level, scope=self.scope, keep_dense=self.keep_dense,
                                sparsities=per_layer)
        zeros = sum(int((~m).sum()) for m in masks.values())
        return masks, {"measured": zeros / max(1, sum(m.numel() for m in masks.values()))}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ChannelMasks:
    """What a channel schedule prunes: whole channels, masked during training and removed at the end.

    ``keep``: the final kept channel count per group (a channel policy's ``policy.keep(graph)``).
    At ``level`` (fraction of the prunable groups' channels removed, from 0 to ``final``) each group
    has lost ``level / final`` of its final removal (rounded to its count step); the channels to drop
    are the lowest-scored by ``criterion`` on the current weights, among those still kept, so a
    removed channel never returns. A removed channel's consumer weights are masked (the function of
    the compact model, with the dense shapes: :class:`amc.prune.MaskPruner`), and :meth:`compact`
    removes the channels for real once the final level is reached. Data criteria (``apoz``,
    ``taylor``, ...) score on ``calibration`` images at every pruning step.
    """

    unit = "channels_removed"

    def __init__(self, graph: DependencyGraph, keep: Keep, *, criterion: str = "l1",
                 calibration: CalibrationSet | None = None, points_per_image: int = 10, seed: int = 0):
        self.graph, self.criterion, self.seed = graph, get_criterion(criterion), seed
        self.calibration, self.points_per_image = calibration, points_per_image
        needs = self.criterion.needs & (Needs.ACTIVATIONS | Needs.GRADIENTS)
        if needs and (calibration is None or len(calibration) == 0):
            raise AmcError(f"criterion '{criterion}' scores channels on data: give calibration images")
        self.groups = {}
        for name, n in keep.items():
            g = graph.group.get(name)
            if g is None:
                raise AmcError(f"unknown channel group '{name}'")
            if n < g.channels:
                if not g.prunable:
                    raise AmcError(f"group '{name}' is not prunable: {g.reason}")
                if not 0 < n or n % g.blocks:
                    raise AmcError(f"group '{name}' cannot keep {n} of {g.channels} channels")
                self.groups[name] = int(n)
        total = sum(graph.group[n].channels for n in self.groups)
        self.final = 1 - sum(self.groups.values()) / total if total else 0.0
        self.kept: dict[GroupName, torch.Tensor] = {}
        self._dense_macs = MacsCost().cost(graph)

    def counts(self, level: float) -> dict[GroupName, int]:
        """Kept channels per group at ``level`` (fraction of channels removed, 0..final)."""
        progress = min(1.0, level / self.final) if self.final > 0 else 1.0
        out = {}
        for name, final_keep in self.groups.items():
            g = self.graph.group[name]
            steps = (g.channels - final_keep) // g.blocks
            out[name] = g.channels - round(progress * steps) * g.blocks
        return out

    def masks(self, model: nn.Module, level: float) -> tuple[dict[str, torch.Tensor], dict]:
        current = fold_masks(copy_model(model)).eval()
        stats = None
        needs = self.criterion.needs & (Needs.ACTIVATIONS | Needs.GRADIENTS)
        if needs:
            stats = collect_stats(current, self.graph, self.calibration, needs, points_per_image=self.points_per_image,
                                  seed=self.seed)
        ctx = ScoringContext(self.graph, dict(current.named_modules()), stats, self.seed)
        kept = {}
        for name, n in self.counts(level).items():
            g = self.graph.group[name]
            if n >= g.channels:
                continue
            scores = self.criterion.channel_scores(ctx, g).clone()
            if name in self.kept:
                still = torch.zeros(g.channels, dtype=torch.bool)
                still[self.kept[name]] = True
                scores[~still] = -math.inf
            kept[name] = top_channels(scores, n, g.blocks)
        self.kept = kept
        keep = {n: len(i) for n, i in kept.items()}
        total = sum(self.graph.group[n].channels for n in self.groups)
        removed = sum(self.graph.group[n].channels - k for n, k in keep.items())
        figures = {"measured": removed / total if total else 0.0,
                   "macs_kept": MacsCost().cost(self.graph, keep) / self._dense_macs}
        return MaskPruner(self.graph).masks(Selection(kept)), figures

    def compact(self, model: nn.Module) -> nn.Module:
        """A physically smaller copy of the trained, masked ``model``, computing the same function.

        Raises :class:`AmcError` when the schedule has not reached its final level yet.
        """
        if {n: len(i) for n, i in self.kept.items()} != {n: k for n, k in self.groups.items()}:
            raise AmcError("the channel schedule has not reached its final kept counts yet (too few epochs?)")
        small = ChannelPruner(self.graph).apply(fold_masks(copy_model(model)), Selection(self.kept))
        check_costs(self.graph, self.groups, small, [MacsCost()])
        return small

    def state_dict(self) -> dict:
        return {"kept": {n: i.tolist() for n, i in self.kept.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.kept = {n: torch.tensor(i, dtype=torch.long) for n, i in state.get("kept", {}).items()}


Pruning = Union[WeightMagnitude, ChannelMasks]


class _Schedule(Callback):
    """Shared parts: masks to a level, zero momentum at newly masked positions, record the step."""

    def __init__(self, final: float | None, scope: str, keep_dense: Sequence[str], sparsities: Mapping[str, float] | None,
                 pruning: Pruning | None):
        if pruning is None:
            if final is None:
                raise AmcError("give the final sparsity (or what to prune: pruning=ChannelMasks(...))")
            pruning = WeightMagnitude(final, scope, keep_dense, sparsities)
        self.pruning = pruning
        self.final = pruning.final
        self.events: list[dict] = []
        self.current = 0.0

    def _prune(self, s: TrainState, level: float) -> None:
        masks, figures = self.pruning.masks(s.model, level)
        apply_masks(s.model, masks)
        with torch.no_grad():
            modules = dict(s.model.named_modules())
            for name in masks:
                param = modules[name].weight_orig
                momentum = s.optimizer.state.get(param, {}).get("momentum_buffer")
                if momentum is not None:
                    momentum.mul_(modules[name].weight_mask)
        self.current = level
        self.events.append({"step": s.step, "epoch": s.epoch, self.pruning.unit: level, **figures})
        s.metrics[self.pruning.unit] = level

    def on_epoch_end(self, s: TrainState) -> None:
        s.metrics[self.pruning.unit] = self.current

    def state_dict(self) -> dict:
        return {"events": [dict(e) for e in self.events], "current": self.current,
                "pruning": self.pruning.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.events = [dict(e) for e in state.get("events", [])]
        self.current = float(state.get("current", 0.0))
        self.pruning.load_state_dict(state.get("pruning", {}))


class AGP(_Schedule):
    """Automated gradual pruning: masks recomputed at steps ``start + k * every`` (k = 0..count) to
    :func:`agp_sparsity`, ending at ``final`` (fraction of weights removed).

    ``scope`` / ``keep_dense``: as in :func:`amc.prune_unstructured`. ``sparsities``: per-layer final
    sparsities (e.g. a weight policy's; ``final`` is then their largest and unnamed layers stay
    dense); every layer follows the same cubic ramp, scaled to its own final sparsity.
    ``pruning``: what to prune instead of weights, e.g. :class:`ChannelMasks` (``final`` is then
    its fraction of channels removed; give ``final=None``). A pruning step at ``start == 0``
    happens before the first optimizer step.
    """

    def __init__(self, final: float | None = None, *, initial: float = 0.0, start: int = 0, every: int = 1,
                 count: int = 10, scope: str = "layer", keep_dense: Sequence[str] = (),
                 sparsities: Mapping[str, float] | None = None, pruning: Pruning | None = None):
        super().__init__(final, scope, keep_dense, sparsities, pruning)
        if every < 1 or count < 1 or start < 0:
            raise AmcError(f"AGP needs every >= 1, count >= 1 and start >= 0, got {every}, {count}, {start}")
        if not 0 <= initial <= self.final:
            raise AmcError(f"AGP initial sparsity {initial} must lie in [0, final = {self.final}]")
        self.initial, self.start, self.every, self.count = initial, start, every, count

    @property
    def steps(self) -> list[int]:
        """The optimizer steps (completed) after which the masks are recomputed."""
        return [self.start + k * self.every for k in range(self.count + 1)]

    def target(self, step: int) -> float:
        return agp_sparsity(step, final=self.final, initial=self.initial, start=self.start, every=self.every,
                            count=self.count)

    def on_train_start(self, s: TrainState) -> None:
        if s.step == self.start:
            self._prune(s, self.target(s.step))

    def on_step_end(self, s: TrainState) -> None:
        if s.step in self.steps:
            self._prune(s, self.target(s.step))


class PruneRounds(_Schedule):
    """``rounds`` prune -> fine-tune rounds over ``epochs`` epochs: at the start of epoch
    ``floor((k - 1) * epochs / rounds)`` the masks go to ``1 - (1 - final)^(k / rounds)``, k = 1..rounds.
    ``pruning``: as in :class:`AGP`."""

    def __init__(self, final: float | None = None, *, rounds: int, epochs: int, scope: str = "layer",
                 keep_dense: Sequence[str] = (), sparsities: Mapping[str, float] | None = None,
                 pruning: Pruning | None = None):
        super().__init__(final, scope, keep_dense, sparsities, pruning)
        if rounds < 1 or epochs < rounds:
            raise AmcError(f"{rounds} pruning rounds need at least as many epochs (got {epochs})")
        self.rounds, self.epochs = rounds, epochs
        self.starts = {((k - 1) * epochs) // rounds: k for k in range(1, rounds + 1)}

    def target(self, k: int) -> float:
        return 1 - (1 - self.final) ** (k / self.rounds)

    def on_epoch_start(self, s: TrainState) -> None:
        if s.epoch in self.starts:
            self._prune(s, self.target(self.starts[s.epoch]))


def schedule_callbacks(model: nn.Module, schedule: str, final: float | None = None, *, epochs: int,
                       steps_per_epoch: int, rounds: int = 3, scope: str = "layer", keep_dense: Sequence[str] = (),
                       sparsities: Mapping[str, float] | None = None, pruning: Pruning | None = None,
                       agp_fraction: float = 0.75, agp_count: int = 10) -> tuple[nn.Module, list[Callback]]:
    """(model to train, callbacks) for a named schedule over ``epochs`` epochs of ``steps_per_epoch`` steps.

    ``oneshot``: a pruned copy (weights) or a copy pruned at the first step (``pruning``) and
    :class:`KeepMasks`; ``agp``: a copy of ``model``, :class:`AGP` from step 0 over the first
    ``agp_fraction`` of the steps in at most ``agp_count`` pruning steps, and ``KeepMasks``;
    ``rounds``: a copy, :class:`PruneRounds` and ``KeepMasks``. ``model`` is never changed.
    With ``pruning=ChannelMasks(...)`` the trained copy is masked; ``pruning.compact(model)``
    then removes the channels for real.
    """
    if schedule not in SCHEDULES:
        raise AmcError(f"unknown schedule '{schedule}' (choose {', '.join(SCHEDULES)})")
    if schedule == "oneshot" and pruning is None:
        return prune_unstructured(model, final, scope=scope, keep_dense=keep_dense, sparsities=sparsities), [KeepMasks()]
    work = copy_model(model)
    common = {"scope": scope, "keep_dense": keep_dense, "sparsities": sparsities, "pruning": pruning}
    if schedule == "agp":
        span = max(1, math.floor(agp_fraction * epochs * steps_per_epoch))
        count = max(1, min(agp_count, span))
        return work, [AGP(final, every=span // count, count=count, **common), KeepMasks()]
    return work, [PruneRounds(final, rounds=1 if schedule == "oneshot" else rounds, epochs=epochs, **common),
                  KeepMasks()]
