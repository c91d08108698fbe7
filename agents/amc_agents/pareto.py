"""Pareto fronts over search runs: accuracy (or an evaluator's score) against a cost, and the policies on it.

Every episode of every run is a point (score on the search split, measured cost ratio); the front is the
set no other point beats on both (higher score at a cost at most as high). :func:`write_pareto` writes
``pareto.csv`` (one row per point on the front: run, episode, score, cost ratios, preserve ratios),
``pareto_<cost>.png`` (all episodes, the front, each run's uniform policy) and a policy file per point in
``policies/`` that ``amc apply`` (or ``amc prune`` for weight policies) turns into the scored model: the
kept counts are the episode's, the channels the run's criterion selects from the same checkpoint, with
the run's recovery settings and calibration images.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from amc.errors import AmcError  # noqa: E402
from amc.io import atomic_write_text, open_configured  # noqa: E402
from amc.policy import Policy  # noqa: E402
from amc.structure import trace  # noqa: E402

from .report import load_run, score_column  # noqa: E402
from .store import RunStore  # noqa: E402

RATIO = "ratio:"  # episodes.csv columns of executed preserve ratios per group (or layer)


def pareto_front(points: pd.DataFrame, score: str, cost: str) -> pd.DataFrame:
    """The rows of ``points`` that no other row beats: higher ``score`` at a ``cost`` at most as high.

    Ties (same cost and score) keep their first row. Returned in ascending cost."""
    ordered = points.sort_values([cost, score], ascending=[True, False], kind="stable")
    kept, best = [], -math.inf
    for index, row in ordered.iterrows():
        if row[score] > best:
            kept.append(index)
            best = row[score]
    return points.loc[kept]


def collect(runs: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every episode of ``runs`` with a ``run`` column, each run's uniform baseline as one row)."""
    frames, uniform = [], []
    for run in runs:
        episodes, baselines, _ = load_run(run)
        frames.append(episodes.assign(run=str(run)))
        if "uniform" in baselines:
            uniform.append({**baselines["uniform"], "run": str(run)})
    scores = {score_column(f) for f in frames}
    if len(scores) > 1:
        raise AmcError("the runs are scored differently (top-1 and an evaluator's score); compare like with like")
    return pd.concat(frames, ignore_index=True), pd.DataFrame(uniform)


def plot_front(points: pd.DataFrame, front: pd.DataFrame, uniform: pd.DataFrame, score: str, cost: str,
               path: Path) -> Path:
    """Every episode (per run), the Pareto front as a step line, and each run's uniform policy."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for run, part in points.groupby("run", sort=False):
        ax.scatter(part[f"{cost}_ratio"], part[score], s=6, alpha=0.35, label=Path(run).name)
    ax.step(front[f"{cost}_ratio"], front[score], where="post", color="black", linewidth=1.5, label="Pareto front")
    if not uniform.empty and f"{cost}_ratio" in uniform and score in uniform:
        ax.scatter(uniform[f"{cost}_ratio"], uniform[score], marker="*", s=140, color="C3", zorder=5,
                   label="uniform (each run)")
    ax.set_xlabel(f"{'MACs' if cost == 'macs' else cost} ratio")
    ax.set_ylabel("search-split top-1" if score == "top1" else "evaluator score")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def policy_of(run: str | Path, row: pd.Series, graphs: dict) -> Policy:
    """The policy of one episode of ``run``: its executed kept counts, the run's model, recovery and data."""
    cfg = RunStore(run).config()
    key = (cfg.model.name, cfg.model.checkpoint, cfg.model.exclude)
    if key not in graphs:
        model, spec, _ = open_configured(cfg.model)
        graphs[key] = (trace(model, spec.input_shape, cfg.model.exclude), spec)
    graph, spec = graphs[key]
    ratios = {c[len(RATIO):]: float(row[c]) for c in row.index if c.startswith(RATIO) and not pd.isna(row[c])}
    metrics = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()
               if not str(k).startswith(RATIO) and not pd.isna(v)}
    model_spec = {**spec.to_dict(), "exclude": list(cfg.model.exclude)}
    if cfg.prune.granularity == "weight":
        return Policy.for_weights({n: 1 - r for n, r in ratios.items()}, model=model_spec, input_shape=spec.input_shape,
                                  graph=graph, cost={"name": "params"}, data=cfg.data, metrics=metrics,
                                  prune=cfg.prune, calibration=cfg.calibration)
    unknown = [g for g in ratios if g not in graph.group]
    if unknown:
        raise AmcError(f"{run}: episodes name groups the model lacks ({', '.join(unknown[:3])}): other checkpoint?")
    keep = {g: round(r * graph.group[g].channels) for g, r in ratios.items()}
    return Policy.build(graph, keep, model=model_spec, cost={"name": cfg.env.cost}, prune=cfg.prune,
                        calibration=cfg.calibration, data=cfg.data, metrics=metrics, seed=cfg.seed)


def write_pareto(runs: Sequence[str | Path], out: str | Path, cost: str | None = None) -> list[Path]:
    """Write the Pareto front of ``runs`` into the folder ``out`` (created; must be new or empty).

    ``cost``: the cost ratio on the x axis (``macs``, ``params``, ``latency``; default: the first run's
    budgeted cost). Returns the written paths."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AmcError(f"{out} exists and is not an empty folder; choose another --pareto folder")
    points, uniform = collect(runs)
    cost = cost or RunStore(runs[0]).config().env.cost.replace("flops", "macs")
    if f"{cost}_ratio" not in points:
        raise AmcError(f"the runs did not record the {cost} of their episodes (recorded: "
                       f"{', '.join(c[:-6] for c in points.columns if c.endswith('_ratio') and ':' not in c)})")
    score = score_column(points)
    front = pareto_front(points, score, f"{cost}_ratio")
    (out / "policies").mkdir(parents=True, exist_ok=True)
    graphs: dict = {}
    names = []
    index = {str(run): i for i, run in enumerate(runs)}  # runs may share a folder name (a/seed0, b/seed0)
    for _, row in front.iterrows():
        name = f"run{index[row['run']]}-{Path(row['run']).name}-episode{int(row['episode'])}.json"
        policy_of(row["run"], row, graphs).save(out / "policies" / name)
        names.append(f"policies/{name}")
    table = front.assign(policy=names)
    first = ["run", "episode", score, f"{cost}_ratio", "reward", "policy"]
    table = table[first + [c for c in table.columns if c not in first]]
    atomic_write_text(table.to_csv(index=False), out / "pareto.csv")
    plot = plot_front(points, front, uniform, score, cost, out / f"pareto_{cost}.png")
    return [out / "pareto.csv", plot, out / "policies"]
