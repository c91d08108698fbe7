"""What a pruning environment works on: a dense model, its channel groups, the pruning engine and
the search split (normalised once, kept in memory on the chosen device)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from amc.data import DataConfig, ImageSet, load_splits, synthetic_images, Normalization
from amc.evaluation import evaluate
from amc.graph import PruningGraph
from amc.models import ModelSpec
from amc.pruner import ChannelPruner, PruneSettings


@dataclass
class PruningTask:
    """A dense model with everything needed to prune and score it.

    search_images: normalised float tensor (N, C, H, W) of the held-out search split;
    search_labels: (N,) int64; both on ``device``. ``batch_size``: evaluation batch size.
    """

    model: nn.Module
    spec: ModelSpec
    graph: PruningGraph
    pruner: ChannelPruner
    search_images: torch.Tensor
    search_labels: torch.Tensor
    device: str = "cpu"
    batch_size: int = 500
    channels_last: bool = False

    def score(self, model: nn.Module) -> dict[str, float]:
        """Top-1/top-5 accuracy and loss of ``model`` on the search split (never the test split)."""
        model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        return evaluate(model, self.search_images, self.search_labels, self.batch_size)

    @classmethod
    def build(cls, model: nn.Module, spec: ModelSpec, search: ImageSet, calibration: ImageSet,
              norm: Normalization, settings: PruneSettings = PruneSettings(), exclude=(), device: str = "cpu",
              calibration_images: int = 500, channels_last: bool = False) -> "PruningTask":
        """``search``: images that score policies; ``calibration``: training images for recovery statistics."""
        model = model.to(device).eval()
        graph = PruningGraph(model, spec.input_shape, exclude)
        gen = torch.Generator().manual_seed(settings.seed)
        pick = torch.randperm(len(calibration), generator=gen)[:calibration_images]
        calib = norm(calibration.images[pick]).to(device)
        pruner = ChannelPruner(model, graph, settings, calib, channels_last)
        search_x = norm(search.images).to(device)
        if channels_last:
            search_x = search_x.contiguous(memory_format=torch.channels_last)
        return cls(model, spec, graph, pruner, search_x, search.labels.to(device), device, channels_last=channels_last)

    @classmethod
    def tiny(cls, seed: int = 0) -> "PruningTask":
        """A small random CNN on synthetic images: a fast default for tests and the env checker."""
        from amc.models import build_model  # noqa: PLC0415

        torch.manual_seed(seed)
        spec = ModelSpec("resnet8", 10, (3, 16, 16))
        model = build_model(spec)
        data = synthetic_images(200, 10, 16, seed=seed)
        cfg = DataConfig()
        return cls.build(model, spec, data.subset(torch.arange(100)), data.subset(torch.arange(100, 200)),
                         cfg.normalization, PruneSettings(bn_batches=2, batch_size=50), calibration_images=100)


def load_task(model: nn.Module, spec: ModelSpec, data_cfg: DataConfig, settings: PruneSettings, exclude=(),
              device: str = "cpu", channels_last: bool = False) -> PruningTask:
    """A :class:`PruningTask` over the search split of ``data_cfg`` (calibration from its train split)."""
    splits = load_splits(data_cfg, ("train", "search"))
    return PruningTask.build(model, spec, splits["search"], splits["train"], data_cfg.normalization, settings,
                             exclude, device, channels_last=channels_last)
