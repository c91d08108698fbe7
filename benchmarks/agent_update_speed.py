"""Seconds for one episode's DDPG gradient steps with torch's default CPU Adam vs multi-tensor (``foreach``) Adam.

The agents use ``foreach=True`` (``amc_agents.ddpg.make_sb3_agent``). This times ``agent.train`` for
``--steps`` gradient steps (one per prunable group, as AMC; 27 = ResNet-56) of batch 64 on a filled replay
buffer, the two optimiser settings interleaved ``--rounds`` times, 1 torch thread; prints the medians.

    python benchmarks/agent_update_speed.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for sub in ("", "envs", "agents"):
    sys.path.insert(0, str(ROOT / sub))


class _Steps(gym.Env):
    """``steps`` steps per episode with AMC-sized observations; only fills the replay buffer."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (12,), np.float32)
    action_space = gym.spaces.Box(0, 1, (1,), np.float32)

    def __init__(self, steps: int):
        self.steps, self.t = steps, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(12, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = self.np_random.random(12).astype(np.float32)
        return obs, float(self.t == self.steps), self.t == self.steps, False, {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=27)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from amc.config import AgentConfig
    from amc_agents.ddpg import make_sb3_agent

    agents = {}
    for foreach in (False, True):
        agent = make_sb3_agent(_Steps(args.steps), args.steps, AgentConfig(), seed=0)
        for opt in (agent.actor.optimizer, agent.critic.optimizer):
            for group in opt.param_groups:
                group["foreach"] = foreach
        agent.learn(args.steps * 8)
        agents["foreach" if foreach else "default"] = agent
    times: dict[str, list[float]] = {name: [] for name in agents}
    for _ in range(args.rounds):
        for name, agent in agents.items():
            began = time.perf_counter()
            agent.train(gradient_steps=args.steps, batch_size=64)
            times[name].append(time.perf_counter() - began)
    for name, ts in times.items():
        print(f"{name:8s} Adam: {statistics.median(ts):.3f} s for {args.steps} gradient steps (median of {args.rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
