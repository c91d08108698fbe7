import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import amc_envs
from amc.calibration import CalibrationSet
from amc.config import DataConfig, EnvConfig
from amc.cost import Budget
from amc.errors import AmcError
from amc.models import ModelSpec, build_model
from amc.structure import trace
from amc.unstructured import prune_unstructured
from amc_envs import ChannelPruningEnv, PruningTask
from amc_envs.observation import FEATURES, Observer
from amc.data import synthetic_images

from .nets import GroupedNet


@pytest.fixture(scope="module")
def task():
    return PruningTask.tiny(seed=0)


def run_episode(env, actions):
    env.reset(seed=0)
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(np.array([a], dtype=np.float32))
        assert env.observation_space.contains(obs)
        if terminated:
            return reward, terminated, truncated, info
    raise AssertionError("episode did not end")


def test_env_passes_gymnasium_and_sb3_checkers(task):
    env = ChannelPruningEnv(task)
    check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=False)
    made = gym.make(amc_envs.ENV_ID, task=task)
    assert isinstance(made.unwrapped, ChannelPruningEnv)


def test_last_step_terminates_with_a_verified_result(task):
    env = ChannelPruningEnv(task, EnvConfig(target=0.5))
    reward, terminated, truncated, info = run_episode(env, [1.0] * len(env.groups))
    result = info["result"]
    assert terminated and not truncated
    assert result.cost_ratio["macs"] <= 0.5 + 1e-9 and 0 < result.cost_ratio["params"] < 1
    assert reward == pytest.approx(-(1 - result.metrics["top1"])) == result.reward
    assert set(result.timings) == {"prune", "reconstruct", "bn_recalibration", "evaluate"}
    assert result.requested == {g.name: 1.0 for g in env.groups}  # what the agent asked, before the clamp
    assert any(result.executed[g.name] < 1 for g in env.groups)
    assert all(len(result.kept[n]) == result.keep[n] for n in result.kept)


def test_scale_budget_rule_executes_the_scaled_actions_and_meets_the_budget(task):
    clamp = ChannelPruningEnv(task, EnvConfig(target=0.5))
    scale = ChannelPruningEnv(task, EnvConfig(target=0.5, budget_rule="scale"))
    actions = [1.0] + [0.5] * (len(scale.groups) - 1)
    _, _, _, info = run_episode(scale, actions)
    result = info["result"]
    assert result.keep == scale.budget.scaled(dict(zip([g.name for g in scale.groups], actions)))[1]
    assert result.cost_ratio["macs"] <= 0.5 + 1e-9
    assert result.requested[scale.groups[0].name] == 1.0
    _, _, _, clamped = run_episode(clamp, actions)
    assert clamped["result"].keep != result.keep  # the rule is not ignored
    with pytest.raises(AmcError, match="budget_rule"):
        ChannelPruningEnv(task, EnvConfig(budget_rule="squeeze"))


def test_env_is_deterministic(task):
    env = ChannelPruningEnv(task)
    actions = list(np.linspace(0.1, 0.9, len(env.groups)))
    a, b = (run_episode(env, actions)[3]["result"] for _ in range(2))
    assert (a.keep, a.kept, a.metrics, a.reward) == (b.keep, b.kept, b.metrics, b.reward)


