"""Every configuration object of amc, one per concern, with its defaults stated once, here.

Commands, the library and the search all build these objects; the CLI's flags default to
``None`` and only override fields that were given. Each object turns into a plain dict (for YAML
run files and policy files) with :func:`to_dict` and back with :func:`from_dict`, which refuses
unknown keys. This module imports nothing heavy (no torch).

Units: a **preserve ratio** is the fraction of a group's channels that is kept (1.0 = unpruned);
``target`` is the fraction of the dense model's cost that may remain (0.5 = half the MACs).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import AmcError

DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """What to prune.

    name: registry name (``resnet20``), ``torchvision:NAME`` or ``package.module:factory`` (which
    imports and runs that user code). checkpoint: weights file. num_classes: classifier outputs
    (None: from the checkpoint, else 10). input_shape: one example's (C, H, W) (None: the
    model's default). exclude: glob patterns of layers whose channel groups stay unpruned.
    arguments: the architecture's constructor keyword arguments as ``KEY=VALUE`` strings (VALUE a
    Python literal, else a string), e.g. ``("width=0.5",)``; an amc checkpoint records its own.
    """

    name: str | None = None
    checkpoint: str | None = None
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    exclude: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are split.

    dataset: ``cifar10`` | ``cifar100`` | ``folder`` | ``digits`` (shipped, ``amc/datasets``) |
    ``synthetic``. holdout: training images set aside by a permutation seeded with ``split_seed`` and never trained on; the **search split**
    is the first ``search_images`` of them, so a model fine-tuned with the same holdout never saw
    the images that score policies. The rest of the training set is the *trained-on* part
    (calibration images are drawn from it). mean/std: normalisation of RGB in [0, 1].
    image_size: side length of folder/synthetic images (None: the model's input size).
    synthetic_size: (train, test) image counts of the synthetic dataset.
    """

    dataset: str = "synthetic"
    data_dir: str | None = None
    split_seed: int = 0
    holdout: int = 5000
    search_images: int = 2000
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    image_size: int | None = None
    synthetic_size: tuple[int, int] = (6000, 1000)


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration images for recovery statistics and BatchNorm recalibration.

    images: how many, drawn with ``seed`` from the trained-on part of the training set; batch_size:
    images per forward pass while collecting statistics and recalibrating (one recalibration batch of 50
    ranks policies as faithfully as 1 or 2 batches of 100 at a third to a half of their cost: proxy-fidelity
    record). Recorded in every policy, so ``apply_policy`` redraws exactly the same images.
    """

    images: int = 500
    batch_size: int = 50
    seed: int = 0


@dataclass(frozen=True)
class PruneConfig:
    """How channels are chosen and how the pruned model is recovered.

    granularity: ``channel`` (physical removal) or ``weight`` (masks). criterion: ``l1`` | ``l2`` |
    ``apoz`` | ``mean_activation`` | ``taylor`` | ``random``. reconstruct: least-squares refit after
    pruning. reconstruction: ``sequential`` (every conv/linear layer whose input changed, in forward
    order, on the pruned model's own inputs, BatchNorm statistics re-estimated in the same pass over all
    calibration images at once; one forward pass of the pruned model per pruning; 5-8 points more test
    top-1 without fine-tuning than ``consumers`` on ResNet-20 at 50% MACs, ``results/benchmarks/
    resnet20-50macs-seqls/``) | ``consumers`` (AMC: only the layers reading a pruned group, each on the
    dense model's input restricted to the kept channels; statistics gathered once; :mod:`amc.prune.recovery`).
    bn_batches: calibration batches of a separate BatchNorm recalibration after the reconstruction (0 =
    none; their size is ``CalibrationConfig.batch_size``); None (the default) = 0 after sequential least
    squares, which already re-estimates every BatchNorm on all calibration images, else 1
    (:attr:`recalibration_batches`). points_per_image: sampled conv
    output positions per image for the least squares (0 = all). ridge: relative ridge term. seed: seeds
    the random criterion and position sampling. channels_last: compact models in channels-last memory
    format (faster convs on CPU; results equal up to float rounding). solve_precision: how sequential
    least squares forms its normal equations: ``float32`` (the default: products of mean-centred samples in
    float32, the means' part added in float64, then solved in float64: the same search and test top-1 as
    ``float64`` for all 16 policies of ``results/benchmarks/resnet20-50macs-seqls/``, and reconstruction
    1.26x faster, ``episode-speed/solve-precision-resnet20/``) | ``float64`` (everything in float64; how policies and runs written before
    this field existed were scored). bn_scope: which BatchNorms the recalibration
    re-estimates: ``all`` | ``reconstructed`` (only those directly after a layer the consumers' least
    squares refitted; the others keep the dense statistics). eval_batch_mib: on CPU, the search split is
    scored in batches of as many images as keep the largest activation tensor of a batch within this
    many MiB (2**20 bytes), computed once for the dense model (:func:`amc.evaluation.eval_batch_size`).
    Small enough that glibc serves activations from its heap instead of mapping (and page-faulting)
    them afresh on every forward pass: 4 MiB gave no page faults on ResNet-20, MobileNet-V2 (32 px) and
    MobileNet-V1 (224 px) in ``benchmarks/scoring_speed.py``, where 8-16 MiB still faulted without
    BatchNorm folding. Other devices score 500 images per batch. Scores do not depend on it beyond
    float rounding.
    """

    granularity: str = "channel"
    criterion: str = "l1"
    reconstruct: bool = True
    reconstruction: str = "sequential"
    bn_batches: int | None = None
    points_per_image: int = 10
    ridge: float = 1e-4
    seed: int = 0
    channels_last: bool = True
    solve_precision: str = "float32"
    bn_scope: str = "all"
    eval_batch_mib: float = 4.0

    @property
    def sequential(self) -> bool:
        """Whether pruning runs sequential least squares (channel granularity, reconstruction on)."""
        return self.reconstruct and self.granularity == "channel" and self.reconstruction == "sequential"

    @property
    def recalibration_batches(self) -> int:
        """``bn_batches``, or its default: 0 after sequential least squares, else 1."""
        return self.bn_batches if self.bn_batches is not None else (0 if self.sequential else 1)


@dataclass(frozen=True)
class EnvConfig:
    """The search environment's budget and reward.

    cost: ``macs`` (alias ``flops``) | ``params`` | ``latency`` (:mod:`amc.latency`): what ``target`` limits. target: fraction of the
    dense cost to keep (constrained mode). mode: ``constrained`` (reward = -error, actions clamped
    to meet the budget) | ``accuracy`` (reward = -error * log(cost), no clamp). lbound / rbound:
    preserve-ratio bounds of every action. round_to: kept channel counts are multiples of this.
    metric: ``top1`` | ``top5``. reward_scale: multiplies the reward. budget_rule (constrained mode):
    ``clamp`` (AMC: each action capped in forward order so the rest can still meet the budget at
    ``lbound``) | ``scale`` (the episode's actions keep their shape and one common factor meets the
    budget: :meth:`amc.cost.Budget.scaled`). evaluator: ``package.module:function`` scoring a pruned
    model (``function(model) -> float``, in [0, 1], higher is better) in place of the search split's
    ``metric``; the reward's error is then 1 - score.
    """

    cost: str = "macs"
    target: float = 0.5
    mode: str = "constrained"
    lbound: float = 0.2
    rbound: float = 1.0
    round_to: int = 1
    metric: str = "top1"
    reward_scale: float = 1.0
    budget_rule: str = "clamp"
    evaluator: str | None = None


@dataclass(frozen=True)
class AgentConfig:
    """The searching agent (AMC paper / official code values for DDPG, except the measured sigma_decay).

    algorithm: ``ddpg`` | ``td3`` | ``sac`` | ``random`` | ``tpe`` (Optuna's TPE, a black-box baseline). hidden: sizes of the actor's and critic's
    hidden layers. actor_lr / critic_lr: Adam learning rates. tau: soft target update. batch_size:
    replay minibatch. gamma: discount. buffer_per_group: replay capacity in episodes (capacity =
    this x number of groups transitions). warmup_episodes: episodes of uniform random actions
    before updates start. sigma: exploration std in preserve-ratio units after warm-up;
    sigma_decay: per episode after warm-up (AMC's 0.95 leaves no exploration after ~60 learning episodes;
    0.99 measured 72.1 ± 1.4% vs 70.7 ± 1.3% test top-1 over 5 seeds, ResNet-20 at 50% MACs, 300 episodes:
    ``results/benchmarks/README.md``, five seeds). baseline_momentum: update rate of the reward baseline.
    episode_batch: episodes the RL agent plays with one actor before it trains on them (1 = AMC: train
    after every episode); a batch's episodes are scored in parallel when the search has ``workers`` > 1,
    so it changes what the agent learns, while ``workers`` never does.
    """

    algorithm: str = "ddpg"
    hidden: tuple[int, ...] = (300, 300)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    gamma: float = 1.0
    buffer_per_group: int = 100
    warmup_episodes: int = 100
    sigma: float = 0.5
    sigma_decay: float = 0.99
    baseline_momentum: float = 0.5
    episode_batch: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """Training and fine-tuning: SGD with Nesterov momentum and a cosine learning rate.

    epochs; lr: peak learning rate (cosine decay to 0 over all steps); weight_decay; momentum;
    batch_size; augment: CIFAR random crop + flip; seed: shuffling and augmentation.
    distill: weight in [0, 1] of knowledge distillation from a teacher (the dense model when fine-tuning
    a pruned one; Hinton et al. 2015): the loss is ``(1 - distill) * cross-entropy + distill * T² *
    KL(teacher || student)`` on logits divided by ``temperature`` T (> 0). 0 = plain cross-entropy, no teacher.
    """

    epochs: int = 10
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 128
    augment: bool = True
    seed: int = 0
    distill: float = 0.0
    temperature: float = 4.0


@dataclass(frozen=True)
class SearchConfig:
    """One search: every section above plus the run's own settings.

    episodes: evaluated episodes in total (warm-up included). top_k: policies kept in
    ``top_policies/``. seed: seeds the agent and the random search. device: ``cpu`` or ``cuda``.
    threads: torch CPU threads (0 = torch's default). cache_dir: folder of the
    :class:`~amc.stats_cache.StatsCache` (calibration statistics and the uniform baseline, reused by
    resumes and later searches of the same model and data); None = no cache. workers: processes that score
    policies at once (1 = in this process): random search, warm-up and each ``episode_batch`` of the RL
    agent are scored ahead in parallel, with the same results as one process at the same ``threads``.
    reselect: after the last episode, score the ``top_k`` policies again on the held-out images the search
    never scored (the holdout after the search split) and make the best of them there ``best_policy.json``:
    the search split's best of many noisy scores is optimistic (winner's curse), these images are not.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    episodes: int = 400
    top_k: int = 5
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    cache_dir: str | None = None
    workers: int = 1
    reselect: bool = False


T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A config as plain YAML/JSON data (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


def from_dict(cls: type[T], data: dict | None, source: str = "config") -> T:
    """Build ``cls`` from ``data`` (nested sections for nested configs); unknown keys are an error."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise AmcError(f"{source}: expected a mapping for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise AmcError(f"{source}: unknown {cls.__name__} keys: {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = from_dict(hint, value, f"{source}.{name}")
        elif isinstance(value, list):
            values[name] = tuple(value)
        else:
            values[name] = value
    return cls(**values)


def recorded_prune(data: dict | None) -> dict:
    """A ``prune`` section read from a policy or run written earlier, completed as it was scored: before
    ``reconstruction`` existed every search used the consumers' least squares, and before ``solve_precision``
    existed sequential least squares solved in float64."""
    return {"reconstruction": "consumers", "solve_precision": "float64", **(data or {})}


def replace(cfg: T, **changes: Any) -> T:
    """A copy of ``cfg`` with the fields in ``changes`` that are not None replaced."""
    given = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(cfg, **given) if given else cfg


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two configs of the same type."""
    out = []
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(a):
            out += differences(a, b, f"{prefix}{f.name}.")
        elif a != b:
            out.append(f"{prefix}{f.name}: {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------- validation
CRITERIA = ("l1", "l2", "apoz", "mean_activation", "taylor", "random")
COSTS = ("macs", "flops", "params", "latency")
BUDGET_RULES = ("clamp", "scale")
BN_SCOPES = ("all", "reconstructed")
RECONSTRUCTIONS = ("consumers", "sequential")
ALGORITHMS = ("ddpg", "td3", "sac", "random", "tpe")
DATASETS = ("cifar10", "cifar100", "folder", "digits", "synthetic")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x: Any, low: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def validate(cfg: Any, name: str = "") -> Any:
    """Raise :class:`AmcError` naming the first nonsense value of ``cfg`` (nested sections too); returns ``cfg``.

    Checked before any long work starts: counts are whole numbers in range, rates and ratios are
    finite and in range, names are known.
    """
    prefix = f"{name}." if name else ""
    rules = _RULES.get(type(cfg), {})
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}")
        elif f.name in rules:
            ok, expected = rules[f.name]
            if not ok(value):
                raise AmcError(f"{prefix}{f.name} = {value!r} is not valid: expected {expected}")
    if isinstance(cfg, EnvConfig) and not cfg.lbound <= cfg.rbound:
        raise AmcError(f"{prefix}lbound {cfg.lbound} is above rbound {cfg.rbound}")
    if isinstance(cfg, EnvConfig):
        check_reward_cost(cfg)
    if isinstance(cfg, DataConfig) and cfg.search_images > cfg.holdout:
        raise AmcError(f"{prefix}search_images ({cfg.search_images}) must be part of the holdout ({cfg.holdout})")
    return cfg


def check_reward_cost(cfg: EnvConfig) -> None:
    """Accuracy mode's reward -error * log(cost) needs a count: refused for a latency (checked before a table is
    measured)."""
    if cfg.mode == "accuracy" and cfg.cost == "latency":
        raise AmcError("accuracy mode's reward -error * log(cost) needs a count (macs or params), not a latency "
                       "in milliseconds; use --mode constrained with --cost latency")


_RATE = (lambda x: _finite(x) and x > 0, "a finite number > 0")
_FRACTION = (lambda x: _finite(x) and 0 < x <= 1, "a number in (0, 1]")
_RULES: dict[type, dict[str, tuple]] = {
    ModelConfig: {"num_classes": (lambda x: x is None or _whole(x, 1), "a whole number >= 1"),
                  "input_shape": (lambda x: x is None or (len(x) == 3 and all(_whole(v, 1) for v in x)),
                                  "three whole numbers C H W")},
    DataConfig: {"dataset": (lambda x: x in DATASETS, " | ".join(DATASETS)),
                 "holdout": (lambda x: _whole(x, 0), "a whole number >= 0"),
                 "search_images": (lambda x: _whole(x, 1), "a whole number >= 1"),
                 "split_seed": (lambda x: _whole(x, 0), "a whole number >= 0"),
                 "mean": (lambda x: all(_finite(v) for v in x), "finite numbers"),
                 "std": (lambda x: all(_finite(v) and v > 0 for v in x), "finite numbers > 0"),
                 "image_size": (lambda x: x is None or _whole(x, 1), "a whole number >= 1")},
    CalibrationConfig: {"images": (lambda x: _whole(x, 1), "a whole number >= 1"),
                        "batch_size": (lambda x: _whole(x, 1), "a whole number >= 1"),
                        "seed": (lambda x: _whole(x, 0), "a whole number >= 0")},
    PruneConfig: {"granularity": (lambda x: x in ("channel", "weight"), "channel | weight"),
                  "criterion": (lambda x: x in CRITERIA, " | ".join(CRITERIA)),
                  "bn_batches": (lambda x: x is None or _whole(x, 0), "a whole number >= 0"),
                  "points_per_image": (lambda x: _whole(x, 0), "a whole number >= 0"),
                  "ridge": (lambda x: _finite(x) and x >= 0, "a finite number >= 0"),
                  "seed": (lambda x: _whole(x, 0), "a whole number >= 0"),
                  "bn_scope": (lambda x: x in BN_SCOPES, " | ".join(BN_SCOPES)),
                  "reconstruction": (lambda x: x in RECONSTRUCTIONS, " | ".join(RECONSTRUCTIONS)),
                  "solve_precision": (lambda x: x in ("float32", "float64"), "float32 | float64"),
                  "eval_batch_mib": _RATE},
    EnvConfig: {"cost": (lambda x: x in COSTS, " | ".join(COSTS)), "target": _FRACTION,
                "mode": (lambda x: x in ("constrained", "accuracy"), "constrained | accuracy"),
                "lbound": _FRACTION, "rbound": _FRACTION, "round_to": (lambda x: _whole(x, 1), "a whole number >= 1"),
                "metric": (lambda x: x in ("top1", "top5"), "top1 | top5"), "reward_scale": _RATE,
                "budget_rule": (lambda x: x in BUDGET_RULES, " | ".join(BUDGET_RULES))},
    AgentConfig: {"algorithm": (lambda x: x in ALGORITHMS, " | ".join(ALGORITHMS)),
                  "hidden": (lambda x: len(x) >= 1 and all(_whole(v, 1) for v in x), "whole numbers >= 1"),
                  "actor_lr": _RATE, "critic_lr": _RATE, "tau": _FRACTION,
                  "batch_size": (lambda x: _whole(x, 1), "a whole number >= 1"),
                  "gamma": (lambda x: _finite(x) and 0 <= x <= 1, "a number in [0, 1]"),
                  "buffer_per_group": (lambda x: _whole(x, 1), "a whole number >= 1"),
                  "warmup_episodes": (lambda x: _whole(x, 0), "a whole number >= 0"),
                  "sigma": (lambda x: _finite(x) and x >= 0, "a finite number >= 0"), "sigma_decay": _FRACTION,
                  "baseline_momentum": _FRACTION,
                  "episode_batch": (lambda x: _whole(x, 1), "a whole number >= 1")},
    TrainConfig: {"epochs": (lambda x: _whole(x, 1), "a whole number >= 1"), "lr": _RATE,
                  "weight_decay": (lambda x: _finite(x) and x >= 0, "a finite number >= 0"),
                  "momentum": (lambda x: _finite(x) and 0 <= x < 1, "a number in [0, 1)"),
                  "batch_size": (lambda x: _whole(x, 1), "a whole number >= 1"),
                  "seed": (lambda x: _whole(x, 0), "a whole number >= 0"),
                  "distill": (lambda x: _finite(x) and 0 <= x <= 1, "a number in [0, 1]"),
                  "temperature": (lambda x: _finite(x) and x > 0, "a finite number > 0")},
    SearchConfig: {"episodes": (lambda x: _whole(x, 1), "a whole number >= 1"),
                   "top_k": (lambda x: _whole(x, 1), "a whole number >= 1"),
                   "seed": (lambda x: _whole(x, 0), "a whole number >= 0"),
                   "device": (lambda x: isinstance(x, str) and (x == "cpu" or x.startswith("cuda")), "cpu | cuda[:N]"),
                   "threads": (lambda x: _whole(x, 0), "a whole number >= 0"),
                   "workers": (lambda x: _whole(x, 1), "a whole number >= 1")},
}
