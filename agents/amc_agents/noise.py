"""Exploration noise for AMC: truncated normal around the actor's action, decaying per episode."""
from __future__ import annotations

import numpy as np
from stable_baselines3.common.noise import ActionNoise


class TruncatedNormalNoise(ActionNoise):
    """Truncated normal exploration as in AMC, as an SB3 :class:`ActionNoise`.

    Arguments:
        sigma: standard deviation in **SB3's scaled action units** ([-1, 1]); AMC's σ = 0.5 in
            preserve-ratio units ([0, 1]) is ``sigma=1.0`` here (see :func:`from_ratio_units`).
        decay: σ is multiplied by this once per episode after ``warmup_episodes`` episodes.
        warmup_episodes: episodes (counted by :meth:`reset`, which SB3 calls at each episode end)
            before decay starts.
        seed: seed of the noise's own generator.

    ``perturb(action, low, high)`` draws from N(action, σ²) truncated to [low, high] (rejection
    sampling); ``__call__`` returns plain N(0, σ²) noise for algorithms that only add noise.
    """

    def __init__(self, sigma: float, decay: float = 0.95, warmup_episodes: int = 0, seed: int = 0, action_dim: int = 1):
        super().__init__()
        self.sigma0, self.decay, self.warmup_episodes, self.action_dim = sigma, decay, warmup_episodes, action_dim
        self.episodes = 0
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_ratio_units(cls, sigma_ratio: float, **kwargs) -> "TruncatedNormalNoise":
        """σ given in preserve-ratio units (action space [0, 1]) -> SB3 scaled units ([-1, 1])."""
        return cls(sigma=2.0 * sigma_ratio, **kwargs)

    @property
    def sigma(self) -> float:
        return self.sigma0 * self.decay ** max(0, self.episodes - self.warmup_episodes)

    def __call__(self) -> np.ndarray:
        return self.rng.normal(0.0, self.sigma, self.action_dim).astype(np.float32)

    def perturb(self, action: np.ndarray, low: float = -1.0, high: float = 1.0) -> np.ndarray:
        out = np.array(action, dtype=np.float64)
        flat = out.reshape(-1)
        for i, mu in enumerate(flat):
            mu = min(max(mu, low), high)
            for _ in range(1000):
                x = self.rng.normal(mu, self.sigma)
                if low <= x <= high:
                    break
            else:
                x = min(max(x, low), high)
            flat[i] = x
        return out.astype(np.float32)

    def reset(self) -> None:
        self.episodes += 1

    def get_state(self) -> dict:
        return {"episodes": self.episodes, "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.episodes = state["episodes"]
        self.rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        return f"TruncatedNormalNoise(sigma={self.sigma:.4f}, decay={self.decay})"
