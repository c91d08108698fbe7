import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = str(ROOT / "benchmarks")


def test_episode_speed_benchmark_writes_its_record(tmp_path):
    """The benchmark runs a real short search and relates episode time to the scoring floor."""
    sys.path.insert(0, BENCHMARKS)
    import episode_speed

    record = tmp_path / "speed.json"
    episode_speed.main(["--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset", "synthetic",
                        "--holdout", "64", "--search-images", "64", "--calibration-images", "64", "--episodes", "4",
                        "--warmup-episodes", "2", "--repeats", "2", "--throughput-episodes", "3", "--rounds", "1",
                        "--record", str(record)])
    figures = json.loads(record.read_text())
    assert figures["episodes_summarised"] == 2 and figures["search_images"] == 64 and figures["groups"] == 3
    steps = figures["median_s"]
    assert steps["episode_s"] >= steps["evaluate_s"] > 0
    floors = figures["floors"]  # one per top policy (top_k 5 of the 4 episodes: all of them), each its own episode
    assert sorted(f["episode"] for f in floors) == [1, 2, 3, 4] and all(f["floor_s"] > 0 for f in floors)
    assert all(f["episode_to_floor"] == pytest.approx(f["episode_s"] / f["floor_s"]) for f in floors)
    assert all(f["episode_to_floor"] >= f["env_to_floor"] > 0 for f in floors)
    assert figures["episode_to_floor"] == pytest.approx(statistics.median(f["episode_to_floor"] for f in floors))
    assert figures["config"]["calibration"]["images"] == 64
    assert figures["construction_s"]["cold"] > 0 and figures["construction_s"]["cached"] > 0
    assert figures["per_episode_cpu"]["user"] > 0 and figures["per_episode_cpu"]["minor_faults"] >= 0
    rates = figures["episodes_per_hour"]
    assert set(rates) == {"1 process, 1 thread", "1 process, 2 threads", "2 workers, 1 thread each"}
    assert rates["1 process, 1 thread"]["vs_1_thread"] == 1 and all(r["median"] > 0 for r in rates.values())
    assert figures["same_best_reward_in_every_mode"]  # a random search: every mode scores the same policies


def test_scoring_speed_benchmark_times_every_variant_and_checks_equal_scores(tmp_path, capsys):
    sys.path.insert(0, BENCHMARKS)
    import scoring_speed

    record = tmp_path / "scoring.json"
    assert scoring_speed.main(["--model", "resnet8", "--input-shape", "3", "16", "16", "--images", "30",
                               "--repeats", "2", "--batch", "500", "--eval-batch-mib", "0.1",
                               "--record", str(record)]) == 0
    figures = json.loads(record.read_text())
    rows = {r["variant"]: r for r in figures["rows"]}
    assert set(rows) == {"batch 500", "batch 500 + fold", "0.1 MiB", "0.1 MiB + fold"}
    assert figures["scores_equal"] and figures["largest_activation_bytes_per_image"] == 16 * 16 * 16 * 4
    assert rows["0.1 MiB"]["batch"] == 6 and rows["batch 500"]["largest_activation_mib"] == 30 * 16 ** 3 * 4 / 2 ** 20
    assert all(len(r["all_wall_s"]) == 2 and r["wall_s"] > 0 and r["minflt"] >= 0 for r in rows.values())
    assert "0.1 MiB + fold" in capsys.readouterr().out


