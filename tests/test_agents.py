import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from amc.config import AgentConfig, DataConfig, EnvConfig, SearchConfig, replace
from amc.errors import AmcError
from amc_agents import RunStore, SB3Agent, run_search
from amc_agents.buffer import EpisodeRewardReplayBuffer
from amc_agents.noise import TruncatedNormalNoise
from amc_agents.report import write_report
from amc_envs import ChannelPruningEnv, PruningTask


@pytest.fixture(scope="module")
def task():
    return PruningTask.tiny(seed=0)


def test_noise_decays_after_warmup_and_truncates():
    noise = TruncatedNormalNoise.from_ratio_units(0.5, decay=0.95, warmup_episodes=3, seed=0)
    sigmas = []
    for _ in range(6):
        sigmas.append(noise.sigma)
        noise.reset()
    assert sigmas[:4] == [1.0] * 4 and sigmas[4] == pytest.approx(0.95) and sigmas[5] == pytest.approx(0.95 ** 2)
    draws = np.array([noise.perturb(np.array([0.9]))[0] for _ in range(500)])
    assert draws.min() >= -1 and draws.max() <= 1 and abs(np.median(draws) - 0.9) < 0.5
    state = noise.get_state()
    a = noise.perturb(np.array([0.0]))
    noise.set_state(state)
    assert noise.perturb(np.array([0.0])) == a


def test_buffer_stores_final_reward_executed_action_and_baseline():
    buf = EpisodeRewardReplayBuffer(10, spaces.Box(0, 1, (2,)), spaces.Box(0, 1, (1,)), device="cpu")
    for t in range(3):
        done = np.array([t == 2])
        buf.add(np.zeros((1, 2)), np.zeros((1, 2)), np.array([[0.9]]), np.array([-0.7 if t == 2 else 0.0]), done,
                [{"executed_action": 0.25}])
        assert buf.pos == (3 if t == 2 else 0)  # nothing stored before the episode ends
    assert np.allclose(buf.rewards[:3], -0.7) and np.allclose(buf.actions[:3], -0.5)  # 0.25 in [-1, 1] units
    sample = buf.sample(3)
    assert buf.baseline == pytest.approx(-0.7) and torch.allclose(sample.rewards, torch.zeros(3, 1))


@pytest.mark.parametrize("algorithm", ["ddpg", "td3", "sac"])
def test_sb3_agents_use_both_learning_rates(task, algorithm):
    """The critic's learning rate is its own (not the actor's), and changing it changes what the critic learns;
    both optimisers use multi-tensor Adam."""
    env = ChannelPruningEnv(task, EnvConfig())
    critics = {}
    for critic_lr in (1e-3, 3e-2):
        torch.manual_seed(0)
        cfg = AgentConfig(algorithm=algorithm, actor_lr=1e-4, critic_lr=critic_lr, warmup_episodes=1, batch_size=4,
                          hidden=(16, 16))
        agent = SB3Agent(env, cfg, seed=0)
        agent.run(env, 3, on_episode=lambda r: None, before_episode=lambda: 0)
        assert agent.model.critic.optimizer.param_groups[0]["lr"] == pytest.approx(critic_lr)
        assert agent.model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
        # one multi-tensor Adam update per parameter list (torch's CPU default is a loop over tensors)
        assert agent.model.actor.optimizer.defaults["foreach"] and agent.model.critic.optimizer.defaults["foreach"]
        critics[critic_lr] = torch.cat([p.detach().flatten() for p in agent.model.critic.parameters()])
    assert not torch.allclose(critics[1e-3], critics[3e-2])


