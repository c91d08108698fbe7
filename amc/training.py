"""Training and fine-tuning: a small loop (SGD with Nesterov momentum, cosine learning rate) with callbacks.

:class:`Trainer` owns the loop and nothing else. Validation, metrics files, checkpoints, progress
output and keeping pruned weights at zero are :class:`Callback` objects the caller chooses: the
library never prints and writes no file except through such a callback. :func:`train` wires the
usual ones together for ``amc train`` and fine-tuning.

The loop, and where each hook runs::

    on_train_start
    for each epoch:
        on_epoch_start
        for each batch:
            forward, loss              a nan/inf loss raises AmcError (the step is not taken)
            backward
            on_after_backward          gradients exist; the optimizer has not stepped yet
            optimizer.step, scheduler.step
            on_step_end                s.step already counts this step
        s.epoch += 1, row appended to s.history
        on_epoch_end                   s.metrics (== s.history[-1]) holds the epoch's row
    on_train_end

Every hook receives the one :class:`TrainState` ``s`` and may read or change it: the model, the
optimizer, the scheduler, the counters, the current metrics row. Setting ``s.stop = True`` ends
training after the current step. An epoch cut short that way is not counted: it gets no
``on_epoch_end`` and no history row, so checkpoints always fall on epoch boundaries.

Callbacks run in ascending ``order`` (ties: the order given). :class:`Validate` has order -100, so
validation metrics exist before anything records them; :class:`CsvMetrics` and :class:`Progress`
have 100 and :class:`Checkpoint` 200, so they record the epoch after every other callback
(order 0 by default) has changed the model or the metrics.

Pruning schedules plug in as callbacks, without editing the loop:

* iterative pruning: prune more (e.g. ``torch.nn.utils.prune``) in ``on_epoch_end`` every k
  epochs; :class:`KeepMasks` keeps pruned weights at exactly zero in between;
* lottery-ticket rewinding: copy the weights in ``on_step_end`` when ``s.step == k``; after a
  round, prune, rewind the unpruned weights to that copy and train again;
* RigL: in ``on_after_backward`` every ΔT steps, drop the smallest weights and grow where the dense
  gradient is largest by editing the masks in place (plain modules with explicit
  ``KeepMasks(masks)`` have a dense ``weight.grad`` there); :class:`KeepMasks` applies the new masks.

Resuming: :class:`Checkpoint` saves, at each epoch end, everything the loop depends on (weights,
optimizer and scheduler state, counters, history, callback states, torch's RNG state).
Shuffling and augmentation are seeded per epoch with ``cfg.seed * 1000 + epoch``, so
``Trainer(cfg, callbacks).fit(model, ..., resume_from=Checkpoint.load_resume(path))`` continues
bit-identically to an uninterrupted run with the same config and callbacks.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, to_dict
from .data import ImageSet, Normalization, iterate_batches
from .errors import AmcError
from .evaluation import evaluate
from .io import atomic_save, atomic_write_text, read_checkpoint, save_model

if TYPE_CHECKING:
    from .models import ModelSpec

RESUME_KEYS = ("state_dict", "optimizer", "scheduler", "epoch", "step", "history", "callbacks")


def cosine_factor(step: int, total: int) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based) of ``total``: 1 -> 0 on a half cosine."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, weight: float,
                      temperature: float) -> torch.Tensor:
    """``(1 - weight) * cross_entropy(logits, targets) + weight * T² * KL(softmax(teacher/T) || softmax(logits/T))``.

    Hinton et al.'s knowledge distillation (the T² keeps the soft term's gradients on the hard term's scale).
    weight in [0, 1] (0: plain cross-entropy); temperature T > 0. The teacher's logits carry no gradient.
    """
    hard = F.cross_entropy(logits, targets)
    if weight == 0:
        return hard
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=1),
                    F.log_softmax(teacher_logits.detach() / temperature, dim=1), reduction="batchmean", log_target=True)
    return (1 - weight) * hard + weight * temperature ** 2 * soft


# ---------------------------------------------------------------- state and callbacks
@dataclass
class TrainState:
    """What callbacks see and may change.

    epoch: epochs completed. step: optimizer steps completed since the start of training (not per
    epoch). steps_per_epoch: batches per epoch. loss: the training loss of the last batch (cross-entropy;
    with distillation the mixed loss of :func:`distillation_loss`, not comparable with plain runs).
    metrics: the current epoch's row -- ``epoch``, ``step``, ``train_loss`` and ``train_top1``
    (running means over the epoch so far; top-1 as a fraction in [0, 1]), then at the epoch's end
    ``lr`` (learning rate of its last step) and ``seconds`` (wall time of its steps), plus what
    callbacks add (``val_top1`` ...). history: one row per finished epoch. stop: set it to end
    training after the current step. callbacks: every callback of the run, in the order given.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    loss: float | None = None
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    stop: bool = False
    callbacks: Sequence["Callback"] = ()

    def resume_state(self) -> dict:
        """Everything needed to continue from this epoch boundary (what :class:`Checkpoint` saves)."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step": self.step,
                "history": [dict(row) for row in self.history], "config": to_dict(self.config),
                "callbacks": [cb.state_dict() for cb in self.callbacks], "rng": rng}

    def load_resume_state(self, state: Mapping) -> None:
        """Restore a :meth:`resume_state` dict into this (freshly built) state; mismatches are AmcErrors."""
        check_resume_state(state)
        epoch, step = int(state["epoch"]), int(state["step"])
        if step != epoch * self.steps_per_epoch:
            raise AmcError(f"cannot resume: the saved run took {step} steps in {epoch} epochs, but this run has "
                           f"{self.steps_per_epoch} steps per epoch (batch size or training set changed?)")
        saved = list(state["callbacks"])
        if len(saved) != len(self.callbacks) and any(saved):
            raise AmcError(f"cannot resume: the saved run had {len(saved)} callbacks, this run has "
                           f"{len(self.callbacks)}")
        try:
            self.model.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise AmcError(f"cannot resume: the saved state does not fit this model: "
                           f"{str(exc).strip().splitlines()[0]}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = epoch, step
        self.history = [dict(row) for row in state["history"]]
        if len(saved) == len(self.callbacks):
            for cb, cb_state in zip(self.callbacks, saved):
                cb.load_state_dict(cb_state)
        rng = state.get("rng") or {}
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def check_resume_state(state: Mapping, source: str = "resume state") -> None:
    """Raise AmcError unless ``state`` looks like a :meth:`TrainState.resume_state` dict."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise AmcError(f"{source} is not a training checkpoint (no {', '.join(missing)})")


