"""A black-box optimiser as a searcher: Optuna's TPE over the vector of per-group actions.

The question it answers for a user: would a well-kept general-purpose optimiser, given the same
number of scored policies, do as well as the RL agent? Each episode is one Optuna trial: the trial
proposes one action (preserve ratio in [0, 1]) per prunable group, the environment executes them in
order exactly as it executes an RL agent's (same clipping, rounding and budget rule) and the
episode's reward is told back to the study.

``TPESampler(multivariate=True, n_startup_trials=..., seed=...)``: Optuna's recommended setting for
correlated continuous parameters; the first ``startup`` trials are random (its own warm-up). The
whole study (sampler state included) is pickled by :meth:`state_dict`, so a resumed search proposes
exactly what an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import pickle

import numpy as np
import optuna
from optuna.distributions import FloatDistribution


@contextlib.contextmanager
def _quiet():
    """Optuna logs every trial at INFO; keep the search's own log the only one (restored afterwards)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


class TPEAgent:
    """Optuna TPE search over per-group preserve ratios.

    Arguments:
        groups: number of prunable groups (actions per episode).
        seed: seeds the sampler.
        startup: random trials before TPE models the results (Optuna's own warm-up; default 10).
    """

    def __init__(self, groups: int, seed: int, startup: int = 10):
        self.names = [f"g{i:03d}" for i in range(groups)]
        self.space = {name: FloatDistribution(0.0, 1.0) for name in self.names}
        self.startup = startup
        sampler = optuna.samplers.TPESampler(multivariate=True, n_startup_trials=startup, seed=seed)
        with _quiet():
            self.study = optuna.create_study(direction="maximize", sampler=sampler)

    def run(self, env, episodes, on_episode, before_episode, prefetch=None):
        # each trial is proposed from the results of all earlier ones: nothing to score ahead (prefetch unused)
        for _ in range(episodes):
            before_episode()
            with _quiet():
                trial = self.study.ask(self.space)
            env.reset()
            done = False
            for name in self.names:
                _, _, done, _, info = env.step(np.array([trial.params[name]], dtype=np.float32))
            if not done:
                raise RuntimeError("the environment has more groups than the TPE agent was built for")
            with _quiet():
                self.study.tell(trial, float(info["result"].reward))
            on_episode(info["result"])

    def phase(self, episode: int) -> str:
        return "random" if episode <= self.startup else "tpe"

    def sigma(self) -> float:
        return float("nan")

    def state_dict(self) -> dict:
        return {"study": pickle.dumps(self.study)}

    def load_state_dict(self, state: dict) -> None:
        self.study = pickle.loads(state["study"])