def test_search_writes_results_and_report(tmp_path, task):
    cfg = SearchConfig(agent=AgentConfig(warmup_episodes=2, batch_size=8, hidden=(32, 32)), episodes=6)
    best, store = run_search(cfg, tmp_path, task=task)
    episodes = store.episodes()
    assert episodes.episode.tolist() == list(range(1, 7))
    assert (episodes.macs_ratio <= 0.5 + 1e-9).all()
    assert episodes.phase.tolist() == ["warm-up"] * 2 + ["explore"] * 4
    policy = json.loads((tmp_path / "best_policy.json").read_text())
    assert policy["metrics"]["reward"] == best.reward == episodes.reward.max()
    assert len(list((tmp_path / "top_policies").glob("*.json"))) == 5
    ranked = episodes.sort_values(["reward", "episode"], ascending=[False, True]).episode.tolist()[:5]
    assert [json.loads((tmp_path / "top_policies" / f"policy_{k}.json").read_text())["metrics"]["episode"]
            for k in range(1, 6)] == ranked  # each rank holds its episode although only changed ranks are rewritten
    uniform = store.baselines()["uniform"]
    assert uniform["macs_ratio"] <= 0.5 and (tmp_path / "uniform_policy.json").is_file()
    assert RunStore(tmp_path).config() == cfg  # the resolved config is stored
    saved = (tmp_path / "config.yaml").read_text()
    assert "reconstruction: sequential" in saved  # a run written before that field existed resumes with AMC's
    (tmp_path / "config.yaml").write_text(saved.replace("  reconstruction: sequential\n", ""))
    assert RunStore(tmp_path).config().prune.reconstruction == "consumers"
    (tmp_path / "config.yaml").write_text(saved.replace("  solve_precision: float32\n", ""))
    assert RunStore(tmp_path).config().prune.solve_precision == "float64"  # as sequential runs were scored before
    (tmp_path / "config.yaml").write_text(saved)
    for f in ("reward.png", "accuracy_vs_macs.png", "best_policy_ratios.png", "summary.md"):
        (tmp_path / f).unlink(missing_ok=True)
    paths = write_report(tmp_path)
    assert all(Path(p).is_file() for p in paths)
    assert "best reward" in (tmp_path / "summary.md").read_text()
    with pytest.raises(AmcError, match="already holds a search"):
        run_search(cfg, tmp_path, task=task)


def test_resume_refuses_changed_settings_and_continues(tmp_path, task):
    cfg = SearchConfig(agent=AgentConfig(algorithm="random"), episodes=3, seed=2)
    run_search(cfg, tmp_path, task=task)
    with pytest.raises(AmcError, match="env.target: 0.5 -> 0.4"):
        run_search(SearchConfig(agent=cfg.agent, episodes=5, seed=2, env=EnvConfig(target=0.4)), tmp_path, resume=True,
                   task=task)
    best, store = run_search(SearchConfig(agent=cfg.agent, episodes=5, seed=2), tmp_path, resume=True, task=task)
    assert store.episodes().episode.tolist() == [1, 2, 3, 4, 5] and store.config().episodes == 5
    with pytest.raises(AmcError, match="more than --episodes 4"):
        run_search(SearchConfig(agent=cfg.agent, episodes=4, seed=2), tmp_path, resume=True, task=task)


def test_tpe_searcher_resumes_exactly_and_starts_with_random_trials(tmp_path, task):
    cfg = SearchConfig(agent=AgentConfig(algorithm="tpe", warmup_episodes=3), episodes=7, seed=1)
    run_search(cfg, tmp_path / "straight", task=task)
    straight = RunStore(tmp_path / "straight").episodes()
    assert straight.phase.tolist() == ["random"] * 3 + ["tpe"] * 4
    assert (straight.macs_ratio <= 0.5 + 1e-9).all()
    run_search(SearchConfig(agent=cfg.agent, episodes=4, seed=1), tmp_path / "split", task=task)
    run_search(cfg, tmp_path / "split", resume=True, task=task)
    split = RunStore(tmp_path / "split").episodes()
    ratios = [c for c in straight.columns if c.startswith("ratio:")]
    assert split[ratios].values.tolist() == straight[ratios].values.tolist()  # the study (sampler too) was restored
    assert split.reward.tolist() == straight.reward.tolist()
    other = RunStore(tmp_path / "straight").episodes()
    run_search(SearchConfig(agent=cfg.agent, episodes=7, seed=2), tmp_path / "seed2", task=task)
    assert RunStore(tmp_path / "seed2").episodes()[ratios].values.tolist() != other[ratios].values.tolist()  # seeded


