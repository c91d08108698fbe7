"""Helpers shared by the commands: opening the model and data a command's flags describe, checking outputs."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ..config import DataConfig, ModelConfig, TrainConfig, from_dict, replace, to_dict, validate
from ..errors import AmcError
from ..data import ImageSet, load_splits, normalization
from ..io import atomic_write_text, open_configured
from ..memory import keep_freed_memory
from ..models import ModelSpec, build_model, default_input_shape, model_arguments
from .args import DISTILL_FLAGS, FLAGS, add_flags, add_model_arg, dest, section

TRAINING_RUN_FLAGS = ("--seed", "--device", "--threads")  # the search's other run flags do not apply to trainings


def reuse_freed_memory() -> bool:
    """:func:`amc.memory.keep_freed_memory` for a long search process, unless ``AMC_KEEP_FREED_MEMORY=0``."""
    return os.environ.get("AMC_KEEP_FREED_MEMORY", "1") != "0" and keep_freed_memory()


def open_from_args(args: argparse.Namespace, model: ModelConfig | None = None):
    """(model, spec, extras) for the model flags (or ``model``)."""
    model = validate(model or section(args, "model"), "model")
    return open_configured(model, 100 if getattr(args, "dataset", None) == "cifar100" else None)


def checkpoint_or_fresh(args: argparse.Namespace, model_cfg: ModelConfig, data_cfg: DataConfig):
    """(model, spec, extras): the ``--checkpoint``'s model, or a freshly initialised one (seed the RNG first)."""
    if model_cfg.checkpoint:
        return open_from_args(args, model_cfg)
    if not model_cfg.name:
        raise AmcError("give a model name (random initialisation seeded with --seed) or --checkpoint")
    spec = fresh_spec(model_cfg, data_cfg)
    return build_model(spec), spec, {}


def fresh_spec(model_cfg: ModelConfig, data_cfg: DataConfig) -> ModelSpec:
    """The spec of a model built from its name (no checkpoint): 100 classes for CIFAR-100, else 10 unless given."""
    classes = model_cfg.num_classes or (100 if data_cfg.dataset == "cifar100" else 10)
    return ModelSpec(model_cfg.name, classes, tuple(model_cfg.input_shape or default_input_shape(model_cfg.name)),
                     model_arguments(model_cfg.arguments))


def add_training_run_flags(p: argparse.ArgumentParser) -> None:
    """MODEL, the model, data and train flags, and --seed/--device/--threads: what a training command reads."""
    add_model_arg(p)
    add_flags(p, "model", "data", skip=("--exclude",))
    add_flags(p, "train", skip=DISTILL_FLAGS)
    add_flags(p, "run", skip=tuple(f.name for f in FLAGS if f.section == "run" and f.name not in TRAINING_RUN_FLAGS))


def finetune_config(args: argparse.Namespace) -> TrainConfig:
    """The fine-tuning of ``amc apply`` / ``amc prune``: the train flags, ``--lr`` 0.01 unless given,
    ``--finetune-epochs`` epochs (at least 1, so the config validates when there is no fine-tuning).
    A negative epoch count, or ``--distill`` / ``--temperature`` that nothing would use, is an AmcError."""
    if args.finetune_epochs < 0:
        raise AmcError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    cfg = validate(replace(section(args, "train"), epochs=max(1, args.finetune_epochs),
                           lr=args.lr if args.lr is not None else 0.01), "train")
    if cfg.distill > 0 and args.finetune_epochs == 0:
        raise AmcError("--distill distils the dense model into the pruned one while fine-tuning: give --finetune-epochs")
    if args.temperature is not None and cfg.distill == 0:
        raise AmcError("--temperature is the distillation's temperature: give --distill too")
    return cfg