def test_every_observation_feature_carries_information():
    """Over the groups of a network with varied layers, no feature is constant (a feature stuck at 0 fails)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 5, 2, 2),
                              torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, 2, 1),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    rows = _observations(trace(net, (3, 16, 16)), "macs")
    assert rows.shape[1] == len(FEATURES) == 11
    for i, name in enumerate(FEATURES):
        assert rows[:, i].max() > rows[:, i].min(), f"feature {name} is constant"
    assert rows[0, FEATURES.index("previous_action")] == 1 and rows[0, FEATURES.index("reduced")] == 0
    assert (rows >= 0).all() and (rows <= 1).all()


def _observations(graph, cost):
    budget = Budget(graph, cost, 0.5)
    observer = Observer(budget)
    keep, rows = {}, []
    for t, g in enumerate(budget.groups):
        rows.append(observer(t, keep))
        keep[g.name] = budget.count_for(g.name, 0.3 + 0.6 * (t % 2))
    return np.array(rows)


def test_observation_cost_features_follow_the_budget_cost():
    graph = trace(build_model(ModelSpec("resnet20")), (3, 32, 32))
    macs, params = _observations(graph, "macs"), _observations(graph, "params")
    for name in ("cost", "reduced", "rest"):
        i = FEATURES.index(name)
        assert not np.allclose(macs[:, i], params[:, i]), name


def test_env_on_grouped_convs_keeps_counts_per_block():
    torch.manual_seed(0)
    data = synthetic_images(64, 5, 8, seed=0)
    norm_cfg = DataConfig()
    task = PruningTask.build(GroupedNet().eval(), ModelSpec("grouped", 5, (3, 8, 8)), data.subset(torch.arange(32)),
                             CalibrationSet(torch.randn(32, 3, 8, 8)), norm_cfg)
    env = ChannelPruningEnv(task, EnvConfig(target=0.6, lbound=0.1))
    assert [g.blocks for g in env.groups] == [2, 4, 4]  # stem (+ expand via the add), reduce, grouped
    for actions in ([0.3, 0.37, 0.52], [0.9, 0.1, 0.6]):
        result = run_episode(env, actions)[3]["result"]  # measured costs are checked against the accounting inside
        assert result.cost_ratio["macs"] <= 0.6 + 1e-9
        assert all(result.keep[g.name] % g.blocks == 0 for g in env.groups)


def test_unreachable_target_and_bad_options_are_clear(task):
    with pytest.raises(AmcError, match="unreachable"):
        ChannelPruningEnv(task, EnvConfig(target=0.01))
    with pytest.raises(AmcError, match="bad environment option"):
        ChannelPruningEnv(task, EnvConfig(mode="greedy"))
    with pytest.raises(AmcError, match="unknown cost"):
        ChannelPruningEnv(task, EnvConfig(cost="joules"))


def test_reward_formulas(task):
    constrained = ChannelPruningEnv(task, EnvConfig(mode="constrained", reward_scale=2.0))
    accuracy = ChannelPruningEnv(task, EnvConfig(mode="accuracy"))
    assert constrained.reward_of(0.75, 1e6) == pytest.approx(-0.5)
    assert accuracy.reward_of(0.75, 1e6) == pytest.approx(-0.25 * math.log(1e6))
    reward, _, _, info = run_episode(accuracy, [0.2] * len(accuracy.groups))
    result = info["result"]
    assert result.cost_ratio["macs"] < 0.5  # no clamp needed: lbound everywhere
    dense = accuracy.budget.dense
    assert reward == pytest.approx(-(1 - result.metrics["top1"]) * math.log(result.cost_ratio["macs"] * dense))


# ---------------------------------------------------------------- fine-grained (weight) environment
@pytest.fixture(scope="module")
def weight_task():
    return PruningTask.tiny(seed=0, granularity="weight")


def test_weight_env_passes_checkers_and_executes_exact_weight_counts(weight_task):
    cfg = EnvConfig(cost="params", target=0.4, lbound=0.05)
    env = amc_envs.WeightPruningEnv(weight_task, cfg)
    check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=False)
    assert isinstance(gym.make(amc_envs.WEIGHT_ENV_ID, task=weight_task, cfg=cfg).unwrapped, amc_envs.WeightPruningEnv)
    actions = [0.9, 0.1] * len(env.groups)
    reward, terminated, _, info = run_episode(env, actions[:len(env.groups)])
    result = info["result"]
    sizes = {g.name: g.size for g in env.groups}
    zeros = {}
    masked = prune_unstructured(weight_task.model, sparsities={n: 1 - k / sizes[n] for n, k in result.keep.items()})
    for name, m in masked.named_modules():
        if name in sizes:
            zeros[name] = int((m.weight == 0).sum())
    assert all(sizes[n] - zeros[n] == result.keep[n] for n in sizes)  # exactly the executed counts are kept
    assert result.cost_ratio["params"] <= 0.4 + 1e-9 and terminated
    assert reward == pytest.approx(-(1 - result.metrics["top1"]))


def test_weight_budget_rules_meet_the_params_target(weight_task):
    from amc.cost import WeightBudget
    budget = WeightBudget(weight_task.model, 0.3, lbound=0.05)
    rng = np.random.default_rng(0)
    for _ in range(20):
        actions = rng.random(len(budget.groups))
        keep = {}
        for g, a in zip(budget.groups, actions):
            keep[g.name] = min(budget.count_for(g.name, a), budget.max_count(g.name, keep))
        assert budget.ratio(keep) <= 0.3 + 1e-9
        _, scaled = budget.scaled({g.name: a for g, a in zip(budget.groups, actions)})
        assert budget.ratio(scaled) <= 0.3 + 1e-9 and budget.ratio(scaled) > 0.29  # spent, not wasted
    with pytest.raises(AmcError, match="unreachable.*lower --lbound"):
        WeightBudget(weight_task.model, 0.1, lbound=0.2)
    accuracy = amc_envs.WeightPruningEnv(weight_task, EnvConfig(cost="params", mode="accuracy", lbound=0.05))
    reward, _, _, info = run_episode(accuracy, [0.5] * len(accuracy.groups))
    r = info["result"]
    params = r.cost_ratio["params"] * accuracy.budget.dense
    assert reward == pytest.approx(-(1 - r.metrics["top1"]) * math.log(params), rel=1e-6)
    with pytest.raises(AmcError, match="budgeted in parameters"):
        amc_envs.WeightPruningEnv(weight_task, EnvConfig(cost="macs"))
