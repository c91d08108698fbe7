"""Summarise the runs of ``benchmarks/method_comparison.sh``: uniform vs every searcher (DDPG, TD3, SAC, random, TPE).

For the run folders ``results/benchmarks/NAME/METHOD-seed*`` (METHOD: the agent, with ``_RULE`` when the
budget rule was set) this

- reads each run's best search-split reward, its best-so-far curve, MACs ratio and wall time;
- rebuilds, with the library's :func:`amc.apply_policy` and the policy's recorded recovery settings and
  calibration images, the model each run's best policy was scored as, and the model of the uniform
  policy scored in the runs (``uniform_policy.json``), and records their test top-1 **without fine-tuning**;
- checks that each rebuilt best model scores on the search split what the search recorded
  (``search_top1_rebuilt``; a mismatch means the search scored a model its policy file does not rebuild);
- counts the episodes each run needed for its best-so-far search-split top-1 to beat the uniform
  policy's by 2 points;
- with ``--reselect``, re-scores each run's top-k policies (``top_policies/``) on the held-out images the
  search never scored (``holdout_rest``) and records the test top-1 of the one that scores best there
  (``test_top1_reselected``) and the best test top-1 among them (``test_top1_top_k_max``): how much of the
  gap between search split and test is the winner's curse of selecting on the search split;
- with ``--finetune-epochs N``, fine-tunes for the same number of epochs (:func:`amc.training.train`)
  each method's best policy (``--finetune best``: the seed with the best search reward; ``N``: its N best
  seeds by search reward; ``all``: every seed), the uniform policy and the dense model; ``--distill W ...`` fine-tunes the pruned models
  once per weight W, distilling from the dense model when W > 0 (column ``test_top1_finetuned_kdW``; the
  dense model, the teacher, is fine-tuned plainly once);
- writes ``runs.csv`` (tidy, one row per run), ``summary.csv``, ``table.md``, ``comparison.png`` and
  ``record.json`` (machine, versions, command) into ``results/benchmarks/NAME/``, and NAME's entry of
  ``results/benchmarks/search-quality.json`` (per method: per-seed test top-1 without and with
  fine-tuning, search-split score, episodes).

    python benchmarks/compare_methods.py NAME --checkpoint CKPT --data-dir DIR [--reselect] [--finetune-epochs 1 --finetune best]
        [--distill 0 0.9]
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from amc import Policy, apply_policy, calibration_for  # noqa: E402
from amc.config import TrainConfig, replace  # noqa: E402
from amc.data import load_splits, normalization  # noqa: E402
from amc.errors import AmcError  # noqa: E402
from amc.evaluation import evaluate  # noqa: E402
from amc.io import atomic_write_text, open_model  # noqa: E402
from amc.provenance import provenance  # noqa: E402
from amc.stats_cache import StatsCache  # noqa: E402
from amc.training import train  # noqa: E402
from amc_agents import RunStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FINETUNE_LR = 0.01


class Evaluator:
    """Applies policies to one dense checkpoint and scores them on the test split (data loaded once)."""

    def __init__(self, checkpoint: str, data_dir: str, model_name: str | None = None):
        self.model, self.spec, _ = open_model(model_name, checkpoint)
        self.data_dir = data_dir
        self._splits = None
        self._dense_test_top1: float | None = None
        self._normalized: dict[str, tuple] = {}
        self._cache_dir = tempfile.TemporaryDirectory()  # calibration statistics gathered once for the top-k
        self.cache = StatsCache(self._cache_dir.name)

    def data(self, policy: Policy):
        return replace(policy.data, data_dir=self.data_dir)

    def splits(self, policy: Policy):
        if self._splits is None:
            self._splits = load_splits(self.data(policy), ("train", "search", "holdout_rest", "test"),
                                       num_classes=self.spec.num_classes)
        return self._splits

    def normalized(self, policy: Policy, split: str):
        """(images, labels) of ``split``, normalised once per split (every policy of a folder shares its data)."""
        if split not in self._normalized:
            part = self.splits(policy)[split]
            self._normalized[split] = (normalization(self.data(policy))(part.images), part.labels)
        return self._normalized[split]

    def top1(self, model, policy: Policy, split: str = "test") -> float:
        return evaluate(model, *self.normalized(policy, split))["top1"]

    def dense_test_top1(self, policy: Policy) -> float:
        if self._dense_test_top1 is None:
            self._dense_test_top1 = self.top1(self.model, policy)
        return self._dense_test_top1

    def rebuild(self, policy: Policy, cache: StatsCache | None = None):
        """The model the search scored for ``policy`` (its recorded recovery settings and calibration images)."""
        calibration = calibration_for(policy, data=self.data(policy), train=self.splits(policy)["train"])
        return apply_policy(self.model, policy, calibration=calibration, cache=cache)

    def apply(self, policy_path: Path) -> dict:
        """Test top-1 of the scored model of ``policy_path``, and its search-split top-1."""
        policy = Policy.load(policy_path)
        applied = self.rebuild(policy)
        macs = applied.costs["macs"]
        return {"macs_ratio_measured": macs[1] / macs[0], "test_top1": self.top1(applied.model, policy),
                "search_top1_rebuilt": self.top1(applied.model, policy, "search"),
                "dense_test_top1": self.dense_test_top1(policy)}

    def finetune(self, policy_path: Path, epochs: int, out: Path, dense: bool = False, distill: float = 0.0) -> float:
        """Test top-1 after fine-tuning ``epochs`` epochs the scored model of ``policy_path`` (``dense``: a copy
        of the dense model instead), distilling from the dense model with weight ``distill`` (0: plain
        cross-entropy). A finished ``out`` (its metrics.csv has ``epochs`` rows) is read back, an interrupted
        one resumed."""
        done = finished_top1(out, epochs)
        if done is not None:
            return done
        policy = Policy.load(policy_path)
        model = copy.deepcopy(self.model) if dense else self.rebuild(policy).model
        history = train(model, self.spec, self.splits(policy)["train"], self.splits(policy)["test"],
                        normalization(self.data(policy)), TrainConfig(epochs=epochs, lr=FINETUNE_LR, distill=distill),
                        out, resume=(out / "last.pt").is_file(), teacher=self.model if distill > 0 else None)
        return float(history.val_top1.iloc[-1])

    def reselect(self, run: Path) -> dict:
        """Re-score ``run``'s top-k policies on ``holdout_rest``: the test top-1 of the best one there (ties: the
        better search rank), its rank, and the best test top-1 among all k."""
        scored = []
        for path in (run / "top_policies").glob("policy_*.json"):
            policy = Policy.load(path)
            model = self.rebuild(policy, self.cache).model
            scored.append((self.top1(model, policy, "holdout_rest"), -int(path.stem.split("_")[1]),
                           self.top1(model, policy)))
        rest, rank, test = max(scored)
        return {"reselected_rank": -rank, "reselect_top1": rest, "test_top1_reselected": test,
                "test_top1_top_k_max": max(t for *_, t in scored), "top_k": len(scored)}


def _finetune_job(checkpoint: str, data_dir: str, model_name: str, policy_path: Path, epochs: int, out: Path,
                  dense: bool, distill: float) -> float:
    """One fine-tune in a worker process of 1 thread (its own :class:`Evaluator`: the data are loaded per job)."""
    import torch
    torch.set_num_threads(1)
    return Evaluator(checkpoint, data_dir, model_name).finetune(policy_path, epochs, out, dense, distill)


def finetune_count(value: str) -> int:
    """How many of each method's seeds ``--finetune`` names (the best by search reward first): ``best`` 1, ``all``
    every one, ``N`` N; anything else is refused."""
    if value in ("best", "all"):
        return 1 if value == "best" else 10**9
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"compare_methods: --finetune takes best, all or a whole number >= 1, got {value}")
    return int(value)


def distill_suffix(weight: float) -> str:
    """What names a fine-tune with distillation weight ``weight``: '' for plain cross-entropy, else ``_kdW``."""
    return f"_kd{weight:g}" if weight > 0 else ""


def finetuned_column(weight: float) -> str:
    """The runs.csv / summary.csv column of the test top-1 after fine-tuning with distillation weight ``weight``."""
    return "test_top1_finetuned" + distill_suffix(weight)


FINETUNED_COLUMN = re.compile(r"test_top1_finetuned(_kd[\d.e-]+)?")  # what finetuned_column names


def finetune_folder(folder: Path, name: str, epochs: int, weight: float) -> Path:
    """Where the fine-tune of ``name`` (``uniform``, ``dense``, ``METHOD-seedN``) lives: ``models/NAME-ftN[-kdW]``."""
    return folder / "models" / f"{name}-ft{epochs}{distill_suffix(weight).replace('_', '-')}"


def finished_top1(out: Path, epochs: int) -> float | None:
    """The final test top-1 of a finished fine-tune folder (its metrics.csv has ``epochs`` rows), else None."""
    if not (out / "metrics.csv").is_file():
        return None
    done = pd.read_csv(out / "metrics.csv")
    return float(done.val_top1.iloc[-1]) if len(done) == epochs else None


def finetune_in_parallel(jobs: dict[tuple[str, float], tuple[Path, bool]], args: argparse.Namespace, model_name: str,
                         folder: Path) -> dict[tuple[str, float], float]:
    """Test top-1 after ``args.finetune_epochs`` epochs for each ``(name, distill): (policy, dense)``, ``args.jobs``
    at a time (``models/NAME-ftN[-kdW]``; finished ones are read back, interrupted ones resumed)."""
    from concurrent.futures import ProcessPoolExecutor
    epochs = args.finetune_epochs
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {(name, w): pool.submit(_finetune_job, args.checkpoint, args.data_dir, model_name, policy, epochs,
                                          finetune_folder(folder, name, epochs, w), dense, w)
                   for (name, w), (policy, dense) in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def episodes_to_beat(episodes: pd.DataFrame, uniform_top1: float, margin: float = 0.02) -> float:
    """First episode whose best-so-far search top-1 is at least ``margin`` above the uniform policy's (nan: never)."""
    hit = episodes.index[episodes.top1.cummax() >= uniform_top1 + margin - 1e-12]
    return float(episodes.episode[hit[0]]) if len(hit) else float("nan")


