"""Lottery tickets: iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

Units: **sparsity** = fraction of the weights *removed*, counted over the prunable conv/linear layers
(those not matching a ``keep_dense`` glob, which stay dense and outside the count); steps are
optimizer steps (batches) of a round's training, counted from its start.

Round 0 trains the model as given (dense) for ``train.epochs`` epochs and keeps a snapshot of the
whole network (weights, biases, BatchNorm parameters and statistics) after ``rewind_step`` steps
(0 = the initialisation; k > 0 = *rewinding* to an early step). Round r = 1..R then

1. prunes ``prune_fraction`` of the weights that survived round r-1, the smallest by magnitude of
   round r-1's trained weights -- in every layer (``scope="layer"``) or with one threshold over all
   prunable layers (``global``); pruned weights stay pruned, so round r's sparsity is
   ``1 - (1 - p)^r`` up to rounding;
2. rewinds: the network is reset to the snapshot and the pruned weights are set to zero (survivors
   equal the snapshot exactly);
3. trains for ``train.epochs`` epochs with the masks held (:class:`~amc.training.KeepMasks`: pruned
   weights and their momentum stay exactly zero), with a fresh optimizer and the full
   learning-rate schedule (Frankle et al. 2020 train the remaining T - k steps instead).

Controls at the same sparsity, trained alongside the ticket of every round r >= 1 (``controls``):
``reinit`` -- round r's mask on a fresh random initialisation (``fresh_init``, seeded with
``seed + 1``; only the initial values differ from the ticket); ``random_mask`` -- a uniformly random
mask with the same kept count in every layer, on the same snapshot (only the mask differs).

Files in ``out_dir``: ``lottery.json`` (the settings), ``rewind.pt`` (the snapshot),
``rounds.csv`` (one tidy row per round and variant, rewritten after each), and per training
``round<r>/<variant>/`` with ``metrics.csv`` (per epoch), ``result.json`` (its row) and, for the
ticket, ``weights.pt`` (``{"state_dict", "masks"}``, loadable with :func:`amc.io.open_model`).
Every file is written atomically. A killed run continues with ``resume=True``: finished trainings
are read back, the interrupted one continues from its last epoch (``last.pt``), so the result
equals an uninterrupted run; ``rounds`` may be raised on resume to prune further.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from .config import TrainConfig, differences, from_dict, to_dict, validate
from .data import ImageSet, Normalization
from .errors import AmcError
from .evaluation import evaluate
from .io import atomic_save, atomic_write_text, read_checkpoint
from .training import Callback, Checkpoint, CsvMetrics, KeepMasks, Progress, Trainer, TrainState, Validate
from .unstructured import SCOPES, prunable_layers

CONTROLS = ("reinit", "random_mask")
VARIANTS = ("ticket", *CONTROLS)
RESUMABLE = ("rounds",)  # settings that may change when a run is resumed


@dataclass(frozen=True)
class LotteryConfig:
    """One lottery-ticket run.

    rounds: pruning rounds R after the dense round 0 (R + 1 trainings of the ticket). prune_fraction:
    fraction of the *remaining* prunable weights removed per round, in (0, 1) (0.2: 20% per round,
    sparsity 1 - 0.8^r after round r). scope: ``global`` (one magnitude threshold over all prunable
    layers) | ``layer`` (the same fraction in every layer). keep_dense: glob patterns of conv/linear
    layers never pruned. rewind_step: optimizer step of round 0 whose network state the survivors
    are reset to (0 = initialisation). controls: any of ``reinit``, ``random_mask``, trained at
    every round r >= 1. seed: the fresh initialisation (``seed + 1``) and random masks (see module
    docstring). train: epochs, optimizer and schedule of every training
    (:class:`~amc.config.TrainConfig`).
    """

    rounds: int = 5
    prune_fraction: float = 0.2
    scope: str = "global"
    keep_dense: tuple[str, ...] = ()
    rewind_step: int = 0
    controls: tuple[str, ...] = ()
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)


def check_config(cfg: LotteryConfig) -> LotteryConfig:
    """Raise :class:`AmcError` naming the first nonsense value of ``cfg``; returns ``cfg``."""
    def whole(x, low):
        return isinstance(x, int) and not isinstance(x, bool) and x >= low

    checks = [("rounds", whole(cfg.rounds, 1), "a whole number >= 1"),
              ("prune_fraction", isinstance(cfg.prune_fraction, (int, float)) and not isinstance(cfg.prune_fraction, bool)
               and 0 < cfg.prune_fraction < 1, "a fraction of the remaining weights in (0, 1)"),
              ("scope", cfg.scope in SCOPES, " | ".join(SCOPES)),
              ("rewind_step", whole(cfg.rewind_step, 0), "a whole number of steps >= 0"),
              ("controls", all(c in CONTROLS for c in cfg.controls) and len(set(cfg.controls)) == len(cfg.controls),
               f"distinct names among {', '.join(CONTROLS)}"),
              ("seed", whole(cfg.seed, 0), "a whole number >= 0")]
    for name, ok, expected in checks:
        if not ok:
            raise AmcError(f"{name} = {getattr(cfg, name)!r} is not valid: expected {expected}")
    validate(cfg.train, "train")
    return cfg


def check_run(model: nn.Module, train_set: ImageSet, cfg: LotteryConfig) -> LotteryConfig:
    """Everything :func:`lottery_ticket` refuses, checked without training: the settings, the ``keep_dense``
    patterns against ``model``, ``rewind_step`` against the steps of a round. Returns ``cfg`` (tuples normalised)."""
    cfg = check_config(dataclasses.replace(cfg, keep_dense=tuple(cfg.keep_dense), controls=tuple(cfg.controls)))
    if not prunable_layers(model, cfg.keep_dense):
        raise AmcError("the model has no prunable conv or linear layers")
    if any(hasattr(m, "weight_orig") for m in model.modules()):
        raise AmcError("the model has torch.nn.utils.prune masks; fold them first (amc.prune.fold_masks)")
    if len(train_set) == 0:
        raise AmcError("the training set is empty")
    steps = cfg.train.epochs * math.ceil(len(train_set) / cfg.train.batch_size)
    if cfg.rewind_step > steps:
        raise AmcError(f"rewind_step {cfg.rewind_step} is beyond the {steps} steps of a round's training")
    return cfg


# ---------------------------------------------------------------- the pieces
class Snapshot(Callback):
    """Keep a copy of the whole ``state_dict`` (on the CPU) after ``step`` optimizer steps (0: at train start).

    ``state``: the copy once taken (saved in resume checkpoints, so a resumed round 0 still has it).
    """

    def __init__(self, step: int = 0):
        self.step = step
        self.state: dict[str, torch.Tensor] | None = None

    def _take(self, s: TrainState) -> None:
        self.state = {k: v.detach().cpu().clone() for k, v in s.model.state_dict().items()}

    def on_train_start(self, s: TrainState) -> None:
        if self.step == 0 and s.step == 0 and self.state is None:
            self._take(s)

    def on_step_end(self, s: TrainState) -> None:
        if s.step == self.step:
            self._take(s)

    def state_dict(self) -> dict:
        return {"state": self.state} if self.state is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.state = state.get("state")


def prune_remaining(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], fraction: float,
                    scope: str = "global") -> dict[str, torch.Tensor]:
    """New masks (True = kept) removing ``round(fraction * survivors)`` more weights, smallest ``|w|`` first.

    ``weights``/``masks``: per layer name, same shapes; a layer missing from ``masks`` is unpruned so
    far. ``scope="layer"``: that fraction of each layer's survivors; ``global``: of all survivors
    together, with one threshold. Pruned positions stay pruned; ties go to the lower index (layers
    in the order of ``weights``).
    """
    if scope not in SCOPES:
        raise AmcError(f"unknown scope '{scope}' (choose layer or global)")
    old = {n: (masks[n] if n in masks else torch.ones_like(w, dtype=torch.bool)).reshape(-1).cpu()
           for n, w in weights.items()}
    survivors = {n: old[n].nonzero().squeeze(1) for n in weights}
    magnitude = {n: weights[n].detach().reshape(-1).abs().float().cpu()[survivors[n]] for n in weights}
    new = {n: m.clone() for n, m in old.items()}
    if scope == "layer":
        for n in weights:
            count = round(fraction * len(survivors[n]))
            new[n][survivors[n][torch.argsort(magnitude[n], stable=True)[:count]]] = False
    else:
        names = list(weights)
        flat = torch.cat([magnitude[n] for n in names])
        owner = torch.cat([torch.full((len(survivors[n]),), i, dtype=torch.long) for i, n in enumerate(names)])
        index = torch.cat([survivors[n] for n in names])
        drop = torch.argsort(flat, stable=True)[:round(fraction * len(flat))]
        for i, n in enumerate(names):
            new[n][index[drop[owner[drop] == i]]] = False
    return {n: new[n].view(weights[n].shape).to(weights[n].device) for n in weights}


def random_masks_like(masks: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniformly random masks with the same number of kept positions in every layer as ``masks``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, mask in masks.items():
        n, kept = mask.numel(), int(mask.sum())
        new = torch.zeros(n, dtype=torch.bool)
        new[torch.randperm(n, generator=gen)[:kept]] = True
        out[name] = new.view(mask.shape).to(mask.device)
    return out


def rewound(snapshot: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rewound network's state dict: a copy of ``snapshot`` with the weights that ``masks`` prune set to zero."""
    out = {k: v.clone() for k, v in snapshot.items()}
    for name, mask in masks.items():
        out[f"{name}.weight"].mul_(mask.to(out[f"{name}.weight"].device))
    return out