def given_settings(args: argparse.Namespace, own_flags: tuple[str, ...]) -> list[str]:
    """The flags given that define a training run's settings (model, data, train, --seed and ``own_flags``):
    what ``--resume`` refuses, since the stored settings are used."""
    given = [f.name for f in FLAGS
             if (f.section in ("model", "data", "train") or f.name == "--seed") and getattr(args, dest(f), None) is not None]
    given += ["--" + n.replace("_", "-") for n in own_flags if getattr(args, n, None) is not None]
    return given + (["MODEL"] if args.model else [])


def training_run_configs(args: argparse.Namespace, out: Path, run_file: str, key: str, cls: type,
                         own_flags: tuple[str, ...], make: Callable[[argparse.Namespace, ModelConfig], Any],
                         resumable: tuple[str, ...] = ()) -> tuple[ModelConfig, DataConfig, Any, dict | None]:
    """(model config, data config, the method's config, the stored run file or None) of a training command.

    With ``--resume``: read from ``out/run_file`` (section ``key`` holds the method's ``cls`` config); the
    flags that set stored settings are refused, except ``resumable``. Otherwise: from the flags, the method's
    config made by ``make(args, model_cfg)``, and ``--out`` checked. Model and data configs are validated.
    """
    saved = out / run_file
    stored = None
    if args.resume:
        given = [f for f in given_settings(args, own_flags) if f not in resumable]
        if given:
            raise AmcError(f"with --resume the stored settings are used; drop {', '.join(given)}")
        if not saved.is_file():
            raise AmcError(f"nothing to resume in {out} (no {run_file})")
        stored = yaml.safe_load(saved.read_text())
        model_cfg = from_dict(ModelConfig, stored["model"], str(saved))
        data_cfg = from_dict(DataConfig, stored["data"], str(saved))
        cfg = from_dict(cls, stored[key], str(saved))
    else:
        model_cfg, data_cfg = section(args, "model"), section(args, "data")
        cfg = make(args, model_cfg)
        check_output(out, inputs=(model_cfg.checkpoint,), overwrite=args.overwrite, folder=True)
    validate(model_cfg, "model")
    validate(data_cfg, "data")
    return model_cfg, data_cfg, cfg, stored


def write_run_file(path: Path, model_cfg: ModelConfig, data_cfg: DataConfig, key: str, cfg: Any) -> None:
    """The settings a training command's ``--resume`` reads back, with the command line (atomic)."""
    from .args import command_line  # noqa: PLC0415

    atomic_write_text(yaml.safe_dump({"model": to_dict(model_cfg), "data": to_dict(data_cfg), key: to_dict(cfg),
                                      "command": command_line()}, sort_keys=False), path)


def splits_for(data: DataConfig, spec: ModelSpec, names: tuple[str, ...]) -> dict[str, ImageSet]:
    return load_splits(data, names, num_classes=spec.num_classes, image_size=spec.input_shape[-1])


def normalized(data: DataConfig, images: ImageSet, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return normalization(data)(images.images).to(device), images.labels.to(device)


def check_device(device: str | None) -> str:
    device = device or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AmcError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    if device != "cpu" and not device.startswith("cuda"):
        raise AmcError(f"--device {device}: expected cpu or cuda[:N]")
    return device


def check_output(path: str | Path | None, *, inputs: tuple = (), overwrite: bool = False, folder: bool = False) -> None:
    """Refuse an output that is an input, exists (unless ``overwrite``; a folder only when non-empty), or cannot be written."""
    if not path:
        return
    out = Path(path)
    if out.resolve() in {Path(p).resolve() for p in inputs if p}:
        raise AmcError(f"output {out} is one of the inputs; choose another path")
    if out.exists() and not overwrite:
        if folder and out.is_dir() and not any(out.iterdir()):
            return
        raise AmcError(f"{out} already exists; choose another path or add --overwrite")
    if out.exists() and not folder and out.is_dir():
        raise AmcError(f"{out} is a folder, expected a file path")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise AmcError(f"cannot write {out}: {parent} is a file")
