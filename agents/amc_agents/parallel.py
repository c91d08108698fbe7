"""Policies scored ahead of their episodes, several at once, in worker processes.

An episode's score is a pure function of its kept channel counts, and most episodes' counts are known
before they run: a random search's actions come from a seeded generator, an RL agent's during warm-up
from its action space's generator, and within one ``episode_batch`` from an actor that does not change.
The agents (:mod:`amc_agents.agent`) replay their own sampling on saved generator states to *plan* the
next episodes; a :class:`ScoringPool` has the planned counts scored in ``workers`` processes and puts
the futures of their scores in the environment's :attr:`~amc_envs.ChannelPruningEnv.ahead`. The
episodes then run exactly as in one process, in order, each waiting for its own score only: the run's
files, the agent's state and resume are those of a serial run (a wrong plan only costs time: the
episode then scores itself).

Workers are forked from the searching process (Linux; elsewhere the search scores in one process),
so they share its model, calibration statistics and search split without copying or pickling them.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from amc.calibration import Needs
from amc.errors import AmcError
from amc.memory import libc
from amc_envs import ChannelPruningEnv, Scored, policy_key

_worker_env: ChannelPruningEnv | None = None  # the environment a worker process scores with (set once per worker)


def _start_worker(env: ChannelPruningEnv, threads: int, parent: int) -> None:
    global _worker_env
    _worker_env = env
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the search handles it
    _die_with(parent)


def _die_with(parent: int) -> None:
    """End this worker when the search process dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``): its pipe
    stays open in the sibling workers, so it would otherwise wait for work forever."""
    c = libc()
    if c is None or not hasattr(c, "prctl"):  # not Linux
        return
    c.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the search died before the line above
        os._exit(1)


def _score(keep: dict[str, int]) -> Scored:
    return _worker_env.score(keep)


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


class ScoringPool:
    """``workers`` processes, each with ``threads`` torch threads, scoring policies of ``env`` ahead.

    Call it with the kept counts of the next episodes, in order (``plans``): each one not yet in
    ``env.ahead`` is submitted and its future stored there (the workers take them in order, so a slow
    policy does not leave the other workers idle); policies no longer planned are dropped. ``size``: how
    many episodes an agent should plan ahead (``2 x workers``: enough to keep every worker busy). Use as
    a context manager (the processes stop at its end).
    """

    def __init__(self, env: ChannelPruningEnv, workers: int, threads: int = 1):
        if workers < 2:
            raise AmcError(f"a scoring pool needs at least 2 workers, got {workers}")
        if not fork_available():
            raise AmcError("--workers needs processes started by fork (Linux); use --workers 1 here")
        engine = env.task.engine
        if engine.calibration is not None and engine.needs & (Needs.ACTIVATIONS | Needs.GRAM | Needs.GRADIENTS):
            engine.stats  # gathered once here, shared by every worker, instead of once per worker
        if engine.cfg.granularity == "channel" and env.task.evaluator is None:
            env.task.dense_fold_pairs()  # traced once here too, not once per worker
        self.env, self.size = env, 2 * workers
        self.executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_start_worker, initargs=(env, threads, os.getpid()))

    def __call__(self, plans: list[dict[str, int]]) -> None:
        keys = [policy_key(keep) for keep in plans]
        for k in [k for k in self.env.ahead if k not in keys]:
            dropped = self.env.ahead.pop(k)
            if isinstance(dropped, _Score):
                dropped.future.cancel()
        for k in keys:
            if k not in self.env.ahead:
                self.env.ahead[k] = _Score(self.executor.submit(_score, dict(k)))

    def close(self) -> None:
        self.executor.shutdown(cancel_futures=True)

    def __enter__(self) -> "ScoringPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Score:
    """The future of a worker's :class:`Scored`; ``result()`` names a dead worker in one line."""

    def __init__(self, future):
        self.future = future

    def result(self) -> Scored:
        try:
            return self.future.result()
        except BrokenProcessPool:
            raise AmcError("a scoring worker process died (out of memory? try fewer --workers); continue the run "
                           "with --resume") from None


def threads_per_worker(threads: int, workers: int) -> int:
    """Torch threads for each of ``workers`` processes: ``threads`` when given (> 0), else the cores shared out."""
    return threads if threads > 0 else max(1, (os.cpu_count() or 1) // workers)