def run_name(run: Path) -> tuple[str, int]:
    """(method, seed) of a run folder named METHOD-seedN."""
    method, seed = re.fullmatch(r"(\w+)-seed(\d+)", run.name).groups()
    return method, int(seed)


def run_rows(folder: Path, evaluator: Evaluator, reselect: bool = False, previous: pd.DataFrame | None = None) -> list[dict]:
    """One row per finished run; ``previous`` rows (an earlier ``runs.csv``) are reused for runs they already
    cover (same method, seed, episode count and best search reward; with ``reselect``, re-selected too)."""
    rows = []
    for run in sorted(folder.glob("*-seed*")):
        if not (run / "best_policy.json").is_file():
            continue
        method, seed = run_name(run)
        store = RunStore(run)
        episodes = store.episodes()
        if len(episodes) < store.config().episodes:  # still running, or stopped early
            continue
        best = episodes.loc[episodes.reward.idxmax()]
        uniform = store.baselines()["uniform"]
        if previous is not None:
            same = previous[(previous.method == method) & (previous.seed == int(seed))
                            & (previous.episodes == len(episodes)) & (previous.search_reward == float(best.reward))]
            if len(same) and (not reselect or same.get("test_top1_reselected", pd.Series(dtype=float)).notna().all()):
                rows.append(same.iloc[0].to_dict())
                continue
        rows.append({"method": method, "seed": int(seed), "episodes": len(episodes),
                     "episodes_to_beat_uniform_by_2pts": episodes_to_beat(episodes, uniform["top1"]),
                     "search_reward": float(best.reward), "search_top1": float(best.top1),
                     "best_episode": int(best.episode), "wall_s": float(episodes.elapsed_s.iloc[-1]),
                     "uniform_search_reward": uniform["reward"], **evaluator.apply(run / "best_policy.json"),
                     **(evaluator.reselect(run) if reselect else {})})
    return rows


