"""Helpers shared by the commands: opening the model and data a command's flags describe, checking outputs."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..config import DataConfig, ModelConfig, validate
from ..errors import AmcError
from ..data import ImageSet, load_splits, normalization
from ..io import open_model
from ..models import ModelSpec, build_model, default_input_shape
from .args import FLAGS, add_flags, add_model_arg, dest, section

TRAINING_RUN_FLAGS = ("--seed", "--device", "--threads")  # the search's other run flags do not apply to trainings


def open_from_args(args: argparse.Namespace, model: ModelConfig | None = None):
    """(model, spec, extras) for the model flags (or ``model``)."""
    model = validate(model or section(args, "model"), "model")
    classes = model.num_classes or (100 if getattr(args, "dataset", None) == "cifar100" else None)
    return open_model(model.name, model.checkpoint, classes, model.input_shape)


def checkpoint_or_fresh(args: argparse.Namespace, model_cfg: ModelConfig, data_cfg: DataConfig):
    """(model, spec, extras): the ``--checkpoint``'s model, or a freshly initialised one (seed the RNG first)."""
    if model_cfg.checkpoint:
        return open_from_args(args, model_cfg)
    if not model_cfg.name:
        raise AmcError("give a model name (random initialisation seeded with --seed) or --checkpoint")
    classes = model_cfg.num_classes or (100 if data_cfg.dataset == "cifar100" else 10)
    spec = ModelSpec(model_cfg.name, classes, tuple(model_cfg.input_shape or default_input_shape(model_cfg.name)))
    return build_model(spec), spec, {}


def add_training_run_flags(p: argparse.ArgumentParser) -> None:
    """MODEL, the model, data and train flags, and --seed/--device/--threads: what a training command reads."""
    add_model_arg(p)
    add_flags(p, "model", "data", skip=("--exclude",))
    add_flags(p, "train")
    add_flags(p, "run", skip=tuple(f.name for f in FLAGS if f.section == "run" and f.name not in TRAINING_RUN_FLAGS))


def given_settings(args: argparse.Namespace, own_flags: tuple[str, ...]) -> list[str]:
    """The flags given that define a training run's settings (model, data, train, --seed and ``own_flags``):
    what ``--resume`` refuses, since the stored settings are used."""
    given = [f.name for f in FLAGS
             if (f.section in ("model", "data", "train") or f.name == "--seed") and getattr(args, dest(f), None) is not None]
    given += ["--" + n.replace("_", "-") for n in own_flags if getattr(args, n, None) is not None]
    return given + (["MODEL"] if args.model else [])


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
