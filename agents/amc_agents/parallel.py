"""Policies scored ahead of their episodes, several at once, in worker processes.

An episode's score is a pure function of its kept channel counts, and most episodes' counts are known
before they run: a random search's actions come from a seeded generator, an RL agent's during warm-up
from its action space's generator, and within one ``episode_batch`` from an actor that does not change.
The agents (:mod:`amc_agents.agent`) replay their own sampling on saved generator states to *plan* the
next episodes; a :class:`ScoringPool` scores the planned counts in ``workers`` processes and puts the
results in the environment's :attr:`~amc_envs.ChannelPruningEnv.ahead`. The episodes then run exactly
as in one process, in order, taking their scores from there: the run's files, the agent's state and
resume are those of a serial run (a wrong plan only costs time: the episode then scores itself).

Workers are forked from the searching process (Linux; elsewhere the search scores in one process),
so they share its model, calibration statistics and search split without copying or pickling them.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from amc.calibration import Needs
from amc.errors import AmcError
from amc_envs import ChannelPruningEnv, Scored, policy_key

_worker_env: ChannelPruningEnv | None = None  # the environment a worker process scores with (set once per worker)


def _start_worker(env: ChannelPruningEnv, threads: int) -> None:
    global _worker_env
    _worker_env = env
    torch.set_num_threads(threads)


def _score(keep: dict[str, int]) -> Scored:
    return _worker_env.score(keep)


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


class ScoringPool:
    """``workers`` processes, each with ``threads`` torch threads, scoring policies of ``env`` ahead.

    Call it with the kept counts of the next episodes, in order (``plans``), of which the first ``needed`` are
    about to run: unless those are all scored already, every plan not yet scored is scored (``workers`` at a
    time) and stored in ``env.ahead``; scores of policies no longer planned are dropped. ``size``: how many
    episodes an agent should plan at least (= ``workers``). Use as a context manager (the processes stop
    at its end).
    """

    def __init__(self, env: ChannelPruningEnv, workers: int, threads: int = 1):
        if workers < 2:
            raise AmcError(f"a scoring pool needs at least 2 workers, got {workers}")
        if not fork_available():
            raise AmcError("--workers needs processes started by fork (Linux); use --workers 1 here")
        engine = env.task.engine
        if engine.calibration is not None and engine.needs & (Needs.ACTIVATIONS | Needs.GRAM | Needs.GRADIENTS):
            engine.stats  # gathered once here, shared by every worker, instead of once per worker
        self.env, self.size = env, workers
        self.executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_start_worker, initargs=(env, threads))

    def __call__(self, plans: list[dict[str, int]], needed: int = 1) -> None:
        keys = [policy_key(keep) for keep in plans]
        if all(k in self.env.ahead for k in keys[:needed]):
            return
        self.env.ahead = {k: v for k, v in self.env.ahead.items() if k in keys}
        missing = list(dict.fromkeys(k for k in keys if k not in self.env.ahead))
        try:
            futures = [(k, self.executor.submit(_score, dict(k))) for k in missing]
            for k, future in futures:
                self.env.ahead[k] = future.result()
        except BrokenProcessPool:
            raise AmcError("a scoring worker process died (out of memory? try fewer --workers); resume the run "
                           "with --resume to continue where it stopped") from None

    def close(self) -> None:
        self.executor.shutdown(cancel_futures=True)

    def __enter__(self) -> "ScoringPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def threads_per_worker(threads: int, workers: int) -> int:
    """Torch threads for each of ``workers`` processes: ``threads`` when given (> 0), else the cores shared out."""
    return threads if threads > 0 else max(1, (os.cpu_count() or 1) // workers)