def plot_best_reward(ax, folder: Path, uniform_reward: float, methods: list[str]) -> None:
    """Best-so-far search reward against episodes: mean over seeds (line) and range (band) per method."""
    for i, method in enumerate(methods):
        color = f"C{i if i < 3 else i + 1}"  # C3 is the uniform line
        curves = [pd.read_csv(r / "episodes.csv").set_index("episode").reward.cummax()
                  for r in sorted(folder.glob(f"{method}-seed*")) if (r / "episodes.csv").is_file()]
        if not curves:
            continue
        table = pd.concat(curves, axis=1)
        ax.plot(table.index, table.mean(axis=1), color=color, label=f"{method} (mean of {len(curves)} seeds)")
        ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.2)
    ax.axhline(uniform_reward, color="C3", ls=":", label="uniform policy")
    ax.set_xlabel("evaluated episodes")
    ax.set_ylabel("best search-split reward (-error)")
    ax.legend(loc="lower right", fontsize=8)


def plot_test_accuracy(ax, summary: pd.DataFrame) -> None:
    """Test top-1 per method, without fine-tuning (mean, with min-max whiskers) and after each fine-tuning."""
    x = range(len(summary))
    tuned = [c for c in summary if FINETUNED_COLUMN.fullmatch(c) and summary[c].notna().any()]
    width = 0.8 / (1 + len(tuned))
    ax.bar([i - 0.4 + width / 2 for i in x], summary.test_top1_mean * 100, width=width, label="no fine-tune",
           yerr=[(summary.test_top1_mean - summary.test_top1_min) * 100, (summary.test_top1_max - summary.test_top1_mean) * 100])
    for k, column in enumerate(tuned, start=1):
        label = "fine-tuned" + (f", distilled (weight {column.rsplit('_kd', 1)[1]})" if "_kd" in column else "")
        ax.bar([i - 0.4 + width * (k + 0.5) for i in x], summary[column] * 100, width=width, label=label)
    ax.set_xticks(list(x), summary.method)
    low = float(summary.test_top1_min.min()) * 100
    ax.set_ylim(max(0, low - 10), 100)
    ax.set_ylabel("test top-1 (%)")
    ax.legend(loc="upper left", fontsize=8)


