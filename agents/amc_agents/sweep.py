"""Many searches as one sweep on Ray Tune: targets x seeds x agents, each trial an ordinary run folder.

A sweep is a grid of :class:`~amc.config.SearchConfig` variants of one base config. Ray Tune schedules the
trials (locally by default, on a Ray cluster given its address); each trial calls
:func:`amc_agents.run_search` on its own folder ``OUT/trials/<name>``, so a trial is resumable and
readable like any ``amc search`` run. Running the same sweep again skips the trials whose folders hold a
finished run and resumes the others (a crashed or killed trial continues where it stopped). The results
are read back from the run folders: ``OUT/sweep.csv`` (one row per trial) and ``OUT/summary.md`` (mean ±
std over seeds per target and agent); :func:`write_front` adds the Pareto front over all trials. Ray is an optional dependency (``pip install amc[ray]``).
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from amc.config import PruneConfig, SearchConfig, from_dict, recorded_prune, replace, to_dict
from amc.errors import AmcError
from amc.io import atomic_write_text

from .store import RunStore


SWEEP_FILES = {"trials", "ray", "sweep.json", "sweep.csv", "summary.md", "front", ".front.tmp"}  # what a sweep writes


@dataclass(frozen=True)
class Trial:
    """One search of a sweep: ``target`` (cost fraction), ``seed`` and ``agent`` (algorithm) set on the base."""

    target: float
    seed: int
    agent: str

    @property
    def name(self) -> str:
        return f"target{self.target:g}-seed{self.seed}-{self.agent}"

    def config(self, base: SearchConfig) -> SearchConfig:
        return replace(base, env=replace(base.env, target=self.target), seed=self.seed,
                       agent=replace(base.agent, algorithm=self.agent))


def grid(targets: Sequence[float], seeds: Sequence[int], agents: Sequence[str]) -> list[Trial]:
    """Every combination, in a stable order."""
    return [Trial(float(t), int(s), a) for t, a, s in itertools.product(targets, agents, seeds)]


def portable(cfg: SearchConfig) -> SearchConfig:
    """``cfg`` with its files as absolute paths: a Ray worker may run in another working directory."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path and path != "none" else path

    return replace(cfg, model=replace(cfg.model, checkpoint=absolute(cfg.model.checkpoint)),
                   data=replace(cfg.data, data_dir=absolute(cfg.data.data_dir)), cache_dir=absolute(cfg.cache_dir))


def trial_state(folder: Path, episodes: int) -> str:
    """``new`` (no run yet, or one stopped before its first checkpoint), ``finished`` (``episodes`` episodes
    logged) or ``partial`` (resume it)."""
    if not (folder / "config.yaml").is_file() or not (folder / "checkpoint.pt").is_file():
        return "new"
    done = len(RunStore(folder).episodes()) if (folder / "episodes.csv").is_file() else 0
    return "finished" if done >= episodes else "partial"


def run_trial(base: dict, trial: Trial, folder: str) -> dict:
    """Run (or resume, or skip if finished) one trial; returns its summary row. Runs in a Ray worker."""
    from .search import run_search, search_config_for  # noqa: PLC0415  (imported in the worker on first use)

    cfg = search_config_for(trial.config(from_dict(SearchConfig, base)))  # as a run stores it (resume compares)
    path = Path(folder)
    state = trial_state(path, cfg.episodes)
    began = time.time()
    if state == "new" and path.exists():
        shutil.rmtree(path)  # the sweep's own trial folder, stopped before its first checkpoint: nothing to keep
    if state != "finished":
        run_search(cfg, path, resume=state == "partial")
    return {**summary_row(path, trial), "state_before": state, "seconds": time.time() - began}


def summary_row(folder: Path, trial: Trial) -> dict:
    """What a finished trial's folder says: best reward and score, its cost ratio, the uniform baseline."""
    store = RunStore(folder)
    episodes = store.episodes()
    best = store.best_policy().metrics if (folder / "best_policy.json").is_file() else {}
    uniform = store.baselines().get("uniform", {})
    score = "top1" if "top1" in episodes.columns else "score"
    cost = store.config().env.cost.replace("flops", "macs")
    return {"trial": trial.name, "target": trial.target, "seed": trial.seed, "agent": trial.agent,
            "episodes": len(episodes), "best_reward": best.get("reward", math.nan), f"best_{score}": best.get(score),
            f"best_{cost}_ratio": best.get(f"{cost}_ratio"), "uniform_reward": uniform.get("reward"),
            f"uniform_{score}": uniform.get(score), "folder": str(folder)}