def test_weight_search_policy_rebuilds_the_scored_model_with_prune_unstructured(tmp_path):
    from amc.config import PruneConfig
    from amc.policy import Policy
    from amc.unstructured import prune_unstructured

    task = PruningTask.tiny(seed=0, granularity="weight")
    cfg = SearchConfig(prune=PruneConfig(granularity="weight"), env=EnvConfig(cost="params", target=0.3, lbound=0.05),
                       agent=AgentConfig(algorithm="random"), episodes=4, seed=3)
    best, store = run_search(cfg, tmp_path, task=task)
    assert (store.episodes().params_ratio <= 0.3 + 1e-9).all()
    policy = Policy.load(tmp_path / "best_policy.json")
    assert policy.granularity == "weight" and policy.prune.bn_batches == 0 and not policy.prune.reconstruct
    rebuilt = prune_unstructured(task.model, sparsities=policy.sparsities)
    assert task.score(rebuilt)["top1"] == policy.metrics["top1"] == best.result.metrics["top1"]
    write_report(tmp_path)
    assert (tmp_path / "accuracy_vs_params.png").is_file() and "params ratio" in (tmp_path / "summary.md").read_text()
    with pytest.raises(AmcError, match="give --cost params"):
        run_search(SearchConfig(prune=PruneConfig(granularity="weight"), episodes=2), tmp_path / "macs", task=task)


def test_a_second_search_of_the_same_model_and_data_reuses_the_cached_baseline(tmp_path, monkeypatch):
    from amc.config import CalibrationConfig, DataConfig, ModelConfig
    from amc.io import save_model
    from amc.models import ModelSpec, build_model

    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    torch.manual_seed(0)
    save_model(tmp_path / "m.pt", build_model(spec), spec)
    cfg = SearchConfig(model=ModelConfig("resnet8", str(tmp_path / "m.pt")),
                       data=DataConfig(synthetic_size=(200, 10), holdout=100, search_images=100, image_size=16),
                       calibration=CalibrationConfig(images=100, batch_size=50), agent=AgentConfig(algorithm="random"),
                       episodes=2, cache_dir=str(tmp_path / "cache"))
    run_search(cfg, tmp_path / "a")
    evaluated = []
    real = ChannelPruningEnv.evaluate
    monkeypatch.setattr(ChannelPruningEnv, "evaluate", lambda self, *a, **k: evaluated.append(1) or real(self, *a, **k))
    run_search(cfg, tmp_path / "b")
    assert len(evaluated) == 2  # the two episodes; the uniform baseline came from the cache
    a, b = (RunStore(tmp_path / d).baselines()["uniform"] for d in "ab")
    assert a == b and (tmp_path / "b" / "uniform_policy.json").is_file()
    run_search(SearchConfig(**{**cfg.__dict__, "cache_dir": None}), tmp_path / "c")
    assert len(evaluated) == 5  # without a cache the baseline is scored again
    (tmp_path / "file").write_text("")
    with pytest.raises(AmcError, match="cache folder .* cannot be created"):
        run_search(SearchConfig(**{**cfg.__dict__, "cache_dir": str(tmp_path / "file" / "sub")}), tmp_path / "d")
    assert not (tmp_path / "d").exists()


def saved_resnet8(path: Path):
    """A seeded random ResNet-8 for 16-px images, saved as a checkpoint at ``path``."""
    from amc.io import save_model
    from amc.models import ModelSpec, build_model

    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    torch.manual_seed(0)
    model = build_model(spec)
    save_model(path, model, spec)
    return model


def rebuilt_metrics(model, policy_path: Path, data, split: str) -> dict:
    """Metrics on ``split`` of the model that ``amc.apply_policy`` rebuilds from ``policy_path`` (no cache)."""
    from amc import Policy, apply_policy, calibration_for
    from amc.data import load_splits, normalization
    from amc.evaluation import evaluate

    policy = Policy.load(policy_path)
    rebuilt = apply_policy(model, policy, calibration=calibration_for(policy, data=data)).model
    part = load_splits(data, (split,), image_size=16)[split]
    return evaluate(rebuilt, normalization(data)(part.images), part.labels)


