"""AMC's DDPG (and TD3/SAC by name) built from Stable-Baselines3 extension points.

All agent defaults live in :class:`amc.config.AgentConfig`. What differs from stock SB3:

- separate actor and critic learning rates (:class:`TwoLearningRates`, overriding SB3's
  ``_update_learning_rate`` hook);
- truncated-normal exploration around the actor's action (:class:`~amc_agents.noise.TruncatedNormalNoise`,
  applied through the ``_sample_action`` hook);
- every transition stored with the episode's final reward minus a moving-average baseline
  (:class:`~amc_agents.buffer.EpisodeRewardReplayBuffer`);
- Adam with ``foreach=True`` also on the CPU (one multi-tensor update per parameter list: an episode's gradient
  steps ~4% faster than with torch's per-tensor CPU default on an idle machine, ~35% faster when the cores are
  shared; ``benchmarks/agent_update_speed.py``).
"""
from __future__ import annotations

import random

import numpy as np
import torch
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.utils import update_learning_rate

from amc.config import AgentConfig
from amc.errors import AmcError

from .buffer import EpisodeRewardReplayBuffer
from .noise import TruncatedNormalNoise


class TwoLearningRates:
    """Mixin: SB3's ``learning_rate`` drives the actor; ``critic_lr`` the critic's optimiser."""

    critic_lr: float

    def _update_learning_rate(self, optimizers) -> None:
        super()._update_learning_rate(optimizers)
        update_learning_rate(self.critic.optimizer, self.critic_lr)

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        """Warm-up as SB3 does; afterwards a truncated-normal draw around the actor's action."""
        if not isinstance(action_noise, TruncatedNormalNoise) or self.num_timesteps < learning_starts:
            return super()._sample_action(learning_starts, action_noise, n_envs)
        unscaled, _ = self.predict(self._last_obs, deterministic=False)
        scaled = action_noise.perturb(self.policy.scale_action(unscaled), -1.0, 1.0)
        return self.policy.unscale_action(scaled), scaled


class AMCDDPG(TwoLearningRates, DDPG):
    pass


class AMCTD3(TwoLearningRates, TD3):
    pass


class AMCSAC(TwoLearningRates, SAC):
    pass


ALGORITHMS = {"ddpg": AMCDDPG, "td3": AMCTD3, "sac": AMCSAC}


def make_sb3_agent(env, groups: int, cfg: AgentConfig, seed: int, device: str = "cpu"):
    """An SB3 agent (``cfg.algorithm``) configured as AMC for an environment with ``groups`` steps per episode."""
    name = cfg.algorithm
    if name not in ALGORITHMS:
        raise AmcError(f"unknown agent '{name}' (choose ddpg, td3, sac or random)")
    cls = ALGORITHMS[name]
    kwargs = dict(learning_rate=cfg.actor_lr, buffer_size=max(cfg.buffer_per_group * groups, cfg.batch_size),
                  learning_starts=cfg.warmup_episodes * groups, batch_size=cfg.batch_size, tau=cfg.tau,
                  gamma=cfg.gamma, train_freq=(1, "episode"), gradient_steps=-1,
                  replay_buffer_class=EpisodeRewardReplayBuffer,
                  replay_buffer_kwargs={"baseline_momentum": cfg.baseline_momentum},
                  policy_kwargs={"net_arch": list(cfg.hidden), "optimizer_kwargs": {"foreach": True}},
                  seed=seed, device=device, verbose=0)
    if name != "sac":
        kwargs["action_noise"] = TruncatedNormalNoise.from_ratio_units(
            cfg.sigma, decay=cfg.sigma_decay, warmup_episodes=cfg.warmup_episodes, seed=seed)
    agent = cls("MlpPolicy", env, **kwargs)
    agent.critic_lr = cfg.critic_lr
    return agent


def agent_state(agent) -> dict:
    """Everything needed to continue ``agent`` exactly: weights, optimisers, buffer, noise, RNGs, counters."""
    opts = {"actor": agent.actor.optimizer.state_dict(), "critic": agent.critic.optimizer.state_dict()}
    if getattr(agent, "ent_coef_optimizer", None) is not None:
        opts["ent_coef"] = agent.ent_coef_optimizer.state_dict()
    noise = agent.action_noise.get_state() if isinstance(agent.action_noise, TruncatedNormalNoise) else None
    return {"policy": agent.policy.state_dict(), "optimizers": opts, "buffer": agent.replay_buffer.get_state(),
            "noise": noise, "num_timesteps": agent.num_timesteps, "n_updates": agent._n_updates,
            "episode_num": agent._episode_num, "log_ent_coef": getattr(agent, "log_ent_coef", None),
            "action_space_rng": agent.action_space.np_random.bit_generator.state}


def load_agent_state(agent, state: dict) -> None:
    agent.policy.load_state_dict(state["policy"])
    agent.actor.optimizer.load_state_dict(state["optimizers"]["actor"])
    agent.critic.optimizer.load_state_dict(state["optimizers"]["critic"])
    if "ent_coef" in state["optimizers"]:
        agent.ent_coef_optimizer.load_state_dict(state["optimizers"]["ent_coef"])
        with torch.no_grad():
            agent.log_ent_coef.copy_(state["log_ent_coef"])
    agent.replay_buffer.set_state(state["buffer"])
    if state["noise"] is not None:
        agent.action_noise.set_state(state["noise"])
    agent.num_timesteps, agent._n_updates, agent._episode_num = state["num_timesteps"], state["n_updates"], state["episode_num"]
    agent.action_space.np_random.bit_generator.state = state["action_space_rng"]


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
