"""Pruning schedules for fine-tuning: one-shot, automated gradual pruning (AGP) and prune -> fine-tune rounds.

All prune weights by magnitude (:mod:`amc.unstructured`; sparsity = fraction of weights removed)
and plug into :class:`amc.training.Trainer` as callbacks, next to :class:`~amc.training.KeepMasks`
(which keeps masked weights and their momentum at zero between pruning steps):

- **one-shot**: ``prune_unstructured`` to the final sparsity, then train E epochs with ``KeepMasks``;
- :class:`AGP` (Zhu & Gupta 2017): at optimizer steps ``t0, t0 + dt, ..., t0 + n dt`` the masks are
  recomputed to ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` (:func:`agp_sparsity`);
- :class:`PruneRounds`: ``rounds`` equal stretches of the epochs; at the start of round k
  (1-based) the masks are recomputed to ``1 - (1 - s_f)^(k / rounds)`` (each round removes the
  same fraction of the remaining weights; the last reaches ``s_f``).

Each pruning step records ``{"step", "epoch", "sparsity", "measured"}`` in the callback's
``events`` and puts the current ``sparsity`` in the Trainer's metrics row, so the history shows
the accuracy (with :class:`~amc.training.Validate`) next to the sparsity of every epoch.
:func:`schedule_callbacks` builds the callbacks of a named schedule with the same total epochs.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from .errors import AmcError
from .training import Callback, KeepMasks, TrainState
from .unstructured import apply_masks, copy_model, layer_sparsities, magnitude_masks, prune_unstructured

SCHEDULES = ("oneshot", "agp", "rounds")


def agp_sparsity(step: int, *, final: float, initial: float = 0.0, start: int = 0, every: int = 1,
                 count: int = 10) -> float:
    """AGP's target sparsity after ``step`` optimizer steps: ``initial`` before ``start``, the cubic ramp
    over ``count`` pruning steps ``every`` steps apart, ``final`` from ``start + count * every`` on."""
    if step < start:
        return initial
    progress = min(1.0, (step - start) / (count * every))
    return final + (initial - final) * (1 - progress) ** 3


class _MagnitudeSchedule(Callback):
    """Shared parts: recompute masks to a sparsity, zero momentum at newly masked positions, record it."""

    def __init__(self, final: float, scope: str, keep_dense: Sequence[str], sparsities: Mapping[str, float] | None):
        if sparsities:
            final = max(sparsities.values())  # per-layer targets: the ramp's sparsity is their largest
        if not 0 <= final < 1:
            raise AmcError(f"final sparsity {final} is not a fraction of weights removed in [0, 1)")
        self.final, self.scope, self.keep_dense = final, scope, tuple(keep_dense)
        self.sparsities = dict(sparsities or {})
        self.events: list[dict] = []
        self.current = 0.0

    def _prune(self, s: TrainState, sparsity: float) -> None:
        """Masks of ``s.model`` at ``sparsity`` (or per-layer sparsities scaled by ``sparsity / final``)."""
        per_layer = None
        if self.sparsities:
            factor = sparsity / self.final if self.final > 0 else 0.0
            per_layer = {n: v * factor for n, v in self.sparsities.items()}
        masks = magnitude_masks(s.model, 0.0 if per_layer else sparsity, scope=self.scope, keep_dense=self.keep_dense, sparsities=per_layer)
        apply_masks(s.model, masks)
        with torch.no_grad():
            modules = dict(s.model.named_modules())
            for name in masks:
                param = modules[name].weight_orig
                momentum = s.optimizer.state.get(param, {}).get("momentum_buffer")
                if momentum is not None:
                    momentum.mul_(modules[name].weight_mask)
        self.current = sparsity
        zeros = layer_sparsities(s.model)
        weights = {n: m.weight_mask.numel() for n, m in modules.items() if n in masks}
        measured = sum(zeros[n] * w for n, w in weights.items()) / max(1, sum(weights.values()))
        self.events.append({"step": s.step, "epoch": s.epoch, "sparsity": sparsity, "measured": measured})
        s.metrics["sparsity"] = sparsity

    def on_epoch_end(self, s: TrainState) -> None:
        s.metrics["sparsity"] = self.current

    def state_dict(self) -> dict:
        return {"events": [dict(e) for e in self.events], "current": self.current}

    def load_state_dict(self, state: dict) -> None:
        self.events = [dict(e) for e in state.get("events", [])]
        self.current = float(state.get("current", 0.0))


class AGP(_MagnitudeSchedule):
    """Automated gradual pruning: masks recomputed at steps ``start + k * every`` (k = 0..count) to
    :func:`agp_sparsity`, ending at ``final`` (fraction of weights removed).

    ``scope`` / ``keep_dense``: as in :func:`amc.prune_unstructured`. ``sparsities``: per-layer final
    sparsities (e.g. a weight policy's; ``final`` is then their largest and unnamed layers stay
    dense); every layer follows the same cubic ramp, scaled to its own final sparsity.
    A pruning step at ``start == 0`` happens before the first optimizer step.
    """

    def __init__(self, final: float, *, initial: float = 0.0, start: int = 0, every: int = 1, count: int = 10,
                 scope: str = "layer", keep_dense: Sequence[str] = (), sparsities: Mapping[str, float] | None = None):
        super().__init__(final, scope, keep_dense, sparsities)
        if every < 1 or count < 1 or start < 0:
            raise AmcError(f"AGP needs every >= 1, count >= 1 and start >= 0, got {every}, {count}, {start}")
        if not 0 <= initial <= final:
            raise AmcError(f"AGP initial sparsity {initial} must lie in [0, final = {final}]")
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


class PruneRounds(_MagnitudeSchedule):
    """``rounds`` prune -> fine-tune rounds over ``epochs`` epochs: at the start of epoch
    ``floor((k - 1) * epochs / rounds)`` the masks go to ``1 - (1 - final)^(k / rounds)``, k = 1..rounds."""

    def __init__(self, final: float, *, rounds: int, epochs: int, scope: str = "layer", keep_dense: Sequence[str] = (),
                 sparsities: Mapping[str, float] | None = None):
        super().__init__(final, scope, keep_dense, sparsities)
        if rounds < 1 or epochs < rounds:
            raise AmcError(f"{rounds} pruning rounds need at least as many epochs (got {epochs})")
        self.rounds, self.epochs = rounds, epochs
        self.starts = {((k - 1) * epochs) // rounds: k for k in range(1, rounds + 1)}

    def target(self, k: int) -> float:
        return 1 - (1 - self.final) ** (k / self.rounds)

    def on_epoch_start(self, s: TrainState) -> None:
        if s.epoch in self.starts:
            self._prune(s, self.target(self.starts[s.epoch]))


def schedule_callbacks(model: nn.Module, schedule: str, final: float, *, epochs: int, steps_per_epoch: int,
                       rounds: int = 3, scope: str = "layer", keep_dense: Sequence[str] = (),
                       sparsities: Mapping[str, float] | None = None,
                       agp_fraction: float = 0.75, agp_count: int = 10) -> tuple[nn.Module, list[Callback]]:
    """(model to train, callbacks) for a named schedule over ``epochs`` epochs of ``steps_per_epoch`` steps.

    ``oneshot``: a pruned copy and :class:`KeepMasks`; ``agp``: a copy of ``model``, :class:`AGP` from
    step 0 over the first ``agp_fraction`` of the steps in at most ``agp_count`` pruning steps, and
    ``KeepMasks``; ``rounds``: a copy, :class:`PruneRounds` and ``KeepMasks``. ``model`` is never changed.
    """
    if schedule not in SCHEDULES:
        raise AmcError(f"unknown schedule '{schedule}' (choose {', '.join(SCHEDULES)})")
    if schedule == "oneshot":
        return prune_unstructured(model, final, scope=scope, keep_dense=keep_dense, sparsities=sparsities), [KeepMasks()]
    work = copy_model(model)
    if schedule == "agp":
        span = max(1, math.floor(agp_fraction * epochs * steps_per_epoch))
        count = max(1, min(agp_count, span))
        return work, [AGP(final, every=span // count, count=count, scope=scope, keep_dense=keep_dense,
                          sparsities=sparsities), KeepMasks()]
    return work, [PruneRounds(final, rounds=rounds, epochs=epochs, scope=scope, keep_dense=keep_dense,
                              sparsities=sparsities), KeepMasks()]
