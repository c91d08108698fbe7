"""Agents that search: SB3's DDPG/TD3/SAC configured as AMC, random search and Optuna's TPE, behind one interface.

An agent runs episodes on a :class:`~amc_envs.ChannelPruningEnv` and reports each finished one;
the :class:`~amc_agents.search.SearchRunner` decides what to do with it (files, top-k, resume).
``state_dict`` / ``load_state_dict`` capture everything needed to continue bit-exactly.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from amc.config import AgentConfig
from amc_envs import ChannelPruningEnv, EpisodeResult

from .blackbox import TPEAgent
from .ddpg import agent_state, load_agent_state, make_sb3_agent
from .noise import TruncatedNormalNoise

OnEpisode = Callable[[EpisodeResult], None]
BeforeEpisode = Callable[[], int]  # saves a consistent state; returns the number of episodes done


class Agent(Protocol):
    def run(self, env: ChannelPruningEnv, episodes: int, on_episode: OnEpisode, before_episode: BeforeEpisode) -> None:
        """Run ``episodes`` more episodes, calling ``before_episode`` before and ``on_episode`` after each."""

    def phase(self, episode: int) -> str:
        """``warm-up``, ``explore`` or ``random`` for the 1-based ``episode``."""

    def sigma(self) -> float:
        """Current exploration std in preserve-ratio units (nan when not applicable)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RandomAgent:
    """Random search: every action uniform in [0, 1], drawn from a generator seeded with ``seed``."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def run(self, env, episodes, on_episode, before_episode):
        for _ in range(episodes):
            before_episode()
            env.reset()
            done = False
            while not done:
                _, _, done, _, info = env.step(self.rng.random(1).astype(np.float32))
            on_episode(info["result"])

    def phase(self, episode: int) -> str:
        return "random"

    def sigma(self) -> float:
        return float("nan")

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class SB3Agent:
    """An SB3 off-policy algorithm (ddpg | td3 | sac) trained by its own ``learn`` loop."""

    def __init__(self, env: ChannelPruningEnv, cfg: AgentConfig, seed: int, device: str = "cpu"):
        self.cfg = cfg
        self.model = make_sb3_agent(env, len(env.groups), cfg, seed, device)

    def run(self, env, episodes, on_episode, before_episode):
        if episodes > 0:
            self.model.learn(total_timesteps=episodes * len(env.groups), callback=_EpisodeCallback(on_episode, before_episode),
                             reset_num_timesteps=False)

    def phase(self, episode: int) -> str:
        return "warm-up" if episode <= self.cfg.warmup_episodes else "explore"

    def sigma(self) -> float:
        noise = getattr(self.model, "action_noise", None)
        return noise.sigma / 2 if isinstance(noise, TruncatedNormalNoise) else float("nan")  # ratio units

    def state_dict(self) -> dict:
        return agent_state(self.model)

    def load_state_dict(self, state: dict) -> None:
        load_agent_state(self.model, state)


class _EpisodeCallback(BaseCallback):
    """Reports finished episodes and lets the runner checkpoint between episodes (after the updates)."""

    def __init__(self, on_episode: OnEpisode, before_episode: BeforeEpisode):
        super().__init__()
        self.on_episode, self.before_episode = on_episode, before_episode

    def _on_rollout_start(self) -> None:
        done = self.before_episode()
        # SB3 also calls ActionNoise.reset() when learn() starts, so a resumed run would count one
        # episode too many: pin the noise's episode count to the run's own before each episode
        noise = getattr(self.model, "action_noise", None)
        if isinstance(noise, TruncatedNormalNoise):
            noise.episodes = done

    def _on_step(self) -> bool:
        # never stop early: learn() ends after exactly the requested episodes, once their transitions
        # are stored and trained on, so the final state equals the one an uninterrupted run has
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done:
                self.on_episode(info["result"])
        return True


def make_agent(cfg: AgentConfig, env: ChannelPruningEnv, seed: int, device: str = "cpu") -> Agent:
    """The agent named by ``cfg.algorithm`` (``ddpg`` | ``td3`` | ``sac`` | ``random`` | ``tpe``)."""
    if cfg.algorithm == "random":
        return RandomAgent(seed)
    if cfg.algorithm == "tpe":
        return TPEAgent(len(env.groups), seed, startup=min(10, cfg.warmup_episodes))
    return SB3Agent(env, cfg, seed, device)
