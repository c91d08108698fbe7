"""Flags -> config objects: every flag of every command is declared once here, with the config field it sets.

Flags default to ``None``; a config is built by replacing, in the defaults of
:mod:`amc.config` (or a YAML file, or a stored run), only the fields whose flags were given.
``FLAGS`` is the single table; tests check that each flag changes its field.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from ..config import (DATASETS, AgentConfig, CalibrationConfig, DataConfig, EnvConfig, ModelConfig, PruneConfig, SearchConfig,
                      TrainConfig, replace)

BOOL = "bool"  # --x / --no-x


@dataclass(frozen=True)
class Flag:
    name: str          # --flag-name
    section: str       # config section: model, data, calibration, prune, env, agent, train, run
    field: str         # field of that section's config
    type: Any = None   # int, float, str, BOOL, or a tuple (nargs)
    help: str = ""
    choices: tuple | None = None
    nargs: Any = None


FLAGS: tuple[Flag, ...] = (
    # model
    Flag("--checkpoint", "model", "checkpoint", str, "weights file (state_dict or amc checkpoint; a 'module.' prefix is stripped)"),
    Flag("--num-classes", "model", "num_classes", int, "classifier outputs (default: from the checkpoint, else 10)"),
    Flag("--input-shape", "model", "input_shape", int, "one input's shape C H W (default: the model's)", nargs=3),
    Flag("--exclude", "model", "exclude", str, "glob patterns of layers whose channel groups stay unpruned", nargs="*"),
    Flag("--model-arg", "model", "arguments", str, "constructor arguments of the architecture, KEY=VALUE ... (e.g. "
         "width=0.5 for the MobileNets; a checkpoint made by amc records its own)", nargs="+"),
    # data
    Flag("--dataset", "data", "dataset", str, "dataset kind (folder: DATA_DIR/train/<class>/*.png and DATA_DIR/test/...; "
         "digits: the handwritten digits shipped in the package)", choices=DATASETS),
    Flag("--data-dir", "data", "data_dir", str, "cifar-10-batches-py (or its parent), cifar-100-python, or an image folder"),
    Flag("--holdout", "data", "holdout", int, "training images set aside, never trained on (default 5000)"),
    Flag("--search-images", "data", "search_images", int, "images of the holdout that score policies (default 2000)"),
    Flag("--split-seed", "data", "split_seed", int, "seed of the holdout permutation (default 0)"),
    Flag("--mean", "data", "mean", float, "normalisation mean of RGB in [0, 1]", nargs=3),
    Flag("--std", "data", "std", float, "normalisation std", nargs=3),
    Flag("--image-size", "data", "image_size", int, "side length of folder/synthetic images (default: the model's)"),
    # calibration
    Flag("--calibration-images", "calibration", "images", int, "calibration images drawn from the trained-on part (default 500)"),
    Flag("--calibration-batch-size", "calibration", "batch_size", int, "images per calibration batch, also the BatchNorm recalibration batch (default 50)"),
    Flag("--calibration-seed", "calibration", "seed", int, "seed of the calibration draw (default 0)"),
    # prune
    Flag("--criterion", "prune", "criterion", str, "channel importance criterion (default l1)",
         choices=("l1", "l2", "apoz", "mean_activation", "taylor", "random")),
    Flag("--reconstruct", "prune", "reconstruct", BOOL, "least-squares reconstruction (default on; --reconstruction says which)"),
    Flag("--reconstruction", "prune", "reconstruction", str, "least squares on the dense model's inputs for the "
         "consumers of pruned groups (AMC), or on the pruned model's own inputs for every layer in forward order "
         "(default sequential)", choices=("consumers", "sequential")),
    Flag("--solve-precision", "prune", "solve_precision", str, "sequential least squares: normal equations of "
         "mean-centred samples in float32 (default), or all in float64", choices=("float32", "float64")),
    Flag("--granularity", "prune", "granularity", str, "channel: AMC (channels removed for real); weight: fine-grained "
         "AMC (per-layer weight sparsity with masks; give --cost params and a low --lbound, e.g. 0.05)",
         choices=("channel", "weight")),
    Flag("--bn-batches", "prune", "bn_batches", int, "calibration batches of a BatchNorm recalibration after the "
         "least squares (0 = off; default 0 after sequential least squares, which re-estimates BatchNorm in its "
         "own pass, else 1)"),
    Flag("--bn-scope", "prune", "bn_scope", str, "BatchNorms to recalibrate: all, or only those right after a layer "
         "the consumers' least squares refitted, with --reconstruction consumers (default all)", choices=("all", "reconstructed")),
    Flag("--points-per-image", "prune", "points_per_image", int, "sampled positions per image for least squares (default 10; 0 = all)"),
    Flag("--ridge", "prune", "ridge", float, "relative ridge term of the least squares (default 1e-4)"),
    Flag("--prune-seed", "prune", "seed", int, "seed of the random criterion and position sampling (default 0)"),
    Flag("--channels-last", "prune", "channels_last", BOOL, "channels-last memory format for pruned models (default on)"),
    Flag("--eval-batch-mib", "prune", "eval_batch_mib", float, "scoring batches on CPU hold as many search images as "
         "keep the largest activation tensor within this many MiB (default 4)"),
    # env
    Flag("--cost", "env", "cost", str, "what the target limits (default macs; flops = macs; latency: a per-layer "
         "table measured on this machine, cached in --cache-dir; alias --resource)",
         choices=("macs", "flops", "params", "latency")),
    Flag("--target", "env", "target", float, "fraction of the dense cost to keep, in (0, 1] (default 0.5)"),
    Flag("--mode", "env", "mode", str, "constrained: reward -error under the budget; accuracy: -error*log(cost)",
         choices=("constrained", "accuracy")),
    Flag("--lbound", "env", "lbound", float, "smallest preserve ratio (fraction of channels kept) of any group (default 0.2)"),
    Flag("--rbound", "env", "rbound", float, "largest preserve ratio (default 1.0)"),
    Flag("--round-to", "env", "round_to", int, "kept channel counts are multiples of this (default 1)"),
    Flag("--metric", "env", "metric", str, "accuracy in the reward (default top1)", choices=("top1", "top5")),
    Flag("--reward-scale", "env", "reward_scale", float, "multiplies the reward (default 1)"),
    Flag("--budget-rule", "env", "budget_rule", str, "clamp: AMC's per-step cap in forward order (late groups "
         "may be starved); scale: one common factor on the episode's actions meets the budget (default clamp)",
         choices=("clamp", "scale")),
    Flag("--evaluator", "env", "evaluator", str, "package.module:function scoring a pruned model "
         "(function(model) -> float in [0, 1], higher = better, e.g. mAP on your validation data) instead of the "
         "search split's top-1; the data flags still give the calibration images"),
    # agent
    Flag("--agent", "agent", "algorithm", str, "searching agent (default ddpg; tpe: Optuna's TPE black-box "
         "optimiser over the per-group actions)", choices=("ddpg", "td3", "sac", "random", "tpe")),
    Flag("--hidden", "agent", "hidden", int, "hidden layer sizes of actor and critic (default 300 300)", nargs="+"),
    Flag("--actor-lr", "agent", "actor_lr", float, "actor learning rate (default 1e-4)"),
    Flag("--critic-lr", "agent", "critic_lr", float, "critic learning rate (default 1e-3)"),
    Flag("--tau", "agent", "tau", float, "soft target update rate (default 0.01)"),
    Flag("--agent-batch-size", "agent", "batch_size", int, "replay minibatch (default 64)"),
    Flag("--gamma", "agent", "gamma", float, "discount (default 1.0)"),
    Flag("--buffer-per-group", "agent", "buffer_per_group", int, "replay capacity in episodes (default 100)"),
    Flag("--warmup-episodes", "agent", "warmup_episodes", int, "random episodes before the agent learns (default 100)"),
    Flag("--sigma", "agent", "sigma", float, "exploration std in preserve-ratio units after warm-up (default 0.5)"),
    Flag("--sigma-decay", "agent", "sigma_decay", float, "exploration decay per episode after warm-up (default 0.99; AMC's is 0.95)"),
    Flag("--baseline-momentum", "agent", "baseline_momentum", float, "reward baseline update rate (default 0.5)"),
    Flag("--episode-batch", "agent", "episode_batch", int, "episodes the agent plays before training on them "
         "(default 1, as AMC); scored in parallel with --workers"),
    # train
    Flag("--epochs", "train", "epochs", int, "training epochs (default 10)"),
    Flag("--lr", "train", "lr", float, "peak learning rate, cosine decay to 0 (default 0.1)"),
    Flag("--weight-decay", "train", "weight_decay", float, "weight decay (default 5e-4)"),
    Flag("--momentum", "train", "momentum", float, "SGD momentum (default 0.9)"),
    Flag("--batch-size", "train", "batch_size", int, "training batch size (default 128)"),
    Flag("--augment", "train", "augment", BOOL, "random crop + flip (default on)"),
    Flag("--distill", "train", "distill", float, "fine-tuning a pruned model: weight in [0, 1] of knowledge distillation "
         "from the dense model (default 0: plain cross-entropy)"),
    Flag("--temperature", "train", "temperature", float, "distillation temperature (default 4)"),
    Flag("--seed", "run", "seed", int, "random seed (default 0)"),
    # run (search)
    Flag("--episodes", "run", "episodes", int, "episodes in total, warm-up included (default 400)"),
    Flag("--top-k", "run", "top_k", int, "policies kept in top_policies/ (default 5)"),
    Flag("--device", "run", "device", str, "cpu or cuda (default cpu)"),
    Flag("--threads", "run", "threads", int, "torch CPU threads (default: torch's; with --workers, per worker, default "
         "cores / workers)"),
    Flag("--workers", "run", "workers", int, "processes scoring policies at once (default 1): random search, warm-up and "
         "each --episode-batch of the agent; results equal one process's at the same --threads"),
    Flag("--reselect", "run", "reselect", BOOL, "after the last episode, score the --top-k policies on the held-out "
         "images outside the search split and make the best there best_policy.json (default off)"),
    Flag("--cache-dir", "run", "cache_dir", str, "cache of calibration statistics, baseline scores and latency "
         "tables shared by searches of the same model and data (default ~/.cache/amc; 'none' turns it off)"),
)

SECTIONS = {"model": ModelConfig, "data": DataConfig, "calibration": CalibrationConfig, "prune": PruneConfig,
            "env": EnvConfig, "agent": AgentConfig, "train": TrainConfig}


DISTILL_FLAGS = ("--distill", "--temperature")  # only commands that fine-tune a pruned model have a teacher


def dest(flag: Flag) -> str:
    return flag.name.lstrip("-").replace("-", "_")


ALIASES = {"--cost": ("--resource",)}  # other spellings of a flag (the first name sets the config field)


def add_flags(p: argparse.ArgumentParser, *sections: str, skip: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    """Add the flags of ``sections`` (``run`` flags: name them in ``sections`` as ``run``)."""
    for f in FLAGS:
        if f.section not in sections or f.name in skip:
            continue
        kwargs: dict[str, Any] = {"help": f.help, "default": None}
        if f.type == BOOL:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=f.type, choices=f.choices, nargs=f.nargs)
        if f.name in required:
            kwargs["required"] = True
        group = _group(p, f.section)
        group.add_argument(f.name, *ALIASES.get(f.name, ()), **kwargs)


def _group(p: argparse.ArgumentParser, section: str):
    groups = p.__dict__.setdefault("_amc_groups", {})
    if section not in groups:
        groups[section] = p.add_argument_group(f"{section} options")
    return groups[section]


def section(args: argparse.Namespace, name: str, base: Any = None) -> Any:
    """The config of section ``name``: ``base`` (default: the defaults) with the given flags applied."""
    base = base if base is not None else SECTIONS[name]()
    values = {}
    for f in FLAGS:
        if f.section == name and getattr(args, dest(f), None) is not None:
            value = getattr(args, dest(f))
            values[f.field] = tuple(value) if isinstance(value, list) else value
    if name == "model" and getattr(args, "model", None):
        values["name"] = args.model
    return replace(base, **values)


def run_values(args: argparse.Namespace) -> dict:
    """Top-level run settings given as flags (``seed``, ``episodes``, ...)."""
    return {f.field: getattr(args, dest(f)) for f in FLAGS if f.section == "run" and getattr(args, dest(f), None) is not None}


def search_config(args: argparse.Namespace, base: SearchConfig) -> SearchConfig:
    """``base`` with every given flag applied."""
    nested = {name: section(args, name, getattr(base, name)) for name in SECTIONS if name != "train"}
    return replace(base, **nested, **run_values(args))


def add_model_arg(p: argparse.ArgumentParser, positional: bool = True) -> None:
    text = ("registry name (resnet20, vgg16, mobilenet_v2, ...), torchvision:NAME or package.module:factory "
            "(imports and runs that module's code)")
    if positional:
        p.add_argument("model", nargs="?", help=text + "; optional with an amc checkpoint")
    else:
        p.add_argument("--model", help=text)


def command_line() -> str:
    return " ".join(["amc", *sys.argv[1:]])


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
