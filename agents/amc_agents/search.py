"""The search loop: run an agent on the AMC environment, record every episode, keep the best policies, resume exactly.

:class:`SearchRunner` owns the episode bookkeeping (episode rows, the top-k, the uniform baseline,
checkpoints before every episode) and nothing else: the environment prunes and scores, the agent
(:mod:`amc_agents.agent`) acts, the :class:`~amc_agents.store.RunStore` writes the files.
:func:`run_search` builds all of them from one :class:`~amc.config.SearchConfig`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from amc.config import EnvConfig, SearchConfig, differences, replace, validate
from amc.errors import AmcError, AmcWarning
from amc.evaluation import load_evaluator
from amc.latency import LatencyCost, LatencyTable
from amc.policy import Policy
from amc.stats_cache import StatsCache, digest
from amc_envs import WEIGHT_SEARCH_PRUNE, ChannelPruningEnv, EpisodeResult, PruningTask, WeightPruningEnv, open_task

from .agent import make_agent
from .ddpg import rng_state, set_rng_state
from .parallel import ScoringPool, fork_available, threads_per_worker
from .store import RunStore


@dataclass
class EpisodeRecord:
    """One finished episode as the runner keeps it (also the top-k entries)."""

    episode: int
    reward: float
    result: EpisodeResult


Progress = Callable[[dict], None]  # called with each episode's row (and the best reward so far)

# settings that may differ when a run is resumed (documented in the README)
RESUMABLE_CHANGES = ("episodes", "device", "threads", "cache_dir", "workers", "reselect")


class SearchRunner:
    """Runs (or continues) the search of ``cfg`` on ``task``, writing into ``store``.

    ``progress``: called once per finished episode with its CSV row (the CLI draws a bar or logs a line).
    """

    def __init__(self, task: PruningTask, cfg: SearchConfig, store: RunStore, progress: Progress | None = None):
        self.task, self.cfg, self.store, self.progress = task, cfg, store, progress
        if cfg.episodes < 1 or cfg.top_k < 1:
            raise AmcError(f"episodes and top_k must be at least 1, got {cfg.episodes} and {cfg.top_k}")
        torch.manual_seed(cfg.seed)
        self.env = make_env(task, cfg.env)
        self.groups = self.env.groups
        self.agent = make_agent(cfg.agent, self.env, cfg.seed, cfg.device)
        self.run_id = store.fingerprints().get("run id")  # ties checkpoints to this folder
        self.episode = 0
        self.top: list[EpisodeRecord] = []
        self.elapsed_before = 0.0
        self.started = time.time()
        self._episode_start = time.perf_counter()

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"episode": self.episode, "top": [asdict(r) for r in self.top], "rng": rng_state(), "agent": self.agent.state_dict(),
                "elapsed": self.elapsed_before + time.time() - self.started,
                "episodes_bytes": self.store.episodes_bytes(), "run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        if state.get("run_id") != self.run_id:
            raise AmcError(f"{self.store.state_path} belongs to another run than {self.store.folder}; "
                           "the run cannot continue exactly")
        self.episode, self.elapsed_before = state["episode"], state["elapsed"]
        self.top = [EpisodeRecord(r["episode"], r["reward"], EpisodeResult(**r["result"])) for r in state["top"]]
        self.agent.load_state_dict(state["agent"])
        set_rng_state(state["rng"])
        self.store.cut_episodes(state["episodes_bytes"])
        self.store.write_policies([self.policy(r) for r in self.top])

    def _checkpoint(self) -> int:
        self.store.save_state(self.state_dict())
        return self.episode

    # ------------------------------------------------------------ policies
    def policy(self, record: EpisodeRecord) -> Policy:
        """The policy file of an episode: its counts, kept indices and everything that rebuilds its model."""
        r = record.result
        metrics = {"reward": r.reward, **r.metrics, **{f"{k}_ratio": v for k, v in r.cost_ratio.items()},
                   "episode": record.episode, "search_split_images": len(self.task.search_labels),
                   "target": self.cfg.env.target, "mode": self.cfg.env.mode, "method": self.cfg.agent.algorithm}
        if self.task.prune_config.granularity == "weight":
            return Policy.for_weights({n: 1 - k / self.env.budget.size(n) for n, k in r.keep.items()},
                                      model={**self.task.spec.to_dict(), "exclude": list(self.cfg.model.exclude)},
                                      input_shape=self.task.spec.input_shape, graph=self.task.graph,
                                      cost={"name": "params", "definition": "non-zero parameters"},
                                      data=self.task.data, metrics=metrics, seed=self.cfg.seed,
                                      prune=self.task.prune_config, calibration=self.task.calibration)
        cost = self.env.budget.cost
        return Policy.build(self.task.graph, r.keep, model={**self.task.spec.to_dict(), "exclude": list(self.cfg.model.exclude)},
                            kept={k: torch.tensor(v) for k, v in r.kept.items()}, requested=r.requested,
                            cost={"name": cost.name, "definition": cost.definition}, prune=self.task.prune_config,
                            calibration=self.task.calibration, data=self.task.data, metrics=metrics, seed=self.cfg.seed)

    # ------------------------------------------------------------ episodes
    def record(self, result: EpisodeResult) -> None:
        """Called once per finished episode."""
        self.episode += 1
        now = time.perf_counter()
        env_time = sum(result.timings.values())
        row = {"episode": self.episode, "phase": self.agent.phase(self.episode), "reward": result.reward,
               **result.metrics, **{f"{k}_ratio": v for k, v in result.cost_ratio.items()}, "sigma": self.agent.sigma(),
               **{f"ratio:{g.name}": result.executed[g.name] for g in self.groups},
               **{f"{k}_s": v for k, v in result.timings.items()},
               "agent_s": max(0.0, now - self._episode_start - env_time), "episode_s": now - self._episode_start,
               "elapsed_s": self.elapsed_before + time.time() - self.started,
               "wall_clock": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._episode_start = now
        self.store.append_episode(row)
        improved = not self.top or result.reward > self.top[0].reward
        self.top = sorted(self.top + [EpisodeRecord(self.episode, result.reward, result)],
                          key=lambda e: (-e.reward, e.episode))[:self.cfg.top_k]
        entered = next((i for i, e in enumerate(self.top) if e.episode == self.episode), None)
        if entered is not None:  # only the ranks from the new entry down changed
            self.store.write_policies([self.policy(r) for r in self.top[entered:]], first_rank=entered + 1)
        best = self.top[0].reward
        self.store.log(f"heartbeat episode {self.episode}/{self.cfg.episodes} reward {result.reward:.4f} best {best:.4f} "
                       f"{self.env.budget.cost_name} {result.cost_ratio.get(self.env.budget.cost_name, float('nan')):.3f} "
                       f"{row['episode_s']:.2f}s"
                       + (" (new best)" if improved else ""))
        if self.progress is not None:
            self.progress({**row, "best_reward": best})

    def run_baselines(self) -> None:
        """Score the uniform policy at the same budget once per run (``baselines.json``, ``uniform_policy.json``)."""
        if "uniform" in self.store.baselines():
            return
        # a user's evaluator is code amc cannot fingerprint: its baseline is scored afresh in every run
        cache = self.task.engine.cache if self.task.evaluator is None else None
        key = "uniform-" + digest(StatsCache.FORMAT, self.task.search_images.device.type, self.task.model,
                                  self.task.search_images, self.task.search_labels,
                                  self.task.engine.calibration.images if self.task.engine.calibration else 0,
                                  asdict(self.cfg.env), asdict(self.task.prune_config), asdict(self.task.calibration),
                                  list(self.task.exclude),
                                  latency_digest(self.task.costs["latency"]) if "latency" in self.task.costs else 0)
        saved = cache.load_record(key) if cache is not None else None
        if saved is not None:
            ratio, result = saved["ratio"], EpisodeResult(**saved["result"])
        else:
            budget = self.env.budget
            if self.cfg.env.mode == "constrained":
                ratio, keep = budget.uniform()
            else:
                ratio, keep = 1.0, {g.name: budget.size(g.name) for g in self.groups}
            result = self.env.evaluate(keep, {g: ratio for g in keep})
            if cache is not None:
                cache.save_record(key, {"ratio": ratio, "result": asdict(result)})
        record = {"ratio": ratio, "reward": result.reward, **result.metrics,
                  **{f"{k}_ratio": v for k, v in result.cost_ratio.items()}}
        policy = self.policy(EpisodeRecord(0, result.reward, result))
        policy.metrics["method"] = "uniform"
        self.store.write_baseline("uniform", record, policy)

    def scoring_pool(self) -> contextlib.AbstractContextManager[ScoringPool | None]:
        """``cfg.workers`` scoring processes, or nothing (one process) when there is one worker or no fork."""
        workers = self.cfg.workers
        if workers > 1 and self.cfg.agent.algorithm == "tpe":
            warnings.warn("--workers: TPE proposes each trial from the results of all earlier ones, so its episodes "
                          "are scored one at a time", AmcWarning, stacklevel=2)
        elif workers > 1 and not fork_available():
            warnings.warn("--workers: scoring processes need fork (Linux); scoring in this process", AmcWarning,
                          stacklevel=2)
        elif workers > 1:
            self.store.log(f"scoring with {workers} worker processes")
            return ScoringPool(self.env, workers, threads_per_worker(self.cfg.threads, workers))
        return contextlib.nullcontext()

    def run(self) -> EpisodeRecord:
        """Run until ``cfg.episodes`` episodes are recorded; returns the best one."""
        self.run_baselines()
        remaining = self.cfg.episodes - self.episode
        self.store.log(f"start: {remaining} episodes to go ({self.episode} done), agent {self.cfg.agent.algorithm}")
        self._episode_start = time.perf_counter()
        if remaining > 0:
            with self.scoring_pool() as prefetch:
                self.agent.run(self.env, remaining, self.record, self._checkpoint, prefetch)
            if prefetch is not None:
                self.store.log(f"{self.env.scored_ahead} of {remaining} episodes were scored ahead by the workers")
        self._checkpoint()
        self.store.log(f"done: {self.episode} episodes, best reward {self.top[0].reward:.4f}")
        if self.cfg.reselect:
            return self.reselect()
        if self.store.drop_reselection(self.policy(self.top[0])):
            self.store.log("re-selection off: best_policy.json is the search's best again (reselection.csv removed)")
        return self.top[0]

    def reselect(self) -> EpisodeRecord:
        """Score the top-k policies on the held-out images after the search split; the best there (ties: the
        better search rank) becomes ``best_policy.json``, with its held-out scores under ``metrics["reselected"]``.
        Every candidate's scores go to ``reselection.csv``. Returns the chosen episode."""
        rest = self.task.on_holdout_rest()
        env = make_env(rest, self.cfg.env)
        rows, chosen = [], None
        for rank, record in enumerate(self.top, 1):
            result = env.evaluate(record.result.keep, record.result.requested)
            rows.append({"search_rank": rank, "episode": record.episode, "search_reward": record.reward,
                         **{f"search_{k}": v for k, v in record.result.metrics.items()},
                         "holdout_rest_reward": result.reward,
                         **{f"holdout_rest_{k}": v for k, v in result.metrics.items()}})
            if chosen is None or result.reward > chosen[2].reward:
                chosen = (rank, record, result)
        rank, record, result = chosen
        policy = self.policy(record)
        policy.metrics["reselected"] = {"images": len(rest.search_labels), "search_rank": rank,
                                        "reward": result.reward, **result.metrics}
        self.store.write_reselection(rows, policy)
        self.store.log(f"re-selected on {len(rest.search_labels)} held-out images: search rank {rank} (episode "
                       f"{record.episode}), held-out reward {result.reward:.4f}")
        return record


