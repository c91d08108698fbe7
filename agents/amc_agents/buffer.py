"""Replay buffer that stores every transition of an episode with the episode's final reward."""
from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples


class EpisodeRewardReplayBuffer(ReplayBuffer):
    """AMC's reward scheme on top of SB3's :class:`ReplayBuffer` (single environment).

    - Transitions are held back until their episode ends, then all are stored with the episode's
      final reward R (AMC: the reward only exists once the whole network is pruned).
    - The stored action is the *executed* one (after clipping, rounding and the budget clamp, read
      from ``info["executed_action"]`` in preserve-ratio units), not the proposed one.
    - Sampling returns rewards minus a moving-average baseline b, updated per minibatch as
      ``b <- b + baseline_momentum * (mean batch reward - b)`` (b starts at the first batch mean).

    Extra arguments: ``baseline_momentum`` (default 0.5, as AMC's official code).
    """

    def __init__(self, *args, baseline_momentum: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.baseline_momentum = baseline_momentum
        self.baseline: float | None = None
        self._pending: list[tuple] = []

    def add(self, obs, next_obs, action, reward, done, infos: list[dict[str, Any]]) -> None:
        executed = infos[0].get("executed_action") if infos else None
        if executed is not None:
            low, high = float(self.action_space.low[0]), float(self.action_space.high[0])
            action = np.full_like(np.asarray(action, dtype=np.float32), 2.0 * (executed - low) / (high - low) - 1.0)
        self._pending.append((np.array(obs), np.array(next_obs), np.array(action), np.array(done), infos))
        if np.any(done):
            final = np.array(reward, dtype=np.float32)
            for o, n, a, d, i in self._pending:
                super().add(o, n, a, final, d, i)
            self._pending = []

    def _get_samples(self, batch_inds: np.ndarray, env=None) -> ReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        mean = float(samples.rewards.mean())
        self.baseline = mean if self.baseline is None else self.baseline + self.baseline_momentum * (mean - self.baseline)
        return samples._replace(rewards=samples.rewards - self.baseline)

    def get_state(self) -> dict:
        return {"observations": self.observations, "next_observations": self.next_observations,
                "actions": self.actions, "rewards": self.rewards, "dones": self.dones, "timeouts": self.timeouts,
                "pos": self.pos, "full": self.full, "baseline": self.baseline, "pending": self._pending}

    def set_state(self, state: dict) -> None:
        for key in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            setattr(self, key, state[key])
        self.pos, self.full, self.baseline, self._pending = state["pos"], state["full"], state["baseline"], state["pending"]
