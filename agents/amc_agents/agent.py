"""Agents that search: SB3's DDPG/TD3/SAC configured as AMC, random search and Optuna's TPE, behind one interface.

An agent runs episodes on a :class:`~amc_envs.ChannelPruningEnv` and reports each finished one;
the :class:`~amc_agents.search.SearchRunner` decides what to do with it (files, top-k, resume).
``state_dict`` / ``load_state_dict`` capture everything needed to continue bit-exactly.
"""
from __future__ import annotations

import copy
from typing import Callable, Protocol

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit

from amc.config import AgentConfig
from amc_envs import ChannelPruningEnv, EpisodeResult

from .blackbox import TPEAgent
from .ddpg import agent_state, load_agent_state, make_sb3_agent
from .noise import TruncatedNormalNoise
from .parallel import ScoringPool

OnEpisode = Callable[[EpisodeResult], None]
BeforeEpisode = Callable[[], int]  # saves a consistent state; returns the number of episodes done


class Agent(Protocol):
    def run(self, env: ChannelPruningEnv, episodes: int, on_episode: OnEpisode, before_episode: BeforeEpisode,
            prefetch: ScoringPool | None = None) -> None:
        """Run ``episodes`` more episodes, calling ``before_episode`` before and ``on_episode`` after each;
        ``prefetch``: scores the kept counts of the episodes the agent plans next, ahead, in parallel."""

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

    def run(self, env, episodes, on_episode, before_episode, prefetch=None):
        for i in range(episodes):
            before_episode()
            if prefetch is not None:
                prefetch(self.plan(env, min(prefetch.size, episodes - i)))
            env.reset()
            done = False
            while not done:
                _, _, done, _, info = env.step(self.rng.random(1).astype(np.float32))
            on_episode(info["result"])

    def plan(self, env: ChannelPruningEnv, episodes: int) -> list[dict]:
        """The kept counts of the next ``episodes`` episodes (drawn from a copy of the generator)."""
        rng = copy.deepcopy(self.rng)
        return [env.plan([rng.random(1).astype(np.float32) for _ in env.groups]) for _ in range(episodes)]

    def phase(self, episode: int) -> str:
        return "random"

    def sigma(self) -> float:
        return float("nan")

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class SB3Agent:
    """An SB3 off-policy algorithm (ddpg | td3 | sac) trained by its own ``learn`` loop, on rollouts of
    ``cfg.episode_batch`` episodes (the last one shorter when the episodes do not divide evenly)."""

    def __init__(self, env: ChannelPruningEnv, cfg: AgentConfig, seed: int, device: str = "cpu"):
        self.cfg = cfg
        self.model = make_sb3_agent(env, len(env.groups), cfg, seed, device)

    def run(self, env, episodes, on_episode, before_episode, prefetch=None):
        batch = self.cfg.episode_batch
        for chunk in (episodes - episodes % batch, episodes % batch):
            if chunk > 0:
                self.model.train_freq = TrainFreq(min(batch, chunk), TrainFrequencyUnit.EPISODE)
                planner = (lambda n: self.plan(env, n)) if prefetch is not None else None
                self.model.learn(total_timesteps=chunk * len(env.groups), reset_num_timesteps=False,
                                 callback=_EpisodeCallback(on_episode, before_episode, chunk, prefetch, planner))

    def plan(self, env: ChannelPruningEnv, episodes: int) -> list[dict]:
        """The kept counts of the next ``episodes`` episodes from the start of a rollout, found by running SB3's
        own action sampling on the saved generator states (restored afterwards). Stops after a rollout the
        agent trains on, since the episodes after it depend on their rewards."""
        m, noise = self.model, self.model.action_noise
        saved = (m.num_timesteps, m._last_obs, copy.deepcopy(m.action_space.np_random.bit_generator.state),
                 torch.get_rng_state(), noise.get_state() if isinstance(noise, TruncatedNormalNoise) else None)
        plans = []
        try:
            for e in range(episodes):
                keep, requested = {}, {}
                for t in range(len(env.groups)):
                    m._last_obs = env.observer(t, keep)[None]
                    action, _ = m._sample_action(m.learning_starts, noise, 1)
                    env.decide(t, action[0], keep, requested)
                    m.num_timesteps += 1
                plans.append(env.final_keep(keep, requested))
                if noise is not None:
                    noise.reset()
                if (e + 1) % m.train_freq.frequency == 0 and m.num_timesteps > m.learning_starts:
                    break
        finally:
            m.num_timesteps, m._last_obs = saved[0], saved[1]
            m.action_space.np_random.bit_generator.state = saved[2]
            torch.set_rng_state(saved[3])
            if saved[4] is not None:
                noise.set_state(saved[4])
        return plans

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
    """Reports finished episodes and lets the runner checkpoint between rollouts (after the updates); with
    ``prefetch``, has the coming episodes (``planner(n)``, of the ``episodes`` of this ``learn`` call) scored ahead."""

    def __init__(self, on_episode: OnEpisode, before_episode: BeforeEpisode, episodes: int,
                 prefetch: ScoringPool | None = None, planner: Callable[[int], list[dict]] | None = None):
        super().__init__()
        self.on_episode, self.before_episode = on_episode, before_episode
        self.episodes, self.seen = episodes, 0
        self.prefetch, self.planner = prefetch, planner

    def _on_rollout_start(self) -> None:
        done = self.before_episode()
        # SB3 also calls ActionNoise.reset() when learn() starts, so a resumed run would count one
        # episode too many: pin the noise's episode count to the run's own before each episode
        noise = getattr(self.model, "action_noise", None)
        if isinstance(noise, TruncatedNormalNoise):
            noise.episodes = done
        if self.prefetch is not None:  # the whole rollout (the actor is fixed during it), or more in warm-up
            rollout = min(self.model.train_freq.frequency, self.episodes - self.seen)
            self.prefetch(self.planner(min(max(self.prefetch.size, rollout), self.episodes - self.seen)))

    def _on_step(self) -> bool:
        # never stop early: learn() ends after exactly the requested episodes, once their transitions
        # are stored and trained on, so the final state equals the one an uninterrupted run has
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done:
                self.seen += 1
                self.on_episode(info["result"])
        return True


def make_agent(cfg: AgentConfig, env: ChannelPruningEnv, seed: int, device: str = "cpu") -> Agent:
    """The agent named by ``cfg.algorithm`` (``ddpg`` | ``td3`` | ``sac`` | ``random`` | ``tpe``)."""
    if cfg.algorithm == "random":
        return RandomAgent(seed)
    if cfg.algorithm == "tpe":
        return TPEAgent(len(env.groups), seed, startup=min(10, cfg.warmup_episodes))
    return SB3Agent(env, cfg, seed, device)