def aggregate(rows: pd.DataFrame) -> str:
    """``summary.md``: mean ± std over seeds of the best reward and score, per target and agent."""
    score = "best_top1" if "best_top1" in rows else "best_score"
    lines = ["# amc sweep", "", f"{len(rows)} trials; mean ± std over seeds (sample std; n = seeds).", "",
             f"| target | agent | seeds | best reward | {score.replace('best_', 'best ')} | uniform reward |",
             "| --- | --- | --- | --- | --- | --- |"]
    for (target, agent), part in rows.groupby(["target", "agent"], sort=True):
        def ms(column: str) -> str:
            values = part[column].astype(float)
            return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values.mean():.4f}"
        lines.append(f"| {target:g} | {agent} | {len(part)} | {ms('best_reward')} | {ms(score)} | "
                     f"{ms('uniform_reward')} |")
    return "\n".join(lines) + "\n"


def write_front(out: str | Path, trials: Sequence[Trial]) -> Path:
    """The Pareto front over the sweep's trial folders, (re)written as ``OUT/front`` (built beside it, then swapped
    in: a rerun of the sweep refreshes its own front)."""
    from .pareto import write_pareto  # noqa: PLC0415

    out = Path(out)
    fresh, front = out / ".front.tmp", out / "front"
    shutil.rmtree(fresh, ignore_errors=True)
    write_pareto([out / "trials" / t.name for t in trials], fresh)
    shutil.rmtree(front, ignore_errors=True)
    fresh.rename(front)
    return front


def recorded_plan(plan: dict) -> dict:
    """A stored ``sweep.json`` plan with its base's ``prune`` section completed as its trials were scored
    (:func:`amc.config.recorded_prune`): a sweep written before a recovery setting existed still matches when
    rerun with the settings it used."""
    base = plan.get("base") if isinstance(plan.get("base"), dict) else None
    if base is None:
        return plan
    return {**plan, "base": {**base, "prune": {**to_dict(PruneConfig()), **recorded_prune(base.get("prune"))}}}


def run_sweep(base: SearchConfig, trials: Sequence[Trial], out: str | Path, *, address: str | None = None,
              max_concurrent: int | None = None, cpus_per_trial: float = 1.0,
              gpus_per_trial: float | None = None) -> pd.DataFrame:
    """Run ``trials`` of ``base`` through Ray Tune into ``out``; returns the table written to ``sweep.csv``.

    ``address``: a Ray cluster (``auto``, ``ray://host:10001``); default: a local Ray started for the sweep.
    ``max_concurrent``: trials at once (default: as many as the CPUs allow at ``cpus_per_trial`` each).
    ``gpus_per_trial``: GPUs Ray gives each trial (default 1 when ``base.device`` is CUDA, else 0: Ray hides
    GPUs from trials that ask for none). The trials' folders must be reachable from every node (a shared file
    system) when ``address`` is a cluster.
    """
    try:
        import ray  # noqa: PLC0415
        from ray import tune  # noqa: PLC0415
    except ImportError:
        raise AmcError("amc sweep needs Ray Tune: pip install 'amc[ray]' (or 'ray[tune]')") from None
    if not trials:
        raise AmcError("a sweep needs at least one trial (give --targets and --seeds)")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise AmcError(f"{out} is a file; --out must be a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in SWEEP_FILES) if out.is_dir() else []
    if foreign:
        raise AmcError(f"{out} holds files that are not a sweep's ({', '.join(foreign[:3])}); choose a new or empty "
                       f"folder")
    (out / "trials").mkdir(parents=True, exist_ok=True)
    base = portable(base)
    stored = out / "sweep.json"
    plan = {"base": to_dict(base), "trials": [t.__dict__ for t in trials]}
    if stored.is_file() and recorded_plan(json.loads(stored.read_text())) != plan:
        raise AmcError(f"{out} holds a sweep with other settings or trials; choose another --out")
    atomic_write_text(json.dumps(plan, indent=2) + "\n", stored)
    base_dict = to_dict(base)
    gpus = gpus_per_trial if gpus_per_trial is not None else (1.0 if base.device.startswith("cuda") else 0.0)

    def trainable(config: dict) -> None:
        trial = Trial(**config["trial"])
        tune.report(run_trial(base_dict, trial, str(out / "trials" / trial.name)))

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus}),
        param_space={"trial": tune.grid_search([t.__dict__ for t in trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name="ray", storage_path=str(out), verbose=0))
    results = tuner.fit()
    failed = [r.error for r in results if r.error is not None]
    rows = pd.DataFrame([summary_row(out / "trials" / t.name, t) for t in trials
                         if trial_state(out / "trials" / t.name, t.config(base).episodes) == "finished"])
    if not rows.empty:
        atomic_write_text(rows.to_csv(index=False), out / "sweep.csv")
        atomic_write_text(aggregate(rows), out / "summary.md")
    if failed:
        first = str(failed[0]).strip().splitlines()[-1] if str(failed[0]).strip() else type(failed[0]).__name__
        raise AmcError(f"{len(failed)} of {len(trials)} trials failed (first: {first}); run the same command again "
                       f"to resume them ({len(rows)} finished are kept)")
    return rows
