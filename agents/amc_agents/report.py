"""Plots and ``summary.md`` of a search run, regenerated from its files alone (``amc report``)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from amc.errors import AmcError  # noqa: E402

from .store import RunStore  # noqa: E402


def load_run(run: str | Path) -> tuple[pd.DataFrame, dict, dict]:
    """(episodes, baselines, best policy as a dict) of a run folder."""
    store = RunStore(run)
    episodes = store.episodes()
    if episodes.empty:
        raise AmcError(f"{store.folder}/episodes.csv has no episodes")
    best_path = store.folder / "best_policy.json"
    best = store.best_policy().to_dict() if best_path.is_file() else {}
    baselines = {name: {("macs_ratio" if k == "flops_ratio" else k): v for k, v in b.items()}  # runs before schema 2
                 for name, b in store.baselines().items()}
    return episodes, baselines, best


def plot_reward(episodes: pd.DataFrame, baselines: dict, path: Path) -> Path:
    """Per-episode reward and best-so-far, with the uniform policy and the best random episode so far."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(episodes.episode, episodes.reward, s=6, alpha=0.4, label="episode reward")
    ax.plot(episodes.episode, episodes.reward.cummax(), color="C0", label="best so far")
    random_phase = episodes.phase.isin(["warm-up", "random"])
    if random_phase.any():
        rnd = episodes.reward.where(random_phase).cummax()
        ax.plot(episodes.episode, rnd, color="C2", ls="--", label="best random (warm-up) so far")
    if "uniform" in baselines:
        ax.axhline(baselines["uniform"]["reward"], color="C3", ls=":", label="uniform policy")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_best_ratios(best: dict, path: Path) -> Path:
    """Executed preserve ratio of each group (weight policies: kept fraction of each layer) in the best policy."""
    groups = best.get("groups") or [{"name": d["layer"], "executed_ratio": 1 - d["sparsity"]} for d in best.get("layers", [])]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(groups)), 4))
    ax.bar(range(len(groups)), [g["executed_ratio"] for g in groups])
    ax.set_xticks(range(len(groups)), [g["name"] for g in groups], rotation=90, fontsize=6)
    ax.set_ylabel("preserve ratio (kept / original channels or weights)")
    ax.set_ylim(0, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def score_column(episodes: pd.DataFrame) -> str:
    """``top1``, or ``score`` for a run scored by a user's evaluator."""
    return "top1" if "top1" in episodes.columns else "score"


def budget_cost(best: dict) -> str:
    """The cost the run's budget is on (``macs`` or ``params``), from its best policy."""
    return best.get("cost", {}).get("name", "macs") if best else "macs"


def plot_accuracy_vs_cost(episodes: pd.DataFrame, baselines: dict, path: Path, cost: str = "macs") -> Path:
    """Search-split top-1 (or the evaluator's score) against the measured cost ratio (``macs`` or ``params``)
    of every episode."""
    score = score_column(episodes)
    fig, ax = plt.subplots(figsize=(6, 4))
    for phase, part in episodes.groupby("phase"):
        ax.scatter(part[f"{cost}_ratio"], part[score], s=8, alpha=0.5, label=phase)
    if "uniform" in baselines:
        u = baselines["uniform"]
        ax.scatter([u[f"{cost}_ratio"]], [u[score]], marker="*", s=120, color="C3", label="uniform")
    ax.set_xlabel(f"{'MACs' if cost == 'macs' else cost} ratio (measured on the pruned model)")
    ax.set_ylabel("search-split top-1" if score == "top1" else "evaluator score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_text(episodes: pd.DataFrame, baselines: dict, best: dict) -> str:
    metrics = best.get("metrics", {})
    cost = budget_cost(best)
    label = "MACs" if cost == "macs" else cost
    timing_cols = [c for c in episodes.columns if c.endswith("_s") and c != "elapsed_s"]
    medians = episodes[timing_cols].median()
    lines = ["# AMC search summary", "",
             f"- episodes: {len(episodes)} ({', '.join(f'{k}: {v}' for k, v in episodes.phase.value_counts().items())})",
             f"- best reward: {metrics.get('reward', float('nan')):.4f} at episode {metrics.get('episode')} "
             f"({'search-split top-1' if 'top1' in metrics else 'evaluator score'} "
             f"{metrics.get('top1', metrics.get('score', float('nan'))):.4f}"
             + "".join(f", {'MACs' if c == 'macs' else c} ratio {metrics[f'{c}_ratio']:.4f}"
                       for c in ("macs", "params", "latency") if f"{c}_ratio" in metrics) + ")"]
    if "reselected" in metrics:
        r = metrics["reselected"]
        lines.append(f"- re-selected on {r['images']} held-out images outside the search split: search rank "
                     f"{r['search_rank']} of the top-k, held-out reward {r['reward']:.4f}"
                     + (f" (top-1 {r['top1']:.4f})" if "top1" in r else "") + "; every candidate in reselection.csv")
    if "uniform" in baselines:
        u = baselines["uniform"]
        lines.append(f"- uniform policy (ratio {u['ratio']:.4f}): reward {u['reward']:.4f}, "
                     f"{'top-1' if 'top1' in u else 'score'} {u.get('top1', u.get('score', float('nan'))):.4f}, "
                     f"{label} ratio {u[f'{cost}_ratio']:.4f}")
    rnd = episodes[episodes.phase.isin(["warm-up", "random"])]
    if len(rnd):
        lines.append(f"- best random episode ({len(rnd)} random episodes): reward {rnd.reward.max():.4f}")
    lines.append(f"- {label} ratio over all episodes: max {episodes[f'{cost}_ratio'].max():.4f} (target "
                 f"{metrics.get('target')}, mode {metrics.get('mode')})")
    apply = "amc apply best_policy.json" if best.get("granularity", "channel") == "channel" else "amc prune best_policy.json"
    lines += ["", "Median seconds per episode: " + ", ".join(f"{c[:-2]} {v:.3f}" for c, v in medians.items()),
              f"Wall time: {episodes.elapsed_s.max():.0f} s", "",
              "Files: episodes.csv, best_policy.json, top_policies/, reward.png, best_policy_ratios.png, "
              f"accuracy_vs_{cost}.png. Apply the policy with `{apply} --checkpoint ... --out ...`."]
    return "\n".join(lines) + "\n"


def write_report(run: str | Path) -> list[Path]:
    """Regenerate the plots and ``summary.md`` of ``run``; returns the written paths."""
    run = Path(run)
    episodes, baselines, best = load_run(run)
    cost = budget_cost(best)
    paths = [plot_reward(episodes, baselines, run / "reward.png"),
             plot_accuracy_vs_cost(episodes, baselines, run / f"accuracy_vs_{cost}.png", cost)]
    if best:
        paths.append(plot_best_ratios(best, run / "best_policy_ratios.png"))
    (run / "summary.md").write_text(summary_text(episodes, baselines, best))
    paths.append(run / "summary.md")
    return paths
