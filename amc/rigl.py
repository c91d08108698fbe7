"""Sparse training at a fixed sparsity: RigL (Evci et al. 2020), SET (random regrowth) and static masks.

Units: **sparsity** = fraction of the weights *removed*, counted over the prunable conv/linear
layers (those not matching a ``keep_dense`` glob, which stay dense and outside the count); steps are
optimizer steps (batches), counted from the start of training.

- :func:`erk_sparsities`: Erdős–Rényi-Kernel allocation. Layer ``l`` with weight shape
  ``(n_out, n_in, k_h, k_w)`` gets density ``ε (n_out + n_in + k_h + k_w) / (n_out n_in k_h k_w)``
  (linear layers: ``ε (n_out + n_in) / (n_out n_in)``); ε is solved so the kept weights add up to
  ``1 - sparsity`` of the total; a layer whose density would exceed 1 is made dense and ε solved
  again. Kept counts are whole numbers rounded by largest remainder, so exactly
  ``round(sparsity * N)`` of the ``N`` prunable weights are removed.
- :class:`RigL`: a :class:`~amc.training.KeepMasks` whose explicit masks (plain modules, no
  ``torch.nn.utils.prune`` reparametrisation, so ``weight.grad`` is the dense gradient dL/dW) change
  every ``every`` steps while ``t < end_step``: in each layer ``k = round(f(t) * active)`` active
  weights with the smallest magnitude are dropped and the same number of positions inactive after the
  drop are grown -- where ``|dL/dW|`` of that step is largest (``rigl``) or at random (``set``,
  seeded) -- so every layer keeps its exact count. ``f(t) = α (1 + cos(π t / end_step)) / 2``.
  Newly grown weights (and their momentum) start at exactly zero; a position dropped and regrown in
  the same update keeps its value. ``static`` never updates (static sparse training).
  The update runs in ``on_step_end`` of step ``t`` (the gradient is captured in that step's
  ``on_after_backward``, at the weights before the optimizer step; the drop uses the weights after it).
- :func:`sparse_train`: ERK masks (random, or by magnitude for a pretrained dense model), then
  training with :class:`RigL`, resumable from ``OUT/last.pt`` at epoch boundaries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from .config import TrainConfig, validate
from .data import ImageSet, Normalization
from .errors import AmcError
from .io import atomic_write_text
from .training import Callback, Checkpoint, CsvMetrics, KeepMasks, Progress, Trainer, TrainState, Validate
from .unstructured import magnitude_masks, prunable_layers

METHODS = ("rigl", "set", "static")
INITIAL_MASKS = ("random", "magnitude")


@dataclass(frozen=True)
class SparseConfig:
    """One sparse training run.

    method: ``rigl`` (grow where |dense gradient| is largest) | ``set`` (grow at random) | ``static``
    (the initial masks throughout). sparsity: fraction of the prunable weights removed, in [0, 1),
    spread over the layers by ERK (0 = dense training in the same loop). keep_dense: glob patterns
    of conv/linear layers left dense. initial_mask: ``random`` (positions drawn uniformly in each
    layer: training from scratch) | ``magnitude`` (the largest weights: from a pretrained dense
    model). update_every: ΔT, optimizer steps between mask updates. drop_fraction: α, the fraction
    of each layer's active weights replaced at step 0 of the cosine decay. end_fraction: no updates
    from this fraction of all training steps on (T_end). seed: the random initial masks and SET's
    regrowth. train: the optimizer, schedule and epochs (:class:`~amc.config.TrainConfig`).
    """

    method: str = "rigl"
    sparsity: float = 0.9
    keep_dense: tuple[str, ...] = ()
    initial_mask: str = "random"
    update_every: int = 100
    drop_fraction: float = 0.3
    end_fraction: float = 0.75
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)


def check_config(cfg: SparseConfig) -> SparseConfig:
    """Raise :class:`AmcError` naming the first nonsense value of ``cfg``; returns ``cfg``."""
    def bad(name, value, expected):
        raise AmcError(f"{name} = {value!r} is not valid: expected {expected}")

    if cfg.method not in METHODS:
        bad("method", cfg.method, " | ".join(METHODS))
    if cfg.initial_mask not in INITIAL_MASKS:
        bad("initial_mask", cfg.initial_mask, " | ".join(INITIAL_MASKS))
    if not _number(cfg.sparsity) or not 0 <= cfg.sparsity < 1:
        bad("sparsity", cfg.sparsity, "a fraction of weights removed in [0, 1)")
    if not _whole(cfg.update_every, 1):
        bad("update_every", cfg.update_every, "a whole number of steps >= 1")
    if not _number(cfg.drop_fraction) or not 0 <= cfg.drop_fraction <= 1:
        bad("drop_fraction", cfg.drop_fraction, "a fraction in [0, 1]")
    if not _number(cfg.end_fraction) or not 0 <= cfg.end_fraction <= 1:
        bad("end_fraction", cfg.end_fraction, "a fraction of the training steps in [0, 1]")
    if not _whole(cfg.seed, 0):
        bad("seed", cfg.seed, "a whole number >= 0")
    validate(cfg.train, "train")
    return cfg


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x, low: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


# ---------------------------------------------------------------- layer sparsities and masks
def erk_sparsities(model: nn.Module, sparsity: float, keep_dense: Sequence[str] = (),
                   power: float = 1.0) -> dict[str, float]:
    """Erdős–Rényi-Kernel sparsity (fraction removed) of every prunable layer, totalling exactly ``sparsity``.

    Layers matching ``keep_dense`` are left out (dense, not counted). ``power`` scales the ERK
    score (``score ** power``; 1 = ERK, 0 = uniform). Each value is ``removed / numel`` for a whole
    number ``removed``, so ``round(s * numel)`` (what :func:`~amc.unstructured.magnitude_masks`
    removes) gives back that count, and the counts add up to ``round(sparsity * N)``.
    """
    if not _number(sparsity) or not 0 <= sparsity < 1:
        raise AmcError(f"sparsity = {sparsity!r} is not valid: expected a fraction of weights removed in [0, 1)")
    layers = prunable_layers(model, keep_dense)
    if not layers:
        raise AmcError("the model has no prunable conv or linear layers")
    shapes = {name: tuple(_weight(m).shape) for name, m in layers.items()}
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    total = sum(sizes.values())
    keep_total = total - round(sparsity * total)
    score = {name: (sum(shape) / sizes[name]) ** power for name, shape in shapes.items()}
    dense: set[str] = set()
    while True:  # RigL's loop: solve ε, make the layers that would exceed density 1 dense, repeat
        rest = [n for n in layers if n not in dense]
        budget = (1 - sparsity) * total - sum(sizes[n] for n in dense)
        eps = budget / sum(score[n] * sizes[n] for n in rest) if rest else 0.0
        over = [n for n in rest if eps * score[n] > 1]
        if not over:
            break
        top = max(score[n] for n in over)
        dense.update(n for n in over if score[n] == top)
    real = {n: float(sizes[n]) if n in dense else eps * score[n] * sizes[n] for n in layers}
    kept = {n: min(sizes[n], math.floor(real[n])) for n in layers}
    # largest remainder: whole counts adding up to keep_total exactly
    diff = keep_total - sum(kept.values())
    by_remainder = sorted(layers, key=lambda n: real[n] - math.floor(real[n]), reverse=True)
    while diff != 0:
        step = 1 if diff > 0 else -1
        candidates = [n for n in (by_remainder if step > 0 else by_remainder[::-1])
                      if 0 <= kept[n] + step <= sizes[n]]
        for n in candidates[:abs(diff)]:
            kept[n] += step
            diff -= step
    return {n: (sizes[n] - kept[n]) / sizes[n] for n in layers}


def random_masks(model: nn.Module, sparsities: Mapping[str, float], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weight-shaped bool masks (True = kept) removing ``round(s * numel)`` uniformly random positions per layer."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    out = {}
    for name, s in sparsities.items():
        weight = _weight(modules[name])
        n = weight.numel()
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=gen)[:n - round(s * n)]] = True
        out[name] = keep.view(weight.shape).to(weight.device)
    return out


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight_orig if hasattr(module, "weight_orig") else module.weight


def drop_fraction(step: int, alpha: float, end_step: int) -> float:
    """RigL's cosine decay of the replaced fraction: ``α (1 + cos(π t / T_end)) / 2`` (0 from ``end_step`` on)."""
    if end_step <= 0 or step >= end_step:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * step / end_step))