def markdown_table(summary: pd.DataFrame) -> str:
    """Method x (search reward, test top-1 before/after fine-tuning, episodes to beat uniform, MACs, wall time)."""
    def pm(mean, std, scale=1.0, digits=4):
        return f"{mean * scale:.{digits}f}" + ("" if pd.isna(std) else f" ± {std * scale:.{digits}f}")

    reselected = "test_top1_reselected_mean" in summary
    distilled = [c for c in summary if FINETUNED_COLUMN.fullmatch(c) and "_kd" in c]
    lines = ["| method | runs | episodes per run | search reward (−error), mean ± std | test top-1 % no fine-tune, "
             "mean ± std | " + ("test top-1 % no fine-tune, top-k re-selected on the rest of the holdout | "
                                 "best test top-1 % among the top-k | " if reselected else "") +
             "test top-1 % fine-tuned | " +
             "".join(f"test top-1 % fine-tuned, distilled from dense (weight {c.rsplit('_kd', 1)[1]}) | "
                     for c in distilled) +
             "episodes to beat uniform by 2 pts (median) | MACs ratio (measured, max) | wall time per run (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if reselected else "")
             + " --- |" * len(distilled)]

    def tuned_cell(r, column: str) -> str:
        value = r.get(column)
        if value is None or pd.isna(value):
            return "–"
        runs = r.get(column.replace("test_top1_finetuned", "finetuned_runs"))
        return pm(value, r.get(column + "_std"), 100, 2) + f" ({int(runs)} run(s))"

    for _, r in summary.iterrows():
        tuned = " | ".join(tuned_cell(r, c) for c in ["test_top1_finetuned", *distilled])
        wall = "–" if pd.isna(r.wall_s) else f"{r.wall_s:.0f}"
        beat = "–" if pd.isna(r.get("episodes_to_beat_uniform")) else f"{r.episodes_to_beat_uniform:.0f}"
        std = r.search_reward_std if r.method != "uniform" else r.search_reward_std_uniform
        extra = ""
        if reselected:
            extra = ("– | – | " if pd.isna(r.test_top1_reselected_mean) else
                     f"{pm(r.test_top1_reselected_mean, r.test_top1_reselected_std, 100, 2)} | "
                     f"{pm(r.test_top1_top_k_max_mean, r.test_top1_top_k_max_std, 100, 2)} | ")
        lines.append(f"| {r.method} | {r.runs} | {r.episodes} | {pm(r.search_reward_mean, std)} | "
                     f"{pm(r.test_top1_mean, r.test_top1_std, 100, 2)} | {extra}{tuned} | {beat} | {r.macs_ratio:.4f} | "
                     f"{wall} |")
    if "dense_finetuned" in summary:
        lines += ["", f"Dense model fine-tuned for the same epochs: {summary.dense_finetuned.iloc[0] * 100:.2f}% test top-1."]
    gaps = summary.rebuilt_gap_max.dropna()
    if len(gaps):
        lines += ["", f"Rebuilt best models (`amc.apply_policy`, no cache) against the search-split top-1 the searches "
                      f"recorded: largest difference {gaps.max() * 100:.2f} points over {int(summary.runs[gaps.index].sum())} runs."]
    return "\n".join(lines) + "\n"


