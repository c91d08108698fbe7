"""Scoring policies ahead in worker processes (--workers) and RL rollouts of several episodes (--episode-batch)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from amc.config import AgentConfig, SearchConfig
from amc.errors import AmcError
from amc_agents import RunStore, SB3Agent, run_search
from amc_agents.agent import RandomAgent
from amc_agents.parallel import ScoringPool, fork_available
from amc_envs import ChannelPruningEnv, PruningTask, policy_key

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in (".", "envs", "agents"))}

pytestmark = pytest.mark.skipif(not fork_available(), reason="scoring workers are forked (Linux)")


@pytest.fixture(scope="module")
def task():
    return PruningTask.tiny(seed=0)


@pytest.fixture
def one_thread():
    """Serial and worker scoring at the same thread count (results are only bitwise equal then)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def search(folder, task, workers, episodes=8, resume=False, **agent):
    cfg = SearchConfig(agent=AgentConfig(hidden=(16, 16), batch_size=8, **agent), episodes=episodes, seed=3,
                       threads=1, workers=workers)
    run_search(cfg, folder, task=task, resume=resume)
    store = RunStore(folder)
    rows = store.episodes()
    rows = rows[[c for c in rows.columns if not c.endswith("_s") and c != "wall_clock"]]
    return rows, json.loads((folder / "best_policy.json").read_text()), (folder / "run.log").read_text()


@pytest.mark.parametrize("agent", [dict(algorithm="random"), dict(algorithm="ddpg", warmup_episodes=3),
                                   dict(algorithm="ddpg", warmup_episodes=3, episode_batch=2),
                                   dict(algorithm="sac", warmup_episodes=2, episode_batch=3)])
def test_workers_score_every_episode_ahead_and_change_no_result(tmp_path, task, one_thread, agent):
    serial, serial_best, _ = search(tmp_path / "serial", task, 1, **agent)
    parallel, parallel_best, log = search(tmp_path / "parallel", task, 2, **agent)
    assert parallel.equals(serial)  # every episode's actions, counts, scores and rewards
    assert parallel_best["groups"] == serial_best["groups"] and parallel_best["metrics"] == serial_best["metrics"]
    assert "8 of 8 episodes were scored ahead" in log  # every plan was right: no episode scored itself


def test_a_resumed_parallel_run_equals_an_uninterrupted_serial_one(tmp_path, task, one_thread):
    agent = dict(algorithm="ddpg", warmup_episodes=2, episode_batch=2)
    straight, _, _ = search(tmp_path / "straight", task, 1, episodes=8, **agent)
    search(tmp_path / "split", task, 2, episodes=4, **agent)
    resumed, _, _ = search(tmp_path / "split", task, 2, episodes=8, resume=True, **agent)
    assert resumed.equals(straight)


def test_episode_batch_changes_only_what_the_agent_learns_from(task):
    ratios = {}
    for batch in (1, 2):
        env = ChannelPruningEnv(task)
        agent = SB3Agent(env, AgentConfig(warmup_episodes=2, hidden=(16, 16), batch_size=8, episode_batch=batch), seed=0)
        rows = []
        agent.run(env, 6, on_episode=lambda r: rows.append(list(r.requested.values())), before_episode=lambda: len(rows))
        assert len(rows) == 6 and agent.model.num_timesteps == 6 * len(env.groups)  # 3 rollouts of 2, no episode more
        ratios[batch] = rows
    assert ratios[1][:3] == ratios[2][:3]  # warm-up, and the first episode after it (same untrained actor)
    assert ratios[1][3:] != ratios[2][3:]  # batch 1 trained after episode 3, batch 2 only after episode 4


def test_an_uneven_last_rollout_is_shorter(task):
    env = ChannelPruningEnv(task)
    agent = SB3Agent(env, AgentConfig(warmup_episodes=1, hidden=(16, 16), batch_size=8, episode_batch=3), seed=0)
    done = []
    agent.run(env, 5, on_episode=lambda r: done.append(r), before_episode=lambda: len(done))
    assert len(done) == 5 and agent.model.num_timesteps == 5 * len(env.groups)


