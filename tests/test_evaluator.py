"""A user's own evaluator (--evaluator package.module:function) scores the search instead of top-1."""
import json

import pandas as pd
import pytest
import torch

import amc
from amc.cli import main
from amc.io import open_model, save_model
from amc.models import ModelSpec, build_model

from .nets import mean_logit_score

SEARCH = ["search", "--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset", "synthetic", "--holdout",
          "100", "--search-images", "50", "--calibration-images", "40", "--bn-batches", "1", "--episodes", "4",
          "--agent", "random", "--quiet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluator") / "dense.pt"
    torch.manual_seed(0)
    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    save_model(path, build_model(spec), spec)
    return path


def test_search_rewards_come_from_the_evaluator_and_the_policy_rebuilds_its_score(checkpoint, tmp_path):
    out = tmp_path / "run"
    assert main([*SEARCH, "--checkpoint", str(checkpoint), "--evaluator", "tests.nets:mean_logit_score",
                 "--out", str(out)]) == 0
    episodes = pd.read_csv(out / "episodes.csv")
    assert "score" in episodes.columns and "top1" not in episodes.columns
    assert episodes.score.nunique() > 1  # it varies with the policy: it was computed on each pruned model
    assert (episodes.reward - (episodes.score - 1)).abs().max() < 1e-9  # constrained: reward = -(1 - score)
    best = json.loads((out / "best_policy.json").read_text())
    model, _, _ = open_model(None, checkpoint)
    policy = amc.Policy.load(out / "best_policy.json")
    rebuilt = amc.apply_policy(model, policy, calibration=amc.calibration_for(policy)).model
    assert mean_logit_score(rebuilt) == pytest.approx(best["metrics"]["score"], abs=1e-6)
    assert json.loads((out / "baselines.json").read_text())["uniform"]["score"] > 0
    assert "evaluator score" in (out / "summary.md").read_text()


@pytest.mark.parametrize("evaluator,message", [("tests.nets:nothing_here", "has no attribute 'nothing_here'"),
                                               ("tests.nets:broken_evaluator", "returned 'good'"),
                                               ("no_such_package.mod:fn", "cannot import module"),
                                               ("just_a_name", "must look like package.module:name")])
def test_a_bad_evaluator_is_a_one_line_error(checkpoint, tmp_path, evaluator, message, capsys):
    code = main([*SEARCH, "--checkpoint", str(checkpoint), "--evaluator", evaluator, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()  # refused before the run folder was made