def run_search(cfg: SearchConfig, folder: str | Path, *, resume: bool = False, progress: Progress | None = None,
               task: PruningTask | None = None) -> tuple[EpisodeRecord, RunStore]:
    """Start a search of ``cfg`` in ``folder``, or continue the one there (``resume``).

    On resume the stored config is used; ``cfg`` may only change the settings in
    :data:`RESUMABLE_CHANGES` (any other difference is an :class:`AmcError` listing them).
    ``task``: a prebuilt task for ``cfg`` (else opened from the model and data configs).
    """
    validate(cfg)
    if cfg.cache_dir:  # a cache that cannot be written fails now, not after the run folder exists
        try:
            Path(cfg.cache_dir).expanduser().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AmcError(f"cache folder {cfg.cache_dir} cannot be created: {exc.strerror or exc}") from None
    if cfg.reselect and cfg.env.evaluator:
        raise AmcError("--reselect scores the held-out images, which a search with --evaluator does not use")
    if cfg.reselect and cfg.data.search_images >= cfg.data.holdout:
        raise AmcError(f"--reselect needs held-out images outside the search split, but --search-images "
                       f"{cfg.data.search_images} uses the whole --holdout {cfg.data.holdout}")
    if cfg.workers > 1 and cfg.device != "cpu":
        raise AmcError(f"--workers {cfg.workers} forks CPU processes, which cannot share {cfg.device}: use --workers 1 "
                       "on a GPU (it scores one policy at a time faster than CPU workers)")
    if not resume:
        cfg = search_config_for(cfg)  # check the inputs (and that the budget is reachable) before the run folder is created
        if cfg.agent.algorithm in ("ddpg", "td3", "sac") and cfg.episodes <= cfg.agent.warmup_episodes:
            raise AmcError(f"with {cfg.episodes} episodes and {cfg.agent.warmup_episodes} warm-up episodes the "
                           f"{cfg.agent.algorithm} agent would never learn (a random search): lower "
                           f"--warmup-episodes (e.g. {max(1, cfg.episodes // 4)}) or use --agent random")
        RunStore.check_new(folder)
        untrained = task is None and not cfg.model.checkpoint and not (cfg.model.name or "").startswith("torchvision:")
        task = task or _open_task(cfg)
        make_env(task, cfg.env)
        if untrained:
            warnings.warn(f"no checkpoint: {cfg.model.name or 'the model'} has random weights, so the search split's "
                          "accuracy (the reward) says nothing about how a trained model prunes", AmcWarning, stacklevel=2)
    store = RunStore.open(folder) if resume else RunStore.create(folder, cfg)
    try:
        if resume:
            cfg = _resumed_config(store, cfg)
            task = task or _open_task(cfg)
        prints = fingerprints(task)
        if resume:
            changed = [k for k, v in store.fingerprints().items() if k in prints and prints[k] != v]
            if changed:
                hint = (" (the latency table is measured per device and thread count and cached in --cache-dir: "
                        "resume with the run's --device, --threads and --cache-dir)") if "latency table" in changed else ""
                raise AmcError(f"--resume on other inputs: the {' and the '.join(changed)} differ from the run's{hint}")
        else:
            store.write_fingerprints({**prints, "run id": uuid.uuid4().hex})
        runner = SearchRunner(task, cfg, store, progress)
        if resume:
            state = store.load_state()
            if state["episode"] > cfg.episodes:
                raise AmcError(f"the run already has {state['episode']} episodes, more than --episodes {cfg.episodes}")
            runner.load_state_dict(state)
            store.write_config(cfg)  # the episode count may have changed
        return runner.run(), store
    finally:
        store.unlock()