def test_core_scaling_benchmark_measures_one_and_two_processes(tmp_path):
    sys.path.insert(0, BENCHMARKS)
    import core_scaling
    out = tmp_path / "scaling.json"
    assert core_scaling.main(["--mib", "4", "--seconds", "0.05", "--rounds", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"copy", "depthwise", "matmul"}
    # two processes do work too (a broken barrier or a lost queue item would hang or give zero)
    assert all(r["one_process_per_s"] > 0 and r["two_processes_per_s"] > 0 for r in results.values())


def test_agent_update_speed_benchmark_times_both_optimisers(capsys):
    sys.path.insert(0, BENCHMARKS)
    import agent_update_speed
    assert agent_update_speed.main(["--steps", "3", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "default  Adam:" in out and "foreach  Adam:" in out and "for 3 gradient steps" in out


def _tiny_random_searches(tmp_path):
    """Two 6-episode random searches of a random ResNet-8 on synthetic data, as method_comparison.sh lays them
    out (``tmp_path/res/tiny/random-seed{0,1}``); returns (the dense model, the data config)."""
    import torch

    from amc.config import AgentConfig, CalibrationConfig, DataConfig, ModelConfig, SearchConfig
    from amc.io import save_model
    from amc.models import ModelSpec, build_model
    from amc_agents import run_search

    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    torch.manual_seed(0)
    model = build_model(spec)
    save_model(tmp_path / "m.pt", model, spec)
    data = DataConfig(synthetic_size=(240, 30), holdout=120, search_images=60, image_size=16)
    for seed in (0, 1):
        run_search(SearchConfig(model=ModelConfig("resnet8", str(tmp_path / "m.pt")), data=data,
                                calibration=CalibrationConfig(images=60, batch_size=30),
                                agent=AgentConfig(algorithm="random"), episodes=6, seed=seed, cache_dir=None),
                   tmp_path / "res" / "tiny" / f"random-seed{seed}")
    return model, data


def test_final_recalibration_rebuilds_each_best_policy_as_scored_and_with_more_batchnorm_batches(tmp_path):
    import pandas as pd

    from amc import Policy, apply_policy, calibration_for
    from amc.data import load_splits, normalization
    from amc.evaluation import evaluate

    sys.path.insert(0, BENCHMARKS)
    import final_recalibration

    model, data = _tiny_random_searches(tmp_path)
    args = ["tiny", "--checkpoint", str(tmp_path / "m.pt"), "--data-dir", "", "--results", str(tmp_path / "res")]
    assert final_recalibration.main([*args, "--bn-batches", "2"]) == 0
    table = pd.read_csv(tmp_path / "res" / "tiny" / "final_recalibration.csv")
    assert list(table.method) == ["uniform", "random", "random"] and list(table.seed) == [-1, 0, 1]
    test = load_splits(data, ("test",), image_size=16)["test"]
    images = normalization(data)(test.images)
    policy = Policy.load(tmp_path / "res" / "tiny" / "random-seed1" / "best_policy.json")
    assert policy.prune.recalibration_batches == 0  # the search's default; the final model adds two 30-image batches
    calibration = calibration_for(policy, data=data)
    more = replace(policy, prune=replace(policy.prune, bn_batches=2))
    for column, p in (("test_top1_scored", policy), ("test_top1_bn2", more)):
        expected = evaluate(apply_policy(model, p, calibration=calibration).model, images, test.labels)["top1"]
        assert table[column].iloc[2] == pytest.approx(expected)
    with pytest.raises(SystemExit, match="no finished runs"):
        final_recalibration.main(["absent", *args[1:]])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        final_recalibration.main([*args[:2], str(tmp_path / "absent.pt"), *args[3:]])


def test_solve_precision_rebuilds_each_best_policy_both_ways_and_reproduces_the_recorded_score(tmp_path):
    import pandas as pd

    sys.path.insert(0, BENCHMARKS)
    import solve_precision

    _tiny_random_searches(tmp_path)
    args = ["tiny", "--checkpoint", str(tmp_path / "m.pt"), "--data-dir", "", "--results", str(tmp_path / "res"),
            "--repeats", "2", "--out", str(tmp_path / "out")]
    assert solve_precision.main(args) == 0
    table = pd.read_csv(tmp_path / "out" / "solve_precision.csv")
    assert len(table) == 6 and table.groupby("precision").size().to_dict() == {"float32": 3, "float64": 3}
    assert (table[table.scored_precision].precision == "float32").all()  # today's default scored the tiny runs
    record = json.loads((tmp_path / "out" / "solve_precision.json").read_text())
    assert record["max_abs_rebuilt_vs_recorded_search_top1"] == 0 and record["policies"] == 3
    assert (table.reconstruct_s > 0).all() and (table.prune_s >= table.reconstruct_s).all()
    with pytest.raises(SystemExit, match="already exists"):
        solve_precision.main(args)


def test_profile_pruning_prints_the_operators_of_the_recorded_recovery(tmp_path, capsys):
    sys.path.insert(0, BENCHMARKS)
    import profile_pruning

    _tiny_random_searches(tmp_path)
    policy = str(tmp_path / "res" / "tiny" / "random-seed0" / "best_policy.json")
    assert profile_pruning.main([policy, "--checkpoint", str(tmp_path / "m.pt"), "--data-dir", "", "--repeats", "1",
                                 "--solve-precision", "float64"]) == 0
    table = capsys.readouterr().out
    assert "aten::linalg_solve" in table or "aten::linalg_lu_factor_ex" in table  # the sequential solves ran
    with pytest.raises(SystemExit, match="not found"):
        profile_pruning.main([str(tmp_path / "none.json"), "--checkpoint", str(tmp_path / "m.pt"), "--data-dir", ""])


def test_compare_methods_checks_rebuilds_and_reselects_on_the_rest_of_the_holdout(tmp_path):
    """Two tiny random searches summarised: each best policy rebuilds to its recorded search score, and
    re-selection picks, among each run's top-k, the policy that scores best on the held-out rest."""
    import pandas as pd

    from amc import Policy, apply_policy, calibration_for
    from amc.data import load_splits, normalization
    from amc.evaluation import evaluate

    sys.path.insert(0, BENCHMARKS)
    import compare_methods

    torch_model, data = _tiny_random_searches(tmp_path)
    assert compare_methods.main(["tiny", "--checkpoint", str(tmp_path / "m.pt"), "--data-dir", "",
                                 "--results", str(tmp_path / "res"), "--reselect"]) == 0
    runs = pd.read_csv(tmp_path / "res" / "tiny" / "runs.csv")
    searched = runs[runs.method == "random"]
    assert len(searched) == 2 and (searched.rebuilt_gap == 0).all() and (searched.top_k == 5).all()
    rest = load_splits(data, ("holdout_rest",), image_size=16)["holdout_rest"]
    for _, r in searched.iterrows():
        scores = []
        for rank in range(1, 6):
            policy = Policy.load(tmp_path / "res" / "tiny" / f"random-seed{r.seed}" / "top_policies" / f"policy_{rank}.json")
            model = apply_policy(torch_model, policy, calibration=calibration_for(policy, data=data)).model
            scores.append(evaluate(model, normalization(data)(rest.images), rest.labels)["top1"])
        assert r.reselect_top1 == pytest.approx(max(scores))
        assert r.reselected_rank == scores.index(max(scores)) + 1  # ties go to the better search rank
    assert "top-k re-selected" in (tmp_path / "res" / "tiny" / "table.md").read_text()
    # --update reuses the rows of runs.csv for the runs it covers instead of rebuilding their models
    rows = pd.read_csv(tmp_path / "res" / "tiny" / "runs.csv")
    rows.loc[rows.method == "random", "test_top1"] = 0.123  # a marker a rebuild would overwrite
    rows.to_csv(tmp_path / "res" / "tiny" / "runs.csv", index=False)
    assert compare_methods.main(["tiny", "--checkpoint", str(tmp_path / "m.pt"), "--data-dir", "",
                                 "--results", str(tmp_path / "res"), "--reselect", "--update"]) == 0
    again = pd.read_csv(tmp_path / "res" / "tiny" / "runs.csv")
    assert (again[again.method == "random"].test_top1 == 0.123).all() and len(again) == len(rows)
    assert "tiny" in json.loads((tmp_path / "res" / "search-quality.json").read_text())
    # fine-tunes in 2 worker processes: every method's best seed, uniform and dense, each in its own folder
    tune = ["tiny", "--checkpoint", str(tmp_path / "m.pt"), "--data-dir", "", "--results", str(tmp_path / "res"),
            "--update", "--finetune-epochs", "1", "--jobs", "2"]
    assert compare_methods.main(tune) == 0
    models = tmp_path / "res" / "tiny" / "models"
    searched = again[again.method == "random"]
    best_seeds = searched[searched.search_reward == searched.search_reward.max()].seed
    folders = {p.name for p in models.iterdir()}
    assert len(folders) == 3 and {"dense-ft1", "uniform-ft1"} < folders  # one seed of the method: its best
    assert folders - {"dense-ft1", "uniform-ft1"} <= {f"random-seed{s}-ft1" for s in best_seeds}
    tuned = pd.read_csv(tmp_path / "res" / "tiny" / "runs.csv").set_index("method").test_top1_finetuned
    for name, method in (("dense", "dense"), ("uniform", "uniform")):
        assert tuned[method] == pytest.approx(pd.read_csv(models / f"{name}-ft1" / "metrics.csv").val_top1.iloc[-1])
    # a rerun reads finished fine-tunes back instead of training again (a marker a new fine-tune would replace)
    metrics = pd.read_csv(models / "dense-ft1" / "metrics.csv")
    metrics.loc[0, "val_top1"] = 0.456
    metrics.to_csv(models / "dense-ft1" / "metrics.csv", index=False)
    assert compare_methods.main(tune) == 0
    summary = pd.read_csv(tmp_path / "res" / "tiny" / "summary.csv")
    assert summary.dense_finetuned.iloc[0] == pytest.approx(0.456)
    # a finished fine-tune of a run the rerun does not choose (here: the other seed) is read back too
    other = 1 - int((folders - {"dense-ft1", "uniform-ft1"}).pop()[len("random-seed")])
    (models / f"random-seed{other}-ft1").mkdir()
    metrics.loc[0, "val_top1"] = 0.789
    metrics.to_csv(models / f"random-seed{other}-ft1" / "metrics.csv", index=False)
    assert compare_methods.main(tune) == 0
    rows = pd.read_csv(tmp_path / "res" / "tiny" / "runs.csv")
    assert rows[(rows.method == "random") & (rows.seed == other)].test_top1_finetuned.iloc[0] == pytest.approx(0.789)
    folders.add(f"random-seed{other}-ft1")
    # --distill 0 0.5: the plain fine-tunes are read back, the distilled ones get their own folders and columns
    assert compare_methods.main([*tune, "--distill", "0", "0.5"]) == 0
    distilled = {p.name for p in models.iterdir()} - folders
    assert len(distilled) == 2 and "uniform-ft1-kd0.5" in distilled
    runs = pd.read_csv(tmp_path / "res" / "tiny" / "runs.csv").set_index("method")
    assert runs.test_top1_finetuned["dense"] == pytest.approx(0.456)  # the teacher is not distilled
    assert pd.isna(runs["test_top1_finetuned_kd0.5"]["dense"])
    assert runs["test_top1_finetuned_kd0.5"]["uniform"] == pytest.approx(
        pd.read_csv(models / "uniform-ft1-kd0.5" / "metrics.csv").val_top1.iloc[-1])
    assert "distilled from dense (weight 0.5)" in (tmp_path / "res" / "tiny" / "table.md").read_text()
    assert "test_top1_finetuned_kd0.5" in json.loads((tmp_path / "res" / "search-quality.json").read_text())["tiny"][
        "methods"]["uniform"]
    with pytest.raises(SystemExit, match="--distill takes distinct weights in"):
        compare_methods.main([*tune, "--distill", "1.5"])
    with pytest.raises(SystemExit, match="--distill applies to fine-tuning"):
        compare_methods.main([*tune[:-4], "--distill", "0.5"])
    with pytest.raises(SystemExit, match="--finetune takes best, all or a whole number"):
        compare_methods.main([*tune, "--finetune", "0"])
    assert compare_methods.finetune_count("2") == 2 and compare_methods.finetune_count("best") == 1
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        compare_methods.main([*tune[:-1], "0"])
    with pytest.raises(SystemExit, match="no finished runs of --finetune-methods ddpg in"):
        compare_methods.main([*tune, "--finetune-methods", "random", "ddpg"])  # refused before any rebuild