# ---------------------------------------------------------------- the callback
class RigL(KeepMasks):
    """Drop-and-grow of explicit weight masks during training (see the module docstring).

    ``masks``: module name -> bool mask shaped like ``module.weight`` (True = kept; the modules must
    be plain, not ``torch.nn.utils.prune``-reparametrised). ``method``: ``rigl`` | ``set`` |
    ``static``. ``every``: ΔT (steps). ``alpha``: initial drop fraction. ``end_step``: T_end, the
    first step with no update (default: ``end_fraction`` of all the run's steps, rounded down).
    ``seed``: SET's regrowth. ``events``: one dict per update (``step``, ``drop_fraction``,
    ``dropped`` = weights dropped, ``grown`` = positions newly active, ``sparsity``), saved for resume
    with the masks and the random state. Each epoch's metrics row gets ``sparsity`` (of the masked
    layers) and ``mask_updates`` (updates so far).
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], *, method: str = "rigl", every: int = 100,
                 alpha: float = 0.3, end_step: int | None = None, end_fraction: float = 0.75, seed: int = 0):
        if method not in METHODS:
            raise AmcError(f"unknown sparse training method '{method}' (choose {', '.join(METHODS)})")
        if not _whole(every, 1) or not 0 <= alpha <= 1 or not 0 <= end_fraction <= 1:
            raise AmcError(f"RigL needs every >= 1, alpha in [0, 1] and end_fraction in [0, 1]; got {every}, "
                           f"{alpha}, {end_fraction}")
        super().__init__(masks)
        self.method, self.every, self.alpha = method, every, alpha
        self.end_fraction, self._end_step = end_fraction, end_step
        self.end_step = end_step if end_step is not None else 0
        self.generator = torch.Generator().manual_seed(seed)
        self.events: list[dict] = []
        self._grads: dict[str, torch.Tensor] = {}

    def is_update_step(self, step: int) -> bool:
        """Whether the masks change after optimizer step ``step`` (1-based: steps completed)."""
        return self.method != "static" and 0 < step < self.end_step and step % self.every == 0

    def on_train_start(self, s: TrainState) -> None:
        modules = dict(s.model.named_modules())
        wrapped = [n for n in self.masks if hasattr(modules.get(n), "weight_orig")]
        if wrapped:
            raise AmcError(f"RigL needs plain weights, but '{wrapped[0]}' is pruned with torch.nn.utils.prune "
                           "(fold the masks first: amc.prune.fold_masks)")
        if self._end_step is None:
            self.end_step = math.floor(self.end_fraction * s.config.epochs * s.steps_per_epoch)
        super().on_train_start(s)

    def on_after_backward(self, s: TrainState) -> None:
        if not self.is_update_step(s.step + 1) or self.method != "rigl":
            return
        modules = dict(s.model.named_modules())
        self._grads = {}
        for name in self.masks:
            grad = modules[name].weight.grad
            self._grads[name] = (grad.detach().abs().clone() if grad is not None
                                 else torch.zeros_like(modules[name].weight))

    def on_step_end(self, s: TrainState) -> None:
        self._apply(s)  # old masks: inactive weights and their momentum back to exactly zero
        if self.is_update_step(s.step):
            self.update(s.model, s.step)
            self._apply(s)  # dropped weights and their momentum to zero

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> dict:
        """Drop and grow in every masked layer after step ``step``; edits ``self.masks`` in place, returns the event."""
        fraction = drop_fraction(step, self.alpha, self.end_step)
        modules = dict(model.named_modules())
        dropped = grown = 0
        for name, mask in self.masks.items():
            flat = mask.view(-1)
            active = int(flat.sum())
            k = round(fraction * active)
            if k == 0 or active == flat.numel():
                continue  # nothing to replace, or a dense layer (no inactive position to grow into)
            weight = modules[name].weight.detach().view(-1)
            on = flat.nonzero().squeeze(1)
            drop = on[torch.argsort(weight[on].abs(), stable=True)[:k]]
            after = flat.clone()
            after[drop] = False
            off = (~after).nonzero().squeeze(1)
            if self.method == "rigl":
                score = self._grads[name].view(-1)[off]
                grow = off[torch.argsort(score, descending=True, stable=True)[:k]]
            else:  # set: uniformly random among the inactive positions
                grow = off[torch.randperm(len(off), generator=self.generator)[:k].to(off.device)]
            after[grow] = True
            grown += int((after & ~flat).sum())
            dropped += k
            flat.copy_(after)  # newly active positions hold exactly zero (masked until now)
        self._grads = {}
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        event = {"step": step, "drop_fraction": fraction, "dropped": dropped, "grown": grown,
                 "sparsity": 1 - kept / max(total, 1)}
        self.events.append(event)
        return event

    def sparsity(self) -> float:
        """Fraction of the masked layers' weights that the masks remove."""
        total = sum(m.numel() for m in self.masks.values())
        return 1 - sum(int(m.sum()) for m in self.masks.values()) / max(total, 1)

    def on_epoch_end(self, s: TrainState) -> None:
        s.metrics["sparsity"] = self.sparsity()
        s.metrics["mask_updates"] = len(self.events)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "events": [dict(e) for e in self.events],
                "generator": self.generator.get_state(), "end_step": self.end_step}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.events = [dict(e) for e in state.get("events", [])]
        if "generator" in state:
            self.generator.set_state(state["generator"])


