import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings, strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from agents.buffer import EpisodeRewardReplayBuffer
from agents.noise import TruncatedNormalNoise
from agents.report import write_report
from agents.search import SearchConfig, SearchRun
from amc.errors import AmcError
from amc.flops import flops_of
from envs import ChannelPruningEnv, PruningTask

ROOT = Path(__file__).resolve().parents[1]
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


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
    made = gym.make(envs.ENV_ID, task=task)
    assert isinstance(made.unwrapped, ChannelPruningEnv)


def test_last_step_terminates_with_verified_flops(task):
    env = ChannelPruningEnv(task, target=0.5)
    reward, terminated, truncated, info = run_episode(env, [1.0] * len(env.groups))
    assert terminated and not truncated
    assert info["flops_ratio"] <= 0.5 + 1e-9
    assert reward == pytest.approx(-(1 - info["top1"]))
    assert set(info["timings"]) == {"prune", "reconstruct", "bn_recalibration", "evaluate"}


def test_env_is_deterministic(task):
    env = ChannelPruningEnv(task)
    actions = list(np.linspace(0.1, 0.9, len(env.groups)))
    assert run_episode(env, actions)[3]["top1"] == run_episode(env, actions)[3]["top1"]


def test_env_on_grouped_convs_keeps_counts_per_block():
    from amc.data import DataConfig, synthetic_images
    from amc.models import ModelSpec

    from .test_engine import GroupedNet

    torch.manual_seed(0)
    data = synthetic_images(64, 5, 8, seed=0)
    task = PruningTask.build(GroupedNet().eval(), ModelSpec("grouped", 5, (3, 8, 8)), data.subset(torch.arange(32)),
                             data.subset(torch.arange(32, 64)), DataConfig().normalization, calibration_images=32)
    env = ChannelPruningEnv(task, target=0.6, lbound=0.1)
    assert [g.blocks for g in env.groups] == [2, 4, 4]  # stem (+ expand via the add), reduce, grouped
    for actions in ([0.3, 0.37, 0.52], [0.9, 0.1, 0.6]):
        info = run_episode(env, actions)[3]  # measured FLOPs are checked against the accounting inside
        assert info["flops_ratio"] <= 0.6 + 1e-9
        assert all(n % g.blocks == 0 for n, g in zip(info["counts"].values(), env.groups))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=7, max_size=7), st.sampled_from([0.3, 0.5, 0.7]), st.sampled_from([1, 4]))
def test_clamp_always_meets_budget(actions, target, round_to):
    task = _TASK
    env = ChannelPruningEnv(task, target=target, round_to=round_to)
    env.reset(seed=0)
    counts = {}
    for t, g in enumerate(env.groups):
        env.step(np.array([actions[t % len(actions)]], dtype=np.float32)) if t < len(env.groups) - 1 else None
    # last step without building the model: apply the clamp directly
    last = env.groups[-1]
    counts = dict(env._counts)
    counts[last.space] = env.max_count(len(env.groups) - 1)
    assert flops_of(env.graph, counts) <= target * env.dense_cost + 1e-6


_TASK = PruningTask.tiny(seed=1)


def test_unreachable_target_is_clear(task):
    with pytest.raises(AmcError, match="unreachable"):
        ChannelPruningEnv(task, target=0.01)


def test_reward_formulas(task):
    constrained = ChannelPruningEnv(task, mode="constrained", reward_scale=2.0)
    accuracy = ChannelPruningEnv(task, mode="accuracy")
    assert constrained.reward_of(0.75, 1e6) == pytest.approx(-0.5)
    assert accuracy.reward_of(0.75, 1e6) == pytest.approx(-0.25 * math.log(1e6))
    reward, _, _, info = run_episode(accuracy, [0.2] * len(accuracy.groups))
    assert info["flops_ratio"] < 0.5  # no clamp needed: lbound everywhere
    assert reward == pytest.approx(-(1 - info["top1"]) * math.log(info["flops_ratio"] * accuracy.dense_flops))


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
    from gymnasium import spaces

    buf = EpisodeRewardReplayBuffer(10, spaces.Box(0, 1, (2,)), spaces.Box(0, 1, (1,)), device="cpu")
    for t in range(3):
        done = np.array([t == 2])
        buf.add(np.zeros((1, 2)), np.zeros((1, 2)), np.array([[0.9]]), np.array([-0.7 if t == 2 else 0.0]), done,
                [{"executed_action": 0.25}])
        assert buf.pos == (3 if t == 2 else 0)  # nothing stored before the episode ends
    assert np.allclose(buf.rewards[:3], -0.7) and np.allclose(buf.actions[:3], -0.5)  # 0.25 in [-1, 1] units
    sample = buf.sample(3)
    assert buf.baseline == pytest.approx(-0.7) and torch.allclose(sample.rewards, torch.zeros(3, 1))