def make_env(task: PruningTask, cfg: EnvConfig) -> ChannelPruningEnv:
    """The environment for the task's granularity: channels (AMC) or weights (fine-grained AMC)."""
    return WeightPruningEnv(task, cfg) if task.prune_config.granularity == "weight" else ChannelPruningEnv(task, cfg)


def search_config_for(cfg: SearchConfig) -> SearchConfig:
    """``cfg`` as it runs: a weight (fine-grained) search scores masked models without least squares or
    BatchNorm recalibration, so that ``amc prune POLICY`` rebuilds the scored model exactly."""
    if cfg.prune.granularity != "weight":
        return cfg
    if cfg.env.cost not in ("params",):
        raise AmcError(f"a weight-granularity search is budgeted in parameters: give --cost params (not {cfg.env.cost})")
    return replace(cfg, prune=replace(cfg.prune, reconstruct=WEIGHT_SEARCH_PRUNE.reconstruct,
                                      bn_batches=WEIGHT_SEARCH_PRUNE.bn_batches))


def _resumed_config(store: RunStore, cfg: SearchConfig) -> SearchConfig:
    """The stored config with the settings that may change on resume taken from ``cfg``."""
    stored = store.config()
    changed = [d for d in differences(stored, cfg) if d.split(":")[0] not in RESUMABLE_CHANGES]
    if changed:
        raise AmcError(f"--resume with different settings: {'; '.join(changed)} (only {', '.join(RESUMABLE_CHANGES)} "
                       "may change)")
    return dataclasses.replace(stored, episodes=cfg.episodes, device=cfg.device, threads=cfg.threads,
                               cache_dir=cfg.cache_dir, workers=cfg.workers, reselect=cfg.reselect)


