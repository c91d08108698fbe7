"""Why the search matters, offline, in a few minutes on 2 CPU cores, made of library calls.

On real images that ship with the package (the UCI handwritten digits, CC BY 4.0, see
``amc/datasets/README.md``; :func:`amc.data.read_digits`):

1. train a ResNet-20 for 16x16 inputs on the digits' trained-on part for a few epochs;
2. run a short AMC search at :data:`TARGET` of the dense MACs (:func:`amc_agents.run_search`, then
   :func:`amc_agents.report.write_report`); the search also scores the uniform policy at the same
   budget (``search/uniform_policy.json``);
3. apply the uniform and the best searched policy with :func:`amc.apply_policy` (no fine-tuning) and
   measure dense, uniform and searched on the digits' test part, which neither training nor the
   search (scored on the held-out search split) ever saw.

A second run reuses the trained model and the finished search in the same folder; a non-empty folder
that the demo did not make is refused (the demo never deletes anything).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from amc.apply import apply_policy, calibration_for
from amc.config import (AgentConfig, CalibrationConfig, DataConfig, EnvConfig, ModelConfig, PruneConfig, SearchConfig,
                        TrainConfig, validate)
from amc.cost import macs, params
from amc.data import channel_statistics, load_splits, normalization, read_digits
from amc.errors import AmcError
from amc.evaluation import evaluate
from amc.io import open_model, save_model
from amc.models import ModelSpec, build_model
from amc.policy import Policy
from amc.training import train
from amc_envs import make_task

from .report import write_report
from .search import run_search

SPEC = ModelSpec("resnet20", 10, (3, 16, 16))
TARGET = 0.3  # fraction of the dense MACs the pruned models may keep
AGENT = "ddpg"
DEMO_SIGMA_DECAY = 0.95  # the setting the demo's recorded figures were made with (the search default is now 0.99)
EPISODES = 200
EPOCHS = 5
HOLDOUT = 300  # training images never trained on; all of them score policies (the search split)
CALIBRATION = CalibrationConfig(images=300, batch_size=100)  # 3 BN batches of 100: the figures in the README
# AMC's own recovery (least squares of the consumers, 3 BatchNorm batches): the figures in the README. With the
# default sequential least squares these easy digits lose little to uniform pruning (dense 99.50%, uniform
# 98.25%, searched 97.50% test top-1 on 2026-12-06: `amc demo` with PRUNE = PruneConfig()), so the demo would not
# show what a search is for.
PRUNE = PruneConfig(reconstruction="consumers", bn_batches=3)
MARKER = "amc demo 2: resnet20 on digits"  # content of the folder's .amc-demo (older demos left it empty)


@dataclass(frozen=True)
class DemoRow:
    """One model of the comparison: ``macs`` and ``params`` counted on one 16x16 image;
    ``top1``: accuracy (fraction) on the digits' test part; ``search_top1``: on the search split."""

    name: str
    macs: int
    params: int
    top1: float
    search_top1: float


@dataclass
class DemoResult:
    """Dense, uniform and searched (in that order) at ``target`` of the dense MACs, and where the files are."""

    rows: list[DemoRow]
    target: float
    agent: str
    episodes: int
    test_images: int
    search_images: int
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)

    def row(self, name: str) -> DemoRow:
        return next(r for r in self.rows if r.name == name)


def demo_data() -> DataConfig:
    """The demo's data: the bundled digits at 16x16, normalised with their own statistics (rounded)."""
    mean, std = channel_statistics(read_digits("train", SPEC.input_shape[-1]))
    return DataConfig("digits", holdout=HOLDOUT, search_images=HOLDOUT, image_size=SPEC.input_shape[-1],
                      mean=tuple(round(m, 4) for m in mean), std=tuple(round(s, 4) for s in std))


def run_demo(folder: str | Path, episodes: int = EPISODES, *, epochs: int = EPOCHS, agent: str = AGENT,
             log: Callable[[str], None] = lambda line: None) -> DemoResult:
    """Train, search and compare in ``folder`` (``dense/``, ``search/``, ``uniform.pt``, ``compact.pt``).

    ``episodes``: search episodes (policies scored); ``epochs``: training epochs of the dense model;
    ``agent``: the searching algorithm (``tpe``, ``ddpg``, ``random``, ...); ``log`` gets progress lines.
    """
    out = Path(folder)
    model_path = out / "dense" / "model.pt"
    data = demo_data()
    train_cfg = validate(TrainConfig(epochs=epochs, lr=0.05, batch_size=64, augment=False), "train")
    warmup = max(0, min(episodes // 4 or 1, episodes - 1))  # DDPG/TD3/SAC must learn after their warm-up
    cfg = validate(SearchConfig(model=ModelConfig(SPEC.name, str(model_path), SPEC.num_classes, SPEC.input_shape),
                                data=data, calibration=CALIBRATION, prune=PRUNE, env=EnvConfig(target=TARGET),
                                agent=AgentConfig(algorithm=agent, warmup_episodes=warmup, sigma_decay=DEMO_SIGMA_DECAY),
                                episodes=episodes))
    marker = out / ".amc-demo"
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            raise AmcError(f"{out} is not empty and was not made by amc demo; choose another --out")
        if marker.read_text().strip() != MARKER:
            raise AmcError(f"{out} was made by an older amc demo (synthetic images); delete it or choose another "
                           "--out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(MARKER + "\n")
    torch.manual_seed(0)
    splits = load_splits(data, ("train", "search", "test"), num_classes=SPEC.num_classes,
                         image_size=SPEC.input_shape[-1])
    norm = normalization(data)
    if model_path.is_file():
        log(f"[1/3] reusing trained model {model_path}")
        model, _, _ = open_model(None, model_path)
    else:
        log(f"[1/3] training ResNet-20 on {len(splits['train'])} handwritten digits (16x16), {epochs} epochs")
        model = build_model(SPEC)
        train(model, SPEC, splits["train"], splits["search"], norm,  # validated on held-out images, not the test
              train_cfg, out / "dense", log=log)
    model.eval()

    run_dir = out / "search"
    resume = (run_dir / "checkpoint.pt").is_file()
    what = "continuing the AMC search" if resume else "AMC search"
    log(f"[2/3] {what} ({agent}) in {run_dir}: {episodes} episodes at {TARGET:.0%} of the MACs")
    task = make_task(model, SPEC, data, CALIBRATION, PRUNE)
    run_search(cfg, run_dir, resume=resume, task=task)
    write_report(run_dir)

    log("[3/3] applying the uniform and the best searched policy (no fine-tuning)")
    test_x, test_y = norm(splits["test"].images), splits["test"].labels
    search_x, search_y = norm(splits["search"].images), splits["search"].labels
    x = torch.zeros(1, *SPEC.input_shape)

    def row(name: str, net: nn.Module) -> DemoRow:
        return DemoRow(name, macs(net, x), params(net), evaluate(net, test_x, test_y)["top1"],
                       evaluate(net, search_x, search_y)["top1"])

    rows = [row("dense", model)]
    files = {"dense model": model_path, "search run": run_dir}
    for name, policy_file, model_file in (("uniform", "uniform_policy.json", "uniform.pt"),
                                          ("searched", "best_policy.json", "compact.pt")):
        policy = Policy.load(run_dir / policy_file)
        pruned = apply_policy(model, policy, calibration=calibration_for(policy)).model.eval()
        save_model(out / model_file, pruned, SPEC, policy=policy.to_dict())
        rows.append(row(name, pruned))
        files[f"{name} model"] = out / model_file
    return DemoResult(rows, TARGET, agent, episodes, len(test_y), len(search_y), out, files)
