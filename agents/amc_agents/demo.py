"""The whole workflow on an embedded default, offline, in a few minutes on 2 CPU cores, made of library calls.

1. train a ResNet-8 for 16x16 synthetic images (:func:`amc.data.synthetic_images`) for a few epochs;
2. run a short DDPG search at 50% of the MACs (:func:`amc_agents.run_search`);
3. apply the best policy with :func:`amc.apply_policy` (the same model the search scored) and save it.

A second run reuses the trained model and the finished search in the same folder; a non-empty folder
that the demo did not make is refused (the demo never deletes anything).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from amc.apply import apply_policy, calibration_for
from amc.config import AgentConfig, CalibrationConfig, DataConfig, ModelConfig, PruneConfig, SearchConfig, TrainConfig
from amc.cost import macs, params
from amc.errors import AmcError
from amc.data import load_splits, normalization
from amc.evaluation import evaluate
from amc.io import open_model, save_model
from amc.models import ModelSpec, build_model
from amc.training import train
from amc_envs import make_task

from .search import run_search
from .store import RunStore

SPEC = ModelSpec("resnet8", 10, (3, 16, 16))
DATA = DataConfig("synthetic", holdout=500, search_images=500, image_size=16, synthetic_size=(3000, 1000))
CALIBRATION = CalibrationConfig(images=300)
PRUNE = PruneConfig(bn_batches=3)


@dataclass
class DemoResult:
    dense_top1: float
    compact_top1: float
    dense_macs: int
    compact_macs: int
    dense_params: int
    compact_params: int
    best_reward: float
    folder: Path


def run_demo(folder: str | Path, episodes: int = 40, log: Callable[[str], None] = lambda line: None) -> DemoResult:
    """Train, search and apply in ``folder`` (``dense/``, ``search/``, ``compact.pt``); ``log`` gets progress lines."""
    out = Path(folder)
    marker = out / ".amc-demo"
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise AmcError(f"{out} is not empty and was not made by amc demo; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    torch.manual_seed(0)
    splits = load_splits(DATA, ("train", "test"), num_classes=SPEC.num_classes, image_size=16)
    norm = normalization(DATA)
    model_path = out / "dense" / "model.pt"
    if model_path.is_file():
        log(f"[1/3] reusing trained model {model_path}")
        model, _, _ = open_model(None, model_path)
    else:
        log("[1/3] training ResNet-8 on synthetic 16x16 images")
        model = build_model(SPEC)
        train(model, SPEC, splits["train"], splits["test"], norm, TrainConfig(epochs=3, lr=0.05, batch_size=64),
              out / "dense", log=log)
    test_x, test_y = norm(splits["test"].images), splits["test"].labels
    dense_top1 = evaluate(model, test_x, test_y)["top1"]

    log(f"[2/3] AMC search, {episodes} episodes at 50% of the MACs")
    cfg = SearchConfig(model=ModelConfig(SPEC.name, str(model_path), SPEC.num_classes, SPEC.input_shape), data=DATA,
                       calibration=CALIBRATION, prune=PRUNE, agent=AgentConfig(warmup_episodes=max(1, episodes // 4)),
                       episodes=episodes)
    task = make_task(model, SPEC, DATA, CALIBRATION, PRUNE)
    run_dir = out / "search"
    resume = (run_dir / "checkpoint.pt").is_file()
    best, store = run_search(cfg, run_dir, resume=resume, task=task)

    log("[3/3] applying the best policy")
    policy = RunStore(run_dir).best_policy()
    compact = apply_policy(model, policy, calibration=calibration_for(policy)).model
    save_model(out / "compact.pt", compact, SPEC, policy=policy.to_dict())
    x = torch.zeros(1, *SPEC.input_shape)
    return DemoResult(dense_top1, evaluate(compact, test_x, test_y)["top1"], macs(model, x), macs(compact, x),
                      params(model), params(compact), best.reward, out)