def write_quality_json(path: Path, name: str, model: str, runs: pd.DataFrame, record: dict) -> None:
    """NAME's entry of the machine-readable summary (other entries are kept)."""
    data = json.loads(path.read_text()) if path.is_file() else {}

    def num(v):
        return None if v is None or pd.isna(v) else float(v)

    methods = {}
    for method, part in runs.groupby("method", sort=False):
        methods[method] = {"seeds": [int(x) for x in part.seed],
                           "test_top1_no_finetune": [num(x) for x in part.test_top1],
                           "test_top1_finetuned": [num(x) for x in part.get("test_top1_finetuned", [None] * len(part))],
                           **{column: [num(x) for x in part[column]] for column in runs
                              if column.startswith("test_top1_finetuned_kd")},
                           "test_top1_reselected": [num(x) for x in part.get("test_top1_reselected", [None] * len(part))],
                           "search_score_reward": [num(x) for x in part.get("search_reward", [None] * len(part))],
                           "search_top1": [num(x) for x in part.get("search_top1", [None] * len(part))],
                           "episodes": [int(x) for x in part.episodes]}
    data[name] = {"model": model, "target_macs": 0.5, "methods": methods, "command": record["command"],
                  "finetune": record["finetune"], "when": record["when"]}
    atomic_write_text(json.dumps(data, indent=1) + "\n", path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="folder under results/benchmarks")
    p.add_argument("--checkpoint", required=True, help="the dense model the searches pruned")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--results", default=str(ROOT / "results" / "benchmarks"),
                   help="folder holding NAME and search-quality.json (default results/benchmarks)")
    p.add_argument("--update", action="store_true",
                   help="reuse the rows of an existing runs.csv for the runs it already covers (fine-tunes are redone)")
    p.add_argument("--reselect", action="store_true",
                   help="also re-score every run's top-k policies on the held-out images the search never scored")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--finetune", default="best", metavar="best|all|N",
                   help="fine-tune each method's best-search-reward seed, every seed, or its N best-search seeds")
    p.add_argument("--finetune-methods", nargs="+", metavar="METHOD",
                   help="fine-tune only these methods' runs (e.g. ddpg_clamp; default: every method); finished "
                        "fine-tunes of the others are still read back")
    p.add_argument("--distill", nargs="+", type=float, default=[0.0], metavar="W",
                   help="fine-tune the pruned models once per distillation weight W in [0, 1] (0: plain cross-entropy; "
                        "W > 0: distil from the dense model, temperature 4); default 0")
    p.add_argument("--jobs", type=int, default=1,
                   help="fine-tunes at a time, one process of 1 thread each (interrupted ones resume on a rerun)")
    args = p.parse_args(argv)
    folder = Path(args.results) / args.name
    started = time.time()
    if args.jobs < 1 or args.finetune_epochs < 0:
        raise SystemExit(f"compare_methods: --jobs must be at least 1 and --finetune-epochs at least 0, got "
                         f"{args.jobs} and {args.finetune_epochs}")
    if not all(0 <= w <= 1 for w in args.distill) or len({distill_suffix(w) for w in args.distill}) != len(args.distill):
        raise SystemExit(f"compare_methods: --distill takes distinct weights in [0, 1], got {args.distill}")
    if args.distill != [0.0] and args.finetune_epochs == 0:
        raise SystemExit("compare_methods: --distill applies to fine-tuning: give --finetune-epochs")
    seeds_to_finetune = finetune_count(args.finetune)
    if not folder.is_dir():
        raise SystemExit(f"compare_methods: no folder {folder}")
    methods = {run_name(p.parent)[0] for p in folder.glob("*-seed*/best_policy.json")}
    unknown = sorted(set(args.finetune_methods or ()) - methods)
    if unknown:
        raise SystemExit(f"compare_methods: no finished runs of --finetune-methods {', '.join(unknown)} in {folder}")
    finished = sorted(folder.glob("*-seed*/uniform_policy.json"))
    try:  # a plain state_dict checkpoint needs the architecture's name: the one the runs recorded
        evaluator = Evaluator(args.checkpoint, args.data_dir, Policy.load(finished[0]).model["name"] if finished else None)
    except AmcError as exc:
        raise SystemExit(f"compare_methods: {exc}") from None
    previous = None
    if args.update and (folder / "runs.csv").is_file():
        previous = pd.read_csv(folder / "runs.csv")
        previous = previous[~previous.method.isin(["uniform", "dense"])]
        previous = previous.drop(columns=[c for c in previous if "finetuned" in c])
    runs = pd.DataFrame(run_rows(folder, evaluator, args.reselect, previous))
    if runs.empty:
        raise SystemExit(f"no finished runs in {folder}")
    runs["rebuilt_gap"] = (runs.search_top1_rebuilt - runs.search_top1).abs()
    first = finished[0]  # the same uniform policy and model in every run
    uniform = {"method": "uniform", "seed": -1, "episodes": 1, "search_reward": runs.uniform_search_reward.mean(),
               **evaluator.apply(first)}
    runs = pd.concat([runs, pd.DataFrame([uniform])], ignore_index=True)
    summary = runs.groupby("method", sort=False).agg(
        runs=("seed", "size"), episodes=("episodes", "max"), search_reward_mean=("search_reward", "mean"),
        search_reward_std=("search_reward", "std"), test_top1_mean=("test_top1", "mean"),
        test_top1_std=("test_top1", "std"), test_top1_min=("test_top1", "min"), test_top1_max=("test_top1", "max"),
        macs_ratio=("macs_ratio_measured", "max"), wall_s=("wall_s", "mean"),
        episodes_to_beat_uniform=("episodes_to_beat_uniform_by_2pts", "median"), rebuilt_gap_max=("rebuilt_gap", "max"),
        **({f"{c}_{f}": (c, f) for c in ("test_top1_reselected", "test_top1_top_k_max") for f in ("mean", "std")}
           if args.reselect else {})).reset_index()
    summary["search_reward_std_uniform"] = runs.uniform_search_reward.std()
    if args.finetune_epochs > 0:
        searched = runs[runs.method != "uniform"].sort_values("search_reward", ascending=False)
        if args.finetune_methods:
            searched = searched[searched.method.isin(args.finetune_methods)]
        chosen = searched.groupby("method", sort=False).head(seeds_to_finetune)
        jobs = {("dense", 0.0): (first, True)}  # the longest first; the teacher is fine-tuned plainly once
        for w in args.distill:
            jobs[("uniform", w)] = (first, False)
            jobs |= {(f"{r.method}-seed{r.seed}", w): (folder / f"{r.method}-seed{r.seed}" / "best_policy.json", False)
                     for _, r in chosen.iterrows()}
        finetuned = finetune_in_parallel(jobs, args, Policy.load(first).model["name"], folder)
        dense = {"method": "dense", "seed": -1, "episodes": 0, "test_top1": uniform["dense_test_top1"],
                 "test_top1_finetuned": finetuned[("dense", 0.0)]}
        for w in args.distill:  # every run with a finished fine-tune, also those --finetune-methods left out now
            column = finetuned_column(w)
            for i, r in runs.iterrows():
                name = "uniform" if r.method == "uniform" else f"{r.method}-seed{r.seed}"
                runs.loc[i, column] = finished_top1(finetune_folder(folder, name, args.finetune_epochs, w),
                                                    args.finetune_epochs)
            tuned = runs.groupby("method", sort=False)[column].agg(["mean", "std", "count"])
            summary[column] = summary.method.map(tuned["mean"])
            summary[column + "_std"] = summary.method.map(tuned["std"])
            summary["finetuned_runs" + distill_suffix(w)] = summary.method.map(tuned["count"])
        runs = pd.concat([runs, pd.DataFrame([dense])], ignore_index=True)
        summary["dense_finetuned"] = dense["test_top1_finetuned"]
    runs.to_csv(folder / "runs.csv", index=False)
    summary.to_csv(folder / "summary.csv", index=False)
    atomic_write_text(markdown_table(summary), folder / "table.md")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    plot_best_reward(axes[0], folder, float(uniform["search_reward"]), [m for m in summary.method if m != "uniform"])
    plot_test_accuracy(axes[1], summary)
    model = Policy.load(first).model["name"]
    images = Policy.load(first).data.search_images
    fig.suptitle(f"{model}, 50% MACs target, JPEG CIFAR-10 (search split {images:,} held-out train images; test 10,000)")
    fig.tight_layout()
    fig.savefig(folder / "comparison.png", dpi=120)
    plt.close(fig)
    info = provenance(command=" ".join([Path(sys.executable).name, *sys.argv]))
    record = {"command": info["command"], "seconds": time.time() - started, "machine": info["machine"],
              "versions": info["versions"],
              "finetune": {"epochs": args.finetune_epochs, "lr": FINETUNE_LR, "function": "amc.training.train",
                           "distill": args.distill, "temperature": TrainConfig().temperature,
                           "teacher": "the dense model (distill > 0); the dense model itself is fine-tuned plainly"},
              "test_models": "amc.apply_policy with each policy's recorded recovery settings and calibration images",
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(json.dumps(record, indent=2) + "\n", folder / "record.json")
    write_quality_json(Path(args.results) / "search-quality.json", args.name, model, runs, record)
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