class Callback:
    """Base class: every hook does nothing. Override the ones you need.

    order: callbacks run in ascending order (ties keep the given order). state_dict /
    load_state_dict: whatever the callback must remember across a resume (plain data and tensors).
    """

    order: int = 0

    def on_train_start(self, s: TrainState) -> None:
        """Before the first step (after a resume: after the state was restored)."""

    def on_epoch_start(self, s: TrainState) -> None:
        """Before the epoch's first step; ``s.epoch`` is the number of epochs completed so far."""

    def on_after_backward(self, s: TrainState) -> None:
        """Gradients exist; ``optimizer.step`` has not run yet."""

    def on_step_end(self, s: TrainState) -> None:
        """After ``optimizer.step`` and ``scheduler.step``; ``s.step`` counts this step."""

    def on_epoch_end(self, s: TrainState) -> None:
        """``s.metrics`` holds the finished epoch's row (also ``s.history[-1]``)."""

    def on_train_end(self, s: TrainState) -> None:
        """After the last epoch or a stop; the model is in eval mode."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ---------------------------------------------------------------- the loop
class Trainer:
    """Train a classifier with cross-entropy (or, with a teacher, :func:`distillation_loss`), SGD (Nesterov
    momentum, weight decay) and a per-step cosine learning rate from ``cfg.lr`` to 0 over ``cfg.epochs``
    epochs, calling ``callbacks`` at each hook.

    teacher: the model distilled from when ``cfg.distill > 0`` (see :func:`distillation_loss`); it is run
    in eval mode, on the training device, without gradients; its weights are never changed. Required then,
    refused otherwise.
    """

    def __init__(self, cfg: TrainConfig = TrainConfig(), callbacks: Sequence[Callback] = (),
                 teacher: nn.Module | None = None):
        if (cfg.distill > 0) != (teacher is not None):
            raise AmcError("distillation needs a teacher model" if cfg.distill > 0 else
                           "a teacher model was given but distill is 0: it would be ignored")
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.teacher = teacher

    def fit(self, model: nn.Module, train: ImageSet, norm: Normalization, *, device: str | torch.device = "cpu",
            resume_from: Mapping | None = None) -> TrainState:
        """Train ``model`` in place on ``train`` (uint8 images, normalised per batch with ``norm``).

        The model is moved to ``device`` and left in eval mode. ``resume_from``: a dict from
        :meth:`Checkpoint.load_resume`; training continues after its last epoch. Returns the final
        state (``history`` holds one metrics row per epoch).
        """
        cfg = self.cfg
        if len(train) == 0:
            raise AmcError("the training set is empty")
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise AmcError("the model has no trainable parameters")
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    nesterov=cfg.momentum > 0)
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        total = max(1, cfg.epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total))
        s = TrainState(model, optimizer, scheduler, cfg, steps_per_epoch=steps_per_epoch,
                       callbacks=tuple(self.callbacks))
        if resume_from is not None:
            s.load_resume_state(resume_from)

        hooks = sorted(self.callbacks, key=lambda cb: cb.order)

        def call(hook: str) -> None:
            for cb in hooks:
                getattr(cb, hook)(s)

        if self.teacher is not None:
            self.teacher.to(device).eval()
        call("on_train_start")
        while s.epoch < cfg.epochs and not s.stop:
            if not self._run_epoch(s, train, norm, device, call, self.teacher):
                break  # stopped mid-epoch: the epoch does not count
            call("on_epoch_end")
        model.eval()
        call("on_train_end")
        return s

    @staticmethod
    def _run_epoch(s: TrainState, train: ImageSet, norm: Normalization, device: str | torch.device,
                   call: Callable[[str], None], teacher: nn.Module | None) -> bool:
        """One epoch of steps; False when ``s.stop`` cut it short."""
        cfg = s.config
        s.model.train()
        s.metrics = {"epoch": s.epoch + 1}
        call("on_epoch_start")
        began = time.perf_counter()
        seen = correct = 0
        loss_sum = lr = 0.0
        batches = iterate_batches(train, cfg.batch_size, norm, shuffle=True, augment=cfg.augment,
                                  seed=cfg.seed * 1000 + s.epoch)
        for x, y in batches:
            if s.stop:
                return False
            x, y = x.to(device), y.to(device)
            logits = s.model(x)
            if teacher is None:
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                loss = distillation_loss(logits, teacher_logits, y, cfg.distill, cfg.temperature)
            s.loss = loss.item()
            if not math.isfinite(s.loss):
                raise AmcError(f"training loss became {s.loss} at epoch {s.epoch + 1} step {s.step + 1}")
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            call("on_after_backward")
            lr = s.optimizer.param_groups[0]["lr"]
            s.optimizer.step()
            s.scheduler.step()
            s.step += 1
            seen += len(y)
            loss_sum += s.loss * len(y)
            correct += int((logits.argmax(1) == y).sum())
            s.metrics.update(step=s.step, train_loss=loss_sum / seen, train_top1=correct / seen)
            call("on_step_end")
        s.metrics.update(lr=lr, seconds=time.perf_counter() - began)
        s.epoch += 1
        s.history.append(s.metrics)
        return True


# ---------------------------------------------------------------- built-in callbacks
class Validate(Callback):
    """At the end of every ``every``-th epoch (and the last), evaluate on ``data`` (uint8 images) and add
    ``<prefix>_top1``, ``<prefix>_top5`` (fractions in [0, 1]) and ``<prefix>_loss`` (mean
    cross-entropy) to ``s.metrics``. The normalised images stay on the model's device during training."""

    order = -100

    def __init__(self, data: ImageSet, norm: Normalization, every: int = 1, prefix: str = "val",
                 batch_size: int = 500):
        if every < 1:
            raise AmcError(f"Validate: every must be at least 1, got {every}")
        self.data, self.norm, self.every, self.prefix, self.batch_size = data, norm, every, prefix, batch_size
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    def on_train_start(self, s: TrainState) -> None:
        device = next(s.model.parameters()).device
        self._images = self.norm(self.data.images).to(device)
        self._labels = self.data.labels.to(device)

    def on_epoch_end(self, s: TrainState) -> None:
        if s.epoch % self.every and s.epoch != s.config.epochs:
            return
        result = evaluate(s.model, self._images, self._labels, self.batch_size)
        for key in ("top1", "top5", "loss"):
            s.metrics[f"{self.prefix}_{key}"] = result[key]

    def on_train_end(self, s: TrainState) -> None:
        self._images = self._labels = None