def test_a_policy_found_with_a_shared_cache_rebuilds_the_scored_model_after_the_batch_size_changed(tmp_path):
    """A cache filled by a search with other calibration batches must not serve its statistics: the best
    policy of the second search, applied without any cache, scores exactly what the search recorded."""
    from amc import Policy
    from amc.config import CalibrationConfig, ModelConfig

    model = saved_resnet8(tmp_path / "m.pt")
    data = DataConfig(synthetic_size=(200, 10), holdout=100, search_images=100, image_size=16)
    cfg = SearchConfig(model=ModelConfig("resnet8", str(tmp_path / "m.pt")), data=data,
                       calibration=CalibrationConfig(images=100, batch_size=50), agent=AgentConfig(algorithm="random"),
                       episodes=3, cache_dir=str(tmp_path / "cache"))
    run_search(cfg, tmp_path / "a")
    run_search(SearchConfig(**{**cfg.__dict__, "calibration": CalibrationConfig(images=100, batch_size=20)}), tmp_path / "b")
    loss = rebuilt_metrics(model, tmp_path / "b" / "best_policy.json", data, "search")["loss"]
    assert loss == pytest.approx(Policy.load(tmp_path / "b" / "best_policy.json").metrics["loss"], abs=1e-4)


def test_reselect_picks_the_top_k_policy_that_scores_best_on_the_held_out_rest(tmp_path):
    """--reselect: each top-k policy is scored on the holdout images the search never saw (the same model its
    policy file rebuilds), and the best there becomes best_policy.json; a finished run can be resumed to do it."""
    import pandas as pd

    from amc.config import CalibrationConfig, ModelConfig

    model = saved_resnet8(tmp_path / "m.pt")
    data = DataConfig(synthetic_size=(240, 10), holdout=140, search_images=40, image_size=16)
    cfg = SearchConfig(model=ModelConfig("resnet8", str(tmp_path / "m.pt")), data=data,
                       calibration=CalibrationConfig(images=60, batch_size=30), agent=AgentConfig(algorithm="random"),
                       episodes=8, cache_dir=None)
    run_search(cfg, tmp_path / "plain")
    searched_best = json.loads((tmp_path / "plain" / "best_policy.json").read_text())["metrics"]
    best, store = run_search(replace(cfg, reselect=True), tmp_path / "plain", resume=True)  # a finished run
    assert len(store.episodes()) == 8  # no episode added or scored again
    table = pd.read_csv(tmp_path / "plain" / "reselection.csv")
    assert table.search_rank.tolist() == [1, 2, 3, 4, 5] and table.search_reward.is_monotonic_decreasing
    for _, row in table.iterrows():  # held-out scores are those of the models the policy files rebuild
        path = tmp_path / "plain" / "top_policies" / f"policy_{int(row.search_rank)}.json"
        assert rebuilt_metrics(model, path, data, "holdout_rest")["top1"] == pytest.approx(row.holdout_rest_top1, abs=1e-6)
    winner = table.loc[table.holdout_rest_reward.idxmax()]  # idxmax: the first (best search rank) among ties
    chosen = json.loads((tmp_path / "plain" / "best_policy.json").read_text())["metrics"]
    assert chosen["episode"] == winner.episode == best.episode
    assert chosen["reselected"]["search_rank"] == winner.search_rank and chosen["reselected"]["images"] == 100
    assert chosen["reselected"]["reward"] == pytest.approx(winner.holdout_rest_reward)
    assert searched_best["episode"] == table.episode[0] and "reselected" not in searched_best
    write_report(tmp_path / "plain")
    assert "re-selected on 100 held-out images" in (tmp_path / "plain" / "summary.md").read_text()
    run_search(cfg, tmp_path / "plain", resume=True)  # --no-reselect: back to the search's best, no stale table
    assert json.loads((tmp_path / "plain" / "best_policy.json").read_text())["metrics"] == searched_best
    assert not (tmp_path / "plain" / "reselection.csv").exists()


@pytest.mark.parametrize("change, message", [
    ({"data": DataConfig(synthetic_size=(200, 10), holdout=100, search_images=100, image_size=16)},
     "needs held-out images outside the search split"),
    ({"env": EnvConfig(evaluator="json:dumps")}, "does not use"),
])
def test_reselect_refuses_a_run_without_held_out_images_to_score_before_starting(tmp_path, change, message):
    cfg = SearchConfig(data=DataConfig(synthetic_size=(200, 10), holdout=100, search_images=50, image_size=16),
                       agent=AgentConfig(algorithm="random"), episodes=2, reselect=True)
    with pytest.raises(AmcError, match=message):
        run_search(replace(cfg, **change), tmp_path / "run")
    assert not (tmp_path / "run").exists()