def _open_task(cfg: SearchConfig) -> PruningTask:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # a model without a checkpoint gets seeded random weights
    if not cfg.model.name and not cfg.model.checkpoint:
        raise AmcError("give --model (and usually --checkpoint) or a --config that names them")
    evaluator = load_evaluator(cfg.env.evaluator) if cfg.env.evaluator else None  # before any long work
    task = open_task(cfg.model, cfg.data, cfg.calibration, cfg.prune, cfg.device,
                     StatsCache(cfg.cache_dir) if cfg.cache_dir else None, evaluator)
    if evaluator is not None:
        task.score(task.model)  # the evaluator works (returns a number) on the dense model
    if cfg.env.cost == "latency":
        table = LatencyTable.for_graph(task.graph, device=cfg.device, cache_dir=cfg.cache_dir, model=task.model)
        task.costs["latency"] = LatencyCost(table, device=cfg.device)
    return task


def fingerprints(task: PruningTask) -> dict:
    """Identity of a task's inputs: the dense weights and the images that score and calibrate.

    (Kept byte-for-byte as runs already on disk recorded it, so that they still resume.)"""
    def tensors_digest(*tensors: torch.Tensor) -> str:
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    prints = {"model": tensors_digest(*task.model.state_dict().values()),
              "data split": tensors_digest(task.search_images, task.search_labels, task.engine.calibration.images)
              if task.engine.calibration is not None else tensors_digest(task.search_images, task.search_labels)}
    if "latency" in task.costs:  # the budget's table: another device or thread count would change the budget
        prints["latency table"] = latency_digest(task.costs["latency"])
    return prints


def latency_digest(cost: LatencyCost) -> str:
    """Identity of a latency cost model: where it was measured and its timings."""
    text = json.dumps([cost.table.device, cost.table.entries, cost.table.overheads], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