class CsvMetrics(Callback):
    """Rewrite ``path`` (atomically) at each epoch end: the history, one row per epoch."""

    order = 100

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, s: TrainState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(pd.DataFrame(s.history).to_csv(index=False), self.path)


class Checkpoint(Callback):
    """Save :meth:`TrainState.resume_state` to ``path`` (atomically) at each epoch end.

    Runs after every other callback, so their epoch-end changes are in the file.
    """

    order = 200

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, s: TrainState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(s.resume_state(), self.path)

    @staticmethod
    def load_resume(path: str | Path) -> dict:
        """Read a file this callback wrote, for ``Trainer.fit(resume_from=...)``; missing, corrupt or
        foreign files are AmcErrors."""
        state = read_checkpoint(path)
        check_resume_state(state, str(path))
        return state


def format_epoch(row: Mapping, epochs: int) -> str:
    """``epoch E/N: train loss L, train top-1 A, val top-1 V (S s)`` (the val part only if measured)."""
    val = f", val top-1 {row['val_top1']:.4f}" if "val_top1" in row else ""
    return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
            f"train top-1 {row['train_top1']:.4f}{val} ({row['seconds']:.0f} s)")


class Progress(Callback):
    """Report progress: ``log(line)`` once per epoch (see :func:`format_epoch`) when ``log`` is given,
    and with ``bar=True`` a tqdm bar per epoch (on stderr, removed when the epoch ends). Without a bar,
    also a line every ``every_s`` seconds within an epoch (``epoch E/N: step i/S, train loss L,
    train top-1 A (T s)``), so a log file shows a long epoch moving; ``every_s=None`` turns it off."""

    order = 100

    def __init__(self, log: Callable[[str], None] | None = None, bar: bool = False, every_s: float | None = 60.0):
        self.log, self.bar, self.every_s = log, bar, every_s
        self._bar = None
        self._epoch_began = self._last_line = 0.0

    def on_epoch_start(self, s: TrainState) -> None:
        self._epoch_began = self._last_line = time.monotonic()
        if self.bar:
            from tqdm import tqdm  # noqa: PLC0415

            self._bar = tqdm(total=s.steps_per_epoch, desc=f"epoch {s.epoch + 1}/{s.config.epochs}", leave=False)

    def on_step_end(self, s: TrainState) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{s.metrics['train_loss']:.3f}", acc=f"{s.metrics['train_top1']:.3f}",
                                  refresh=False)
        elif self.log is not None and self.every_s is not None and time.monotonic() - self._last_line >= self.every_s:
            self._last_line = now = time.monotonic()
            done = s.step - s.epoch * s.steps_per_epoch
            self.log(f"epoch {s.epoch + 1}/{s.config.epochs}: step {done}/{s.steps_per_epoch}, "
                     f"train loss {s.metrics['train_loss']:.4f}, train top-1 {s.metrics['train_top1']:.4f} "
                     f"({now - self._epoch_began:.0f} s)")

    def on_epoch_end(self, s: TrainState) -> None:
        self._close()
        if self.log is not None:
            self.log(format_epoch(s.metrics, s.config.epochs))

    def on_train_end(self, s: TrainState) -> None:
        self._close()  # an epoch cut short by s.stop leaves its bar open

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class KeepMasks(Callback):
    """Keep pruned weights at exactly zero through training.

    Covers every module pruned with ``torch.nn.utils.prune`` (a ``<name>_orig`` parameter with a
    ``<name>_mask`` buffer; found afresh each step, so pruning more during training is seen) and,
    for plain modules, ``masks``: module name -> bool mask shaped like ``module.weight`` (True =
    kept). At train start and after every step it multiplies the parameter by its mask in place and
    zeroes the optimizer's momentum buffer at masked positions, so neither weight decay nor momentum
    moves a pruned weight and a later ``prune.remove`` keeps the zeros. Masks may be edited in place
    during training (RigL); explicit masks are saved for resume.
    """

    order = -50  # before callbacks that look at the weights after a step

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None):
        self.masks = dict(masks or {})

    def on_train_start(self, s: TrainState) -> None:
        modules = dict(s.model.named_modules())
        for name, mask in self.masks.items():
            weight = getattr(modules.get(name), "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise AmcError(f"KeepMasks: the model has no module '{name}' with a weight")
            if mask.shape != weight.shape:
                raise AmcError(f"KeepMasks: the mask for '{name}' has shape {tuple(mask.shape)}, "
                               f"its weight {tuple(weight.shape)}")
            self.masks[name] = mask.to(device=weight.device, dtype=torch.bool)
        self._apply(s)

    def on_step_end(self, s: TrainState) -> None:
        self._apply(s)

    def _targets(self, model: nn.Module):
        """(parameter, mask) pairs: torch.nn.utils.prune reparametrisations, then explicit masks."""
        for module in model.modules():
            for buffer_name, mask in module.named_buffers(recurse=False):
                if buffer_name.endswith("_mask"):
                    param = getattr(module, buffer_name[:-len("_mask")] + "_orig", None)
                    if isinstance(param, nn.Parameter):
                        yield param, mask
        modules = dict(model.named_modules())
        for name, mask in self.masks.items():
            yield modules[name].weight, mask

    @torch.no_grad()
    def _apply(self, s: TrainState) -> None:
        for param, mask in self._targets(s.model):
            param.mul_(mask)
            momentum = s.optimizer.state.get(param, {}).get("momentum_buffer")
            if momentum is not None:
                momentum.mul_(mask)

    def state_dict(self) -> dict:
        return {"masks": {name: mask.cpu() for name, mask in self.masks.items()}} if self.masks else {}

    def load_state_dict(self, state: dict) -> None:
        for name, mask in state.get("masks", {}).items():
            if name in self.masks and self.masks[name].shape == mask.shape:
                self.masks[name].copy_(mask)
            else:
                self.masks[name] = mask.bool()


# ---------------------------------------------------------------- the usual wiring
def train(model: nn.Module, spec: "ModelSpec", train_set: ImageSet, val_set: ImageSet | None, norm: Normalization,
          cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, device: str = "cpu",
          log: Callable[[str], None] | None = None, bar: bool = False, extra: dict | None = None,
          teacher: nn.Module | None = None) -> pd.DataFrame:
    """Train ``model`` in place with validation on ``val_set`` (if any) and the standard files in ``out_dir``.

    Writes ``metrics.csv`` and ``last.pt`` (resume state) at each epoch end and ``model.pt`` (an amc
    checkpoint with ``spec``, ``train_config`` and ``extra``) at the end. ``resume``: continue from
    ``last.pt``. ``log`` / ``bar``: see :class:`Progress`. ``teacher``: see :class:`Trainer` (needed when
    ``cfg.distill > 0``). Returns the metrics, one row per epoch.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    state = None
    if resume:
        if not last.is_file():
            raise AmcError(f"nothing to resume: {last} does not exist")
        state = Checkpoint.load_resume(last)
    callbacks: list[Callback] = [CsvMetrics(out / "metrics.csv"), Checkpoint(last), Progress(log, bar)]
    if val_set is not None:
        callbacks.insert(0, Validate(val_set, norm))
    result = Trainer(cfg, callbacks, teacher).fit(model, train_set, norm, device=device, resume_from=state)
    save_model(out / "model.pt", model.cpu(), spec, train_config=to_dict(cfg), **(extra or {}))
    model.to(device)
    return pd.DataFrame(result.history)
