"""What a pruning environment works on: a dense model, its structure, the pruning engine, the cost
models and the search split (normalised once, kept in memory on the chosen device)."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from amc.calibration import CalibrationSet
from amc.config import CalibrationConfig, DataConfig, ModelConfig, PruneConfig
from amc.cost import CostModel, MacsCost, ParamsCost, check_costs, params
from amc.errors import AmcError
from amc.data import ImageSet, load_splits, normalization
from amc.evaluation import MIB, custom_score, eval_batch_size, evaluate, fold_batchnorm, fold_pairs, foldable_pairs
from amc.io import open_configured
from amc.models import ModelSpec, build_model
from amc.prune import PruneResult, PruningEngine
from amc.selection import Selection
from amc.stats_cache import StatsCache
from amc.structure import DependencyGraph, Keep, trace
from amc.unstructured import magnitude_masks

# what a fine-grained (weight) search prunes with: masks only, so a weight policy file rebuilds the scored
# model exactly with amc.prune_unstructured (no reconstruction, no BatchNorm recalibration)
WEIGHT_SEARCH_PRUNE = PruneConfig(granularity="weight", reconstruct=False, bn_batches=0)


@dataclass
class PruningTask:
    """A dense model with everything needed to prune and score it.

    ``search_images``: normalised float tensor (N, C, H, W) of the held-out search split on the
    task's device; ``search_labels``: (N,) int64. ``costs``: cost models every pruned model is
    measured with (an exact one must match the accounting). ``data`` / ``calibration``: the configs the
    task was built from (recorded in policies). ``exclude``: globs of channel groups (or, for weight
    pruning, of conv/linear layers) left unpruned. ``evaluator``: the user's ``function(model) -> float``
    (higher = better) that scores pruned models instead of the search split's accuracy. ``batch_size``:
    search-split images per forward pass (:meth:`build` sizes it by activation memory on CPU:
    ``PruneConfig.eval_batch_mib``).
    """

    model: nn.Module
    spec: ModelSpec
    graph: DependencyGraph
    engine: PruningEngine
    search_images: torch.Tensor
    search_labels: torch.Tensor
    device: str = "cpu"
    batch_size: int = 500
    costs: dict[str, CostModel] = field(default_factory=lambda: {"macs": MacsCost(), "params": ParamsCost()})
    data: DataConfig | None = None
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    exclude: tuple[str, ...] = ()
    evaluator: Callable[[nn.Module], float] | None = None
    _fold_pairs: list[tuple[str, str]] | None = field(default=None, init=False, repr=False)  # found once, dense model

    @property
    def prune_config(self) -> PruneConfig:
        return self.engine.cfg

    def score(self, model: nn.Module, *, fold_in_place: bool = False) -> dict[str, float]:
        """Top-1/top-5 accuracy and loss of ``model`` on the search split (never the test split), or
        ``{"score": evaluator(model)}`` when the task has an evaluator (given ``model`` itself).

        A channel-pruned model is scored with its BatchNorms folded into the convs before them (faster, equal
        up to float rounding; ``model`` is not changed unless ``fold_in_place``, which folds ``model`` itself
        instead of a copy): the pairs the dense model's trace found, or, for a model they do not fit,
        :func:`amc.evaluation.fold_batchnorm`.
        """
        model = model.to(self.device)
        if self.evaluator is not None:
            return {"score": custom_score(self.evaluator, model)}
        if self.prune_config.granularity == "channel" and self.dense_fold_pairs():
            model = fold_pairs(model, self.dense_fold_pairs(), in_place=fold_in_place) or fold_batchnorm(model)
        return evaluate(model, self.search_images, self.search_labels, self.batch_size)

    def dense_fold_pairs(self) -> list[tuple[str, str]]:
        """The dense model's foldable ``(layer, batchnorm)`` pairs (:func:`amc.evaluation.foldable_pairs`, one
        fx trace per task, then reused for every pruned copy)."""
        if self._fold_pairs is None:
            self._fold_pairs = foldable_pairs(self.model)
        return self._fold_pairs

    def on_holdout_rest(self) -> "PruningTask":
        """This task (same model, engine and costs) scoring the held-out images after the search split
        (``holdout_rest`` of :func:`amc.data.split_indices`: never scored by a search) instead of the search split."""
        if self.evaluator is not None or self.data is None:
            raise AmcError("re-selection scores the held-out images: it needs the search split's data, not an evaluator")
        rest = load_splits(self.data, ("holdout_rest",), num_classes=self.spec.num_classes,
                           image_size=self.spec.input_shape[-1])["holdout_rest"]
        if not len(rest):
            raise AmcError(f"no held-out images outside the search split ({self.data.search_images} of a "
                           f"{self.data.holdout}-image holdout): raise --holdout or lower --search-images")
        return dataclasses.replace(self, search_images=scoring_images(rest, self.data, self.prune_config, self.device),
                                   search_labels=rest.labels.to(self.device))

    def evaluate(self, keep: Keep) -> tuple[dict[str, float], PruneResult]:
        """Prune to ``keep``, check the pruned model's costs against the accounting, score it.

        Returns (metrics, result): metrics hold ``top1``, ``top5``, ``loss`` and, per cost model,
        the measured cost and its ratio to dense (``macs``, ``macs_ratio``, ...). ``result.model`` comes
        back scored, with its BatchNorms folded into the convs before them (an inference model: rebuild
        one for training with :meth:`amc.prune.PruningEngine.prune_keep`).
        """
        result = self.engine.prune_keep(keep)
        measured = check_costs(self.graph, keep, result.model, list(self.costs.values()))
        start = time.perf_counter()
        metrics = self.score(result.model, fold_in_place=True)  # an episode's own model: no copy
        result.timings["evaluate"] = time.perf_counter() - start
        for name, c in self.costs.items():
            metrics[name] = measured[name]
            metrics[f"{name}_ratio"] = measured[name] / c.cost(self.graph)
        return metrics, result

    def evaluate_weights(self, keep: Mapping[str, int]) -> tuple[dict[str, float], PruneResult]:
        """Mask each layer of ``keep`` to its count of largest-magnitude weights, count and score it.

        Returns (metrics, result) like :meth:`evaluate`, with ``params`` (non-zero parameters: every
        parameter outside the masked weights plus their kept ones) and ``params_ratio``.
        """
        sizes = {n: m.weight.numel() for n, m in self.model.named_modules() if n in keep}
        sparsities = {n: 1 - k / sizes[n] for n, k in keep.items()}
        masks = magnitude_masks(self.model, sparsities=sparsities)
        result = self.engine.prune(Selection(masks={n: m for n, m in masks.items() if n in keep}))
        kept = sum(int(masks[n].sum()) for n in keep)
        if any(int(masks[n].sum()) != k for n, k in keep.items()):
            raise AmcError("magnitude masks do not keep the requested weight counts")
        dense = params(self.model)
        start = time.perf_counter()
        metrics = self.score(result.model)
        result.timings["evaluate"] = time.perf_counter() - start
        metrics["params"] = dense - sum(sizes.values()) + kept
        metrics["params_ratio"] = metrics["params"] / dense
        return metrics, result

    @classmethod
    def build(cls, model: nn.Module, spec: ModelSpec, search: ImageSet, calibration: CalibrationSet,
              data: DataConfig, prune: PruneConfig = PruneConfig(), calibration_config: CalibrationConfig = CalibrationConfig(),
              exclude=(), device: str = "cpu", cache: StatsCache | None = None,
              evaluator: Callable[[nn.Module], float] | None = None) -> "PruningTask":
        """``search``: images that score policies; ``calibration``: images for recovery statistics;
        ``cache``: where the engine keeps its calibration statistics between tasks; ``evaluator``: scores
        policies instead of the search split."""
        model = model.to(device).eval()
        graph = trace(model, spec.input_shape, exclude)
        engine = PruningEngine(model, graph, prune, calibration.to(device), cache)
        search_x = scoring_images(search, data, prune, device)
        # pruning never enlarges an activation: the dense model's batch size serves every pruned one
        batch = (eval_batch_size(model, tuple(search_x.shape[1:]), prune.eval_batch_mib * MIB)
                 if torch.device(device).type == "cpu" else cls.batch_size)
        return cls(model, spec, graph, engine, search_x, search.labels.to(device), device, batch, data=data,
                   calibration=calibration_config, exclude=tuple(exclude), evaluator=evaluator)

    @classmethod
    def tiny(cls, seed: int = 0, granularity: str = "channel") -> "PruningTask":
        """A small random CNN on synthetic images: a fast default for tests and the env checker
        (``granularity="weight"``: masks without BatchNorm recalibration, for the weight environment)."""
        torch.manual_seed(seed)
        spec = ModelSpec("resnet8", 10, (3, 16, 16))
        data = DataConfig(synthetic_size=(200, 10), holdout=100, search_images=100, image_size=16)
        calib = CalibrationConfig(images=100, batch_size=50)
        prune = PruneConfig() if granularity == "channel" else WEIGHT_SEARCH_PRUNE
        return make_task(build_model(spec), spec, data, calib, prune)


def scoring_images(split: ImageSet, data: DataConfig, prune: PruneConfig, device: str) -> torch.Tensor:
    """A split's images as the task scores them: normalised, on ``device``, channels-last if ``prune`` says so."""
    images = normalization(data)(split.images).to(device)
    return images.contiguous(memory_format=torch.channels_last) if prune.channels_last else images


