"""Helpers shared by the commands: opening the model and data a command's flags describe."""
from __future__ import annotations

import argparse

import torch

from ..config import DataConfig, ModelConfig
from ..data import ImageSet, load_splits, normalization
from ..io import open_model
from ..models import ModelSpec
from .args import section


def open_from_args(args: argparse.Namespace, model: ModelConfig | None = None):
    """(model, spec, extras) for the model flags (or ``model``)."""
    model = model or section(args, "model")
    classes = model.num_classes or (100 if getattr(args, "dataset", None) == "cifar100" else None)
    return open_model(model.name, model.checkpoint, classes, model.input_shape)


def splits_for(data: DataConfig, spec: ModelSpec, names: tuple[str, ...]) -> dict[str, ImageSet]:
    return load_splits(data, names, num_classes=spec.num_classes, image_size=spec.input_shape[-1])


def normalized(data: DataConfig, images: ImageSet, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return normalization(data)(images.images).to(device), images.labels.to(device)