def test_search_run_writes_results_and_report(tmp_path, task):
    cfg = SearchConfig(model="resnet8", episodes=6, warmup_episodes=2, batch_size=8, out=str(tmp_path))
    best = SearchRun(cfg, tmp_path, task=task, progress=False).run()
    episodes = pd.read_csv(tmp_path / "episodes.csv")
    assert episodes.episode.tolist() == list(range(1, 7))
    assert (episodes.flops_ratio <= 0.5 + 1e-9).all()
    assert episodes.phase.tolist() == ["warm-up"] * 2 + ["explore"] * 4
    policy = json.loads((tmp_path / "best_policy.json").read_text())
    assert policy["metrics"]["reward"] == best["reward"] == episodes.reward.max()
    for f in ("reward.png", "accuracy_vs_flops.png", "best_policy_ratios.png", "summary.md"):
        (tmp_path / f).unlink(missing_ok=True)
    paths = write_report(tmp_path)
    assert all(Path(p).is_file() for p in paths)
    assert "best reward" in (tmp_path / "summary.md").read_text()


def _search_cmd(out, *extra):
    return [sys.executable, "-m", "amc.cli", "search", "--model", "resnet8", "--input-shape", "3", "16", "16",
            "--dataset", "synthetic", "--search-size", "200", "--episodes", "14", "--warmup-episodes", "4",
            "--batch-size", "8", "--threads", "1", "--seed", "5", "--bn-batches", "1", "--calibration-images", "100",
            "--quiet", "--out", str(out), *extra]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_search_cmd(full), check=True, env=env, cwd=ROOT, capture_output=True)
    proc = subprocess.Popen(_search_cmd(killed), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        csv = killed / "episodes.csv"
        if csv.is_file() and len(csv.read_text().splitlines()) >= 8:  # header + 7 episodes: past warm-up
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(pd.read_csv(killed / "episodes.csv")) < 14
    resumed = subprocess.run([sys.executable, "-m", "amc.cli", "search", "--resume", str(killed), "--quiet"],
                             env=env, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = pd.read_csv(full / "episodes.csv"), pd.read_csv(killed / "episodes.csv")
    assert b.episode.tolist() == list(range(1, 15))
    cols = ["reward", "top1", "flops_ratio"] + [c for c in a.columns if c.startswith("ratio:")]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    pa, pb = (json.loads((d / "best_policy.json").read_text()) for d in (full, killed))
    assert pa["groups"] == pb["groups"]


def test_cli_errors_are_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cases = [["evaluate", "resnet21"], ["evaluate", "resnet20", "--checkpoint", str(tmp_path / "none.pt")],
             ["evaluate", "resnet20", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nodata")],
             ["inspect", "resnet20", "--exclude", "layr1.*"],
             ["uniform", "resnet20", "--target", "0.01", "--out", str(tmp_path / "p.json")],
             ["search", "--resume", str(tmp_path)]]
    for args in cases:
        r = subprocess.run([sys.executable, "-m", "amc.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("amc: error: "), (args, r.stderr)


def test_apply_policy_to_other_model_fails_and_matching_one_works(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "amc.cli", *a], env=env, cwd=ROOT, capture_output=True, text=True)
    from amc.models import ModelSpec, build_model, save_model
    save_model(tmp_path / "r20.pt", build_model(ModelSpec("resnet20")), ModelSpec("resnet20"))
    r = run("uniform", "resnet20", "--target", "0.5", "--out", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    r = run("apply", str(tmp_path / "p.json"), "resnet32", "--out", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and "policy does not match the model" in r.stderr
    r = run("apply", str(tmp_path / "p.json"), "--checkpoint", str(tmp_path / "r20.pt"), "--out", str(tmp_path / "c.pt"),
            *(["--onnx", str(tmp_path / "c.onnx")] if HAVE_ORT else []))
    assert r.returncode == 0, r.stderr
    if HAVE_ORT:  # the exported graph runs in ONNX Runtime and matches torch
        assert "ONNX Runtime matches torch" in r.stdout and (tmp_path / "c.onnx").stat().st_size > 10_000
    # a fresh process loads the compact model without the pruning code re-pruning it
    code = ("import torch; from amc.models import open_model; m,s,e=open_model(None, %r); "
            "from amc.flops import measure; print(measure(m,(3,32,32))['flops'])") % str(tmp_path / "c.pt")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    dense = 40_551_040
    assert 0.49 * dense <= int(out.stdout.strip()) <= 0.5 * dense


def test_episode_speed_benchmark_writes_its_record(tmp_path):
    """The benchmark script runs a real short search and relates episode time to the scoring floor."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import episode_speed

    record = tmp_path / "speed.json"
    episode_speed.main(["--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset", "synthetic",
                        "--search-size", "64", "--calibration-images", "64", "--episodes", "4", "--warmup-episodes", "2",
                        "--repeats", "2", "--quiet", "--record", str(record)])
    figures = json.loads(record.read_text())
    assert figures["episodes_summarised"] == 2 and figures["search_images"] == 64
    steps = figures["median_s"]
    assert steps["episode_s"] >= steps["evaluate_s"] > 0 and figures["floor_s"]["median"] > 0
    assert figures["episode_to_floor"] == pytest.approx(steps["episode_s"] / figures["floor_s"]["median"])
    assert figures["machine"]["torch"] == torch.__version__