def make_task(model: nn.Module, spec: ModelSpec, data: DataConfig, calibration: CalibrationConfig = CalibrationConfig(),
              prune: PruneConfig = PruneConfig(), exclude=(), device: str = "cpu",
              cache: StatsCache | None = None, evaluator: Callable[[nn.Module], float] | None = None) -> PruningTask:
    """A :class:`PruningTask` over ``data``'s search split (or ``evaluator``); calibration drawn from its
    trained-on part."""
    splits = load_splits(data, ("train", "search"), num_classes=spec.num_classes, image_size=spec.input_shape[-1])
    calib = CalibrationSet.draw(splits["train"], normalization(data), calibration, device)
    return PruningTask.build(model, spec, splits["search"], calib, data, prune, calibration, exclude, device, cache,
                             evaluator)


def open_task(model: ModelConfig, data: DataConfig, calibration: CalibrationConfig = CalibrationConfig(),
              prune: PruneConfig = PruneConfig(), device: str = "cpu", cache: StatsCache | None = None,
              evaluator: Callable[[nn.Module], float] | None = None) -> PruningTask:
    """Open the model of ``model`` (name/checkpoint) and build its :class:`PruningTask`."""
    net, spec, _ = open_configured(model)
    return make_task(net, spec, data, calibration, prune, model.exclude, device, cache, evaluator)