def fresh_model(model: nn.Module, seed: int, fresh_init: Callable[[], nn.Module] | None = None) -> dict:
    """State dict of a freshly initialised copy of ``model``'s architecture, drawn with torch seeded to ``seed``.

    ``fresh_init``: builds a new model (e.g. ``lambda: build_model(spec)``: the architecture's own
    initialisation). Without it, every module of a copy with ``reset_parameters`` is reset
    (PyTorch's default initialisation, which may differ from the architecture's own).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if fresh_init is not None:
            new = fresh_init()
        else:
            new = copy.deepcopy(model)
            for m in new.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    try:
        return {k: v.detach().cpu().clone() for k, v in new.state_dict().items()}
    finally:
        del new


def _sparsity(masks: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> tuple[float, int]:
    """(fraction removed over the prunable layers, kept count); layers without a mask are dense."""
    total = sum(sizes.values())
    kept = sum(int(masks[n].sum()) if n in masks else sizes[n] for n in sizes)
    return 1 - kept / max(total, 1), kept


# ---------------------------------------------------------------- the run
def lottery_ticket(model: nn.Module, train_set: ImageSet, norm: Normalization, cfg: LotteryConfig,
                   out_dir: str | Path, *, test_set: ImageSet | None = None, val_set: ImageSet | None = None,
                   fresh_init: Callable[[], nn.Module] | None = None, resume: bool = False, device: str = "cpu",
                   log: Callable[[str], None] | None = None, callbacks: Sequence[Callback] = ()) -> pd.DataFrame:
    """Run iterative magnitude pruning with rewinding (see the module docstring); returns ``rounds.csv``'s table.

    ``model``: the network to start from (its weights are round 0's initialisation); never changed.
    ``test_set``: evaluated after each training (``test_top1``, ``test_loss``). ``val_set``: validated
    every epoch (``val_top1`` in each ``metrics.csv``; the last in the row). ``fresh_init``: builds a
    freshly initialised model for the ``reinit`` control (see :func:`fresh_model`). ``resume``:
    continue the run in ``out_dir`` (its settings must equal ``cfg``, except ``rounds``); without it an
    ``out_dir`` that holds a run is refused. ``log``: one line per epoch and per finished training.
    ``callbacks``: more callbacks for every training (the same ones when resuming). A training that
    a callback stops early ends the run (the table so far is returned; ``resume`` continues it).

    Row columns: ``round``, ``variant`` (ticket | reinit | random_mask), ``rewind_step``,
    ``target_sparsity`` (``1 - (1 - p)^round``), ``sparsity`` (of the masks, over the prunable
    layers), ``kept_weights``, ``test_top1``/``test_loss`` (with ``test_set``), ``val_top1`` (with
    ``val_set``), ``train_loss``/``train_top1`` (last epoch), ``epochs``, ``steps``, ``seconds``
    (training time).
    """
    cfg = check_run(model, train_set, cfg)
    out = Path(out_dir)
    layers = prunable_layers(model, cfg.keep_dense)
    _open_run(out, cfg, resume)
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    say = log or (lambda line: None)
    rows: list[dict] = []
    state = {"fresh": None}

    def unit(r: int, variant: str, start: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
             snapshot: Snapshot | None = None) -> dict | None:
        folder = out / f"round{r}" / variant
        done = folder / "result.json"
        if done.is_file():
            return json.loads(done.read_text())
        folder.mkdir(parents=True, exist_ok=True)
        work = copy.deepcopy(model)
        work.load_state_dict(start)
        last = folder / "last.pt"
        hooks: list[Callback] = [KeepMasks({n: m.clone() for n, m in masks.items()}),
                                 Progress(lambda line: say(f"round {r} {variant}: {line}")),
                                 CsvMetrics(folder / "metrics.csv"), Checkpoint(last), *callbacks]
        if snapshot is not None:
            hooks.insert(1, snapshot)
        if val_set is not None and len(val_set):
            hooks.insert(0, Validate(val_set, norm))
        resume_state = Checkpoint.load_resume(last) if last.is_file() else None
        trained = Trainer(cfg.train, hooks).fit(work, train_set, norm, device=device, resume_from=resume_state)
        if trained.epoch < cfg.train.epochs:
            return None  # stopped by a callback: resume continues from last.pt
        if snapshot is not None:
            if snapshot.state is None:
                raise AmcError(f"no snapshot was taken at step {cfg.rewind_step}")
            atomic_save(snapshot.state, out / "rewind.pt")
        if variant == "ticket":
            atomic_save({"state_dict": {k: v.detach().cpu() for k, v in work.state_dict().items()},
                         "masks": {n: m.cpu() for n, m in masks.items()}}, folder / "weights.pt")
        sparsity, kept = _sparsity(masks, sizes)
        history = trained.history
        row = {"round": r, "variant": variant, "rewind_step": cfg.rewind_step,
               "target_sparsity": 1 - (1 - cfg.prune_fraction) ** r, "sparsity": sparsity, "kept_weights": kept}
        if test_set is not None:
            images = norm(test_set.images).to(device)
            result = evaluate(work, images, test_set.labels.to(device))
            row.update(test_top1=result["top1"], test_loss=result["loss"])
        if "val_top1" in history[-1]:
            row["val_top1"] = history[-1]["val_top1"]
        row.update(train_loss=history[-1]["train_loss"], train_top1=history[-1]["train_top1"],
                   epochs=trained.epoch, steps=trained.step, seconds=sum(h["seconds"] for h in history))
        atomic_write_text(json.dumps(row, indent=2) + "\n", done)
        last.unlink(missing_ok=True)
        say(f"round {r} {variant}: sparsity {sparsity:.4f}"
            + (f", test top-1 {row['test_top1']:.4f}" if "test_top1" in row else ""))
        return row

    def record(row: dict | None) -> bool:
        if row is None:
            return False
        rows.append(row)
        atomic_write_text(pd.DataFrame(rows).to_csv(index=False), out / "rounds.csv")
        return True

    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if not record(unit(0, "ticket", initial, {}, Snapshot(cfg.rewind_step))):
        return pd.DataFrame(rows)
    snapshot = torch.load(out / "rewind.pt", map_location="cpu", weights_only=True)
    for r in range(1, cfg.rounds + 1):
        mask_file = out / f"round{r}" / "masks.pt"
        if mask_file.is_file():
            masks = torch.load(mask_file, map_location="cpu", weights_only=True)
        else:
            previous = read_checkpoint(out / f"round{r - 1}" / "ticket" / "weights.pt")
            weights = {n: previous["state_dict"][f"{n}.weight"] for n in layers}
            masks = prune_remaining(weights, previous["masks"], cfg.prune_fraction, cfg.scope)
            atomic_save(masks, mask_file)
        if not record(unit(r, "ticket", rewound(snapshot, masks), masks)):
            return pd.DataFrame(rows)
        for control in cfg.controls:
            if control == "reinit":
                if state["fresh"] is None:
                    state["fresh"] = fresh_model(model, cfg.seed + 1, fresh_init)
                start, control_masks = rewound(state["fresh"], masks), masks
            else:
                control_masks = random_masks_like(masks, seed=cfg.seed * 1000 + r)
                start = rewound(snapshot, control_masks)
            if not record(unit(r, control, start, control_masks)):
                return pd.DataFrame(rows)
    return pd.DataFrame(rows)


def _open_run(out: Path, cfg: LotteryConfig, resume: bool) -> None:
    """Write ``lottery.json`` for a new run, or check a resumed run's settings against it."""
    meta = out / "lottery.json"
    if meta.is_file():
        if not resume:
            raise AmcError(f"{out} already holds a lottery run; resume it or choose another folder")
        try:
            stored = from_dict(LotteryConfig, json.loads(meta.read_text())["config"], str(meta))
        except (ValueError, KeyError, TypeError) as exc:
            raise AmcError(f"cannot read {meta}: {exc}") from None
        changed = [d for d in differences(stored, cfg) if d.split(":")[0] not in RESUMABLE]
        if changed:
            raise AmcError(f"cannot resume {out}: settings differ from the stored run ({'; '.join(changed)})")
    elif resume:
        raise AmcError(f"nothing to resume in {out} (no lottery.json)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({"config": to_dict(cfg)}, indent=2) + "\n", meta)