# ---------------------------------------------------------------- the usual wiring
@dataclass
class SparseResult:
    """history: one metrics row per epoch. masks: the final masks (layer name -> bool, True = kept).
    updates: one row per mask update (see :class:`RigL`). sparsities: the ERK sparsity of every layer."""

    history: pd.DataFrame
    masks: dict[str, torch.Tensor]
    updates: pd.DataFrame
    sparsities: dict[str, float]


def initial_masks(model: nn.Module, cfg: SparseConfig) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(masks, ERK sparsities) at the start of training: random positions or the largest weights per layer."""
    sparsities = erk_sparsities(model, cfg.sparsity, cfg.keep_dense)
    if cfg.initial_mask == "random":
        return random_masks(model, sparsities, cfg.seed), sparsities
    return magnitude_masks(model, 0.0, keep_dense=cfg.keep_dense, sparsities=sparsities), sparsities


def sparse_train(model: nn.Module, train_set: ImageSet, norm: Normalization, cfg: SparseConfig = SparseConfig(),
                 out_dir: str | Path | None = None, *, val_set: ImageSet | None = None,
                 test_set: ImageSet | None = None, resume: bool = False,
                 device: str = "cpu", log: Callable[[str], None] | None = None, bar: bool = False,
                 callbacks: Sequence[Callback] = ()) -> SparseResult:
    """Train ``model`` in place at ``cfg.sparsity`` with ERK layer sparsities and ``cfg.method`` (see :class:`SparseConfig`).

    ``model``: plain conv/linear layers (fold ``torch.nn.utils.prune`` masks first); random weights
    to train from scratch (``initial_mask="random"``) or a pretrained dense model
    (``initial_mask="magnitude"``). The masked weights are zero from the first step on and the model
    is left with them at zero. ``val_set`` / ``test_set``: evaluated every epoch (``val_top1``,
    ``test_top1``, ... in the metrics; :class:`~amc.training.Validate`). ``out_dir``:
    ``metrics.csv`` and ``last.pt`` (resume state: weights, optimizer, masks, RNG) at every epoch
    end, ``updates.csv`` at the end; ``resume`` continues from ``last.pt``. ``log`` / ``bar``: see
    :class:`~amc.training.Progress`. ``callbacks``: more callbacks for the :class:`~amc.training.Trainer`.
    """
    check_config(cfg)
    if resume and out_dir is None:
        raise AmcError("resume needs the output folder of the run")
    masks, sparsities = initial_masks(model, cfg)
    rigl = RigL(masks, method=cfg.method, every=cfg.update_every, alpha=cfg.drop_fraction,
                end_fraction=cfg.end_fraction, seed=cfg.seed)
    hooks: list[Callback] = [rigl, Progress(log, bar), *callbacks]
    for data, prefix in ((test_set, "test"), (val_set, "val")):
        if data is not None and len(data):
            hooks.insert(0, Validate(data, norm, prefix=prefix))
    state = None
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        last = out / "last.pt"
        if resume:
            if not last.is_file():
                raise AmcError(f"nothing to resume: {last} does not exist")
            state = Checkpoint.load_resume(last)
        hooks += [CsvMetrics(out / "metrics.csv"), Checkpoint(last)]
    result = Trainer(cfg.train, hooks).fit(model, train_set, norm, device=device, resume_from=state)
    updates = pd.DataFrame(rigl.events, columns=["step", "drop_fraction", "dropped", "grown", "sparsity"])
    if out is not None:
        atomic_write_text(updates.to_csv(index=False), out / "updates.csv")
    return SparseResult(pd.DataFrame(result.history), {n: m.detach().cpu().clone() for n, m in rigl.masks.items()},
                        updates, sparsities)
