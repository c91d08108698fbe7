"""Pareto fronts over search runs: only non-dominated episodes, and their policies rebuild the scored models."""
import pandas as pd
import pytest
import torch

import amc
from amc.cli import main
from amc.evaluation import evaluate
from amc.io import open_model, save_model
from amc.models import ModelSpec, build_model
from amc_agents.pareto import pareto_front

SEARCH = ["search", "--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset", "synthetic", "--holdout",
          "100", "--search-images", "50", "--calibration-images", "40", "--bn-batches", "1", "--episodes", "5",
          "--agent", "random", "--quiet", "--cache-dir", "none"]


def test_front_keeps_exactly_the_points_nothing_beats():
    points = pd.DataFrame({"top1": [0.5, 0.6, 0.55, 0.7, 0.7, 0.4], "macs_ratio": [0.3, 0.5, 0.6, 0.8, 0.9, 0.2]})
    front = pareto_front(points, "top1", "macs_ratio")
    assert list(front.index) == [5, 0, 1, 3]  # (0.2, .4) (0.3, .5) (0.5, .6) (0.8, .7); .55 at 0.6 and .7 at 0.9 lose


def test_report_over_two_targets_writes_the_front_and_policies_that_rebuild_the_scored_models(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    save_model(tmp_path / "dense.pt", build_model(spec), spec)
    runs = []
    for target in ("0.4", "0.7"):
        runs.append(str(tmp_path / f"t{target}"))
        assert main([*SEARCH, "--checkpoint", str(tmp_path / "dense.pt"), "--target", target, "--out", runs[-1]]) == 0
    assert main(["report", *runs, "--pareto", str(tmp_path / "front")]) == 0
    front = pd.read_csv(tmp_path / "front" / "pareto.csv")
    episodes = pd.concat([pd.read_csv(f"{r}/episodes.csv") for r in runs])
    for _, p in front.iterrows():  # nothing beats a point of the front
        assert not ((episodes.top1 > p.top1) & (episodes.macs_ratio <= p.macs_ratio)).any()
    assert front.run.nunique() >= 1 and (tmp_path / "front" / "pareto_macs.png").is_file()
    row = front.iloc[-1]
    policy = amc.Policy.load(tmp_path / "front" / row.policy)
    model, _, _ = open_model(None, tmp_path / "dense.pt")
    small = amc.apply_policy(model, policy, calibration=amc.calibration_for(policy)).model
    from amc.data import load_splits, normalization
    search = load_splits(policy.data, ("search",), num_classes=10, image_size=16)["search"]
    scored = evaluate(small, normalization(policy.data)(search.images), search.labels)
    assert scored["top1"] == pytest.approx(row.top1)
    assert policy.metrics["macs_ratio"] == pytest.approx(row.macs_ratio)
