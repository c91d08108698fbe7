"""amc sweep: a grid of searches through Ray Tune (local), each trial a run folder; a rerun resumes, not redoes."""
import pandas as pd
import pytest
import torch

from amc.cli import main
from amc.io import save_model
from amc.models import ModelSpec, build_model
from amc_agents.sweep import Trial, aggregate, grid

pytest.importorskip("ray.tune")  # an optional extra: pip install amc[ray]

FLAGS = ["--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset", "synthetic", "--holdout", "100",
         "--search-images", "50", "--calibration-images", "40", "--bn-batches", "1", "--agent", "random",
         "--cache-dir", "none", "--threads", "1"]


def test_grid_and_aggregate_are_plain_functions():
    trials = grid([0.5, 0.7], [0, 1], ["random"])
    assert [t.name for t in trials] == ["target0.5-seed0-random", "target0.5-seed1-random",
                                        "target0.7-seed0-random", "target0.7-seed1-random"]
    rows = pd.DataFrame({"target": [0.5, 0.5], "agent": ["random"] * 2, "best_reward": [-0.2, -0.4],
                         "best_top1": [0.8, 0.6], "uniform_reward": [-0.5, -0.5]})
    assert "| 0.5 | random | 2 | -0.3000 ± 0.1414 | 0.7000 ± 0.1414 | -0.5000 ± 0.0000 |" in aggregate(rows)


def test_two_trials_run_on_local_ray_a_killed_trial_resumes_and_finished_ones_are_kept(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    save_model(tmp_path / "dense.pt", build_model(spec), spec)
    ck = ["--checkpoint", str(tmp_path / "dense.pt")]
    killed = tmp_path / "sw" / "trials" / Trial(0.7, 0, "random").name
    # a trial that stopped after 1 of its 3 episodes (as a killed one does)
    assert main(["search", *FLAGS, *ck, "--target", "0.7", "--seed", "0", "--episodes", "1", "--quiet",
                 "--out", str(killed)]) == 0
    first_row = pd.read_csv(killed / "episodes.csv").iloc[0]
    argv = ["sweep", *FLAGS, *ck, "--targets", "0.5", "0.7", "--episodes", "3", "--out", str(tmp_path / "sw")]
    assert main(argv) == 0
    table = pd.read_csv(tmp_path / "sw" / "sweep.csv")
    assert sorted(table.target) == [0.5, 0.7] and (table.episodes == 3).all()
    assert (table.best_macs_ratio <= table.target + 1e-9).all()
    resumed = pd.read_csv(killed / "episodes.csv")
    assert len(resumed) == 3 and resumed.iloc[0].equals(first_row)  # continued, nothing lost or doubled
    done = tmp_path / "sw" / "trials" / Trial(0.5, 0, "random").name
    before = (done / "episodes.csv").read_bytes()
    assert main(argv) == 0  # the same sweep again: every trial finished, nothing is run twice
    assert (done / "episodes.csv").read_bytes() == before and len(pd.read_csv(killed / "episodes.csv")) == 3
    assert "| 0.5 | random | 1 |" in (tmp_path / "sw" / "summary.md").read_text()
    front = pd.read_csv(tmp_path / "sw" / "front" / "pareto.csv")  # refreshed by the rerun
    assert set(front.run.map(lambda r: r.split("/")[-1])) <= {t.name for t in grid([0.5, 0.7], [0], ["random"])}


def test_a_sweep_refuses_another_plan_in_the_same_folder(tmp_path, capsys):
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text('{"base": {}, "trials": []}')
    code = main(["sweep", *FLAGS, "--targets", "0.5", "--episodes", "2", "--out", str(tmp_path / "sw")])
    assert code == 2 and "other settings" in capsys.readouterr().err


def test_a_plan_stored_before_a_recovery_setting_existed_matches_only_the_settings_it_was_scored_with():
    from amc.config import PruneConfig, SearchConfig, replace, to_dict
    from amc_agents.sweep import recorded_plan

    trials = [t.__dict__ for t in grid([0.5], [0], ["random"])]
    old = {"base": to_dict(SearchConfig()), "trials": trials}
    del old["base"]["prune"]["solve_precision"]  # a sweep stored before the field existed solved in float64
    today = {"base": to_dict(SearchConfig()), "trials": trials}
    as_scored = {"base": to_dict(SearchConfig(prune=replace(PruneConfig(), solve_precision="float64"))), "trials": trials}
    assert recorded_plan(old) == as_scored and recorded_plan(old) != today
    assert recorded_plan({"base": {}, "trials": []}) != today  # an unrelated plan still differs


def test_a_weight_trial_resumes_and_a_trial_stopped_before_its_first_checkpoint_starts_over(tmp_path):
    """run_trial without Ray: the stored (weight-search) config is what a resume compares with."""
    from amc.config import DataConfig, EnvConfig, ModelConfig, PruneConfig, SearchConfig, to_dict
    from amc_agents.sweep import run_trial

    base = SearchConfig(model=ModelConfig(name="resnet8", input_shape=(3, 16, 16)),
                        data=DataConfig(dataset="synthetic", holdout=100, search_images=50),
                        prune=PruneConfig(granularity="weight"), env=EnvConfig(cost="params", lbound=0.05),
                        episodes=1, threads=1, cache_dir=None)
    trial = Trial(0.5, 0, "random")
    folder = tmp_path / trial.name
    assert run_trial(to_dict(base), trial, str(folder))["episodes"] == 1
    row = run_trial(to_dict(SearchConfig(**{**base.__dict__, "episodes": 2})), trial, str(folder))
    assert row["state_before"] == "partial" and row["episodes"] == 2
    (folder / "checkpoint.pt").unlink()  # as if killed before the first checkpoint of a fresh trial
    row = run_trial(to_dict(base), trial, str(folder))
    assert row["state_before"] == "new" and row["episodes"] == 1