def test_plans_predict_the_episodes_and_leave_the_generators_alone(task):
    env = ChannelPruningEnv(task)
    agent = RandomAgent(seed=4)
    state = agent.rng.bit_generator.state
    plans = agent.plan(env, 3)
    assert agent.rng.bit_generator.state == state
    played = []
    agent.run(env, 3, on_episode=lambda r: played.append(r.keep), before_episode=lambda: 0)
    assert plans == played


def test_pool_fills_the_environment_with_the_scores_it_would_compute(task, one_thread):
    env = ChannelPruningEnv(task)
    plans = RandomAgent(seed=1).plan(env, 3)
    with ScoringPool(env, 2, threads=1) as pool:
        assert pool.size == 4  # plans twice as many episodes as workers: none idles behind a slow policy
        pool(plans)
        assert set(env.ahead) == {policy_key(k) for k in plans}
        first = env.ahead[policy_key(plans[0])].result()
        second = env.ahead[policy_key(plans[1])]
        pool(plans[1:])  # the first is no longer planned: dropped; the others are not submitted again
        assert set(env.ahead) == {policy_key(k) for k in plans[1:]} and env.ahead[policy_key(plans[1])] is second
        result = env.evaluate(plans[1])  # waits for its worker's score
    assert first.metrics == env.score(plans[0]).metrics and first.kept == env.score(plans[0]).kept
    assert env.scored_ahead == 1 and policy_key(plans[1]) not in env.ahead
    assert result.metrics["loss"] == env.score(plans[1]).metrics["loss"]


def test_worker_settings(tmp_path, task):
    with pytest.raises(AmcError, match="at least 2 workers"):
        ScoringPool(ChannelPruningEnv(task), 1)
    with pytest.raises(AmcError, match="workers = 0 is not valid"):
        run_search(SearchConfig(agent=AgentConfig(algorithm="random"), episodes=2, workers=0), tmp_path / "a", task=task)
    with pytest.raises(AmcError, match="episode_batch = 0 is not valid"):
        run_search(SearchConfig(agent=AgentConfig(episode_batch=0), episodes=2), tmp_path / "b", task=task)
    with pytest.raises(AmcError, match="cannot share cuda"):
        run_search(SearchConfig(agent=AgentConfig(algorithm="random"), episodes=2, workers=2, device="cuda"),
                   tmp_path / "d", task=task)
    assert not (tmp_path / "d").exists()
    with pytest.warns(Warning, match="TPE proposes each trial"):
        run_search(SearchConfig(agent=AgentConfig(algorithm="tpe"), episodes=2, workers=2), tmp_path / "c", task=task)
    assert not np.isnan(RunStore(tmp_path / "c").episodes().reward).any()


def _children(pid: int) -> list[int]:
    return [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
            if _stat(int(stat.parent.name))[1:2] == [str(pid)]]


def _stat(pid: int) -> list[str]:
    """State, parent pid, ... of a process ([] when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"])


def _start_search(out: Path, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "amc.cli", "search", "--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset",
           "synthetic", "--holdout", "200", "--search-images", "200", "--episodes", "200", "--agent", "random",
           "--threads", "1", "--workers", "2", "--calibration-images", "100", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "episodes.csv").is_file() and
                                          len((out / "episodes.csv").read_text().splitlines()) >= 4):
        time.sleep(0.05)
    return proc


def test_workers_end_with_a_killed_search_and_a_stopped_one_resumes(tmp_path):
    proc = _start_search(tmp_path / "killed")
    workers = [w for w in _children(proc.pid) if _alive(w)]
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers)  # no orphan left waiting for work forever

    def terminal_like():  # own process group, SIGINT on: what a terminal's Ctrl-C reaches
        os.setpgrp()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    out = tmp_path / "stopped"
    proc = _start_search(out, preexec_fn=terminal_like)
    os.killpg(proc.pid, signal.SIGINT)  # the search and its workers, as Ctrl-C does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"amc search --resume {out}" in err and "Traceback" not in err, err
    done = len((out / "episodes.csv").read_text().splitlines()) - 1
    r = subprocess.run([sys.executable, "-m", "amc.cli", "search", "--resume", str(out), "--episodes", str(done + 3),
                        "--quiet"], env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert RunStore(out).episodes().episode.tolist() == list(range(1, done + 4))
