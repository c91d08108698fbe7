"""Summarise the runs of ``benchmarks/method_comparison.sh``: uniform vs random search vs DDPG.

For the run folders ``results/benchmarks/NAME/{ddpg,random}-seed*`` this

- reads each run's best search-split reward, its best-so-far curve, FLOPs ratio and wall time;
- builds the compact model of each run's best policy and of the uniform policy with ``amc apply``
  (the user-facing command) and records test top-1 **without fine-tuning**;
- with ``--finetune-epochs N``, fine-tunes the policy with the best search reward (over methods and
  seeds) and the uniform policy with the same budget (``amc apply --finetune-epochs N``);
- writes ``runs.csv`` (tidy, one row per run and stage), ``table.md``, ``comparison.png`` and
  ``record.json`` (machine, versions, commands) into ``results/benchmarks/NAME/``.

    python benchmarks/compare_methods.py NAME --checkpoint CKPT --data-dir DIR [--finetune-epochs 1]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amc.checkpoint import atomic_write_text  # noqa: E402
from amc.policy import provenance  # noqa: E402


def amc(*args: str) -> list[str]:
    """Run the amc CLI (same interpreter) and return the command line that was run."""
    cmd = [sys.executable, "-m", "amc.cli", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr.strip()}")
    return cmd


def apply_report(path: Path) -> dict:
    """The ``amc apply`` report saved inside a compact model file."""
    extras = torch.load(path, map_location="cpu", weights_only=False)
    return extras["apply_report"]


def apply(policy: Path, out: Path, checkpoint: str, data_dir: str, finetune_epochs: int = 0) -> dict:
    """Compact model of ``policy`` with test top-1 before (and after) fine-tuning; cached in ``out``."""
    if not out.is_file() or out.stat().st_mtime < policy.stat().st_mtime:  # cached unless the policy changed
        amc("apply", str(policy), "--checkpoint", checkpoint, "--dataset", "cifar10", "--data-dir", data_dir,
            "--out", str(out), "--finetune-epochs", str(finetune_epochs))
    rows = {r["model"]: r for r in apply_report(out)["rows"]}
    result = {"flops_ratio_measured": float(rows["compact"]["flops_ratio"]),
              "test_top1": float(rows["compact"]["test_top1"]), "dense_test_top1": float(rows["dense"]["test_top1"])}
    if "compact+finetune" in rows:
        result["test_top1_finetuned"] = float(rows["compact+finetune"]["test_top1"])
    return result


def run_rows(folder: Path, checkpoint: str, data_dir: str) -> list[dict]:
    rows = []
    for run in sorted(folder.glob("*-seed*")):
        if not (run / "best_policy.json").is_file():
            continue
        method, seed = re.fullmatch(r"(\w+)-seed(\d+)", run.name).groups()
        episodes = pd.read_csv(run / "episodes.csv")
        best = episodes.loc[episodes.reward.idxmax()]
        uniform = json.loads((run / "baselines.json").read_text())["uniform"]
        rows.append({"method": method, "seed": int(seed), "episodes": len(episodes),
                     "search_reward": float(best.reward), "search_top1": float(best.top1),
                     "best_episode": int(best.episode), "wall_s": float(episodes.elapsed_s.iloc[-1]),
                     "uniform_search_reward": uniform["reward"],
                     **apply(run / "best_policy.json", folder / "models" / f"{run.name}.pt", checkpoint, data_dir)})
    return rows


def plot_best_reward(ax, folder: Path, uniform_reward: float) -> None:
    """Best-so-far search reward against episodes: mean over seeds (line) and range (band) per method."""
    for color, method in (("C0", "ddpg"), ("C2", "random")):
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
    """Test top-1 per method, without fine-tuning (mean, with min-max whiskers) and after fine-tuning."""
    x = range(len(summary))
    ax.bar([i - 0.2 for i in x], summary.test_top1_mean * 100, width=0.4, label="no fine-tune",
           yerr=[(summary.test_top1_mean - summary.test_top1_min) * 100, (summary.test_top1_max - summary.test_top1_mean) * 100])
    if "test_top1_finetuned" in summary and summary.test_top1_finetuned.notna().any():
        ax.bar([i + 0.2 for i in x], summary.test_top1_finetuned * 100, width=0.4, label="fine-tuned (best policy)")
    ax.set_xticks(list(x), summary.method)
    low = float(summary.test_top1_min.min()) * 100
    ax.set_ylim(max(0, low - 10), 100)
    ax.set_ylabel("test top-1 (%)")
    ax.legend(loc="upper left", fontsize=8)


def markdown_table(summary: pd.DataFrame) -> str:
    """Method x (search reward, test top-1 before/after fine-tuning, FLOPs ratio, episodes, wall time)."""
    def pm(mean, std, scale=1.0, digits=4):
        return f"{mean * scale:.{digits}f}" + ("" if pd.isna(std) else f" ± {std * scale:.{digits}f}")

    lines = ["| method | runs | episodes per run | search reward (−error), mean ± std | test top-1 % no fine-tune, "
             "mean ± std | test top-1 % fine-tuned (best policy) | FLOPs ratio (measured, max) | wall time per run (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for _, r in summary.iterrows():
        tuned = r.get("test_top1_finetuned")
        tuned = "–" if tuned is None or pd.isna(tuned) else f"{tuned * 100:.2f}"
        wall = "–" if pd.isna(r.wall_s) else f"{r.wall_s:.0f}"
        std = r.search_reward_std if r.method != "uniform" else r.search_reward_std_uniform
        lines.append(f"| {r.method} | {r.runs} | {r.episodes} | {pm(r.search_reward_mean, std)} | "
                     f"{pm(r.test_top1_mean, r.test_top1_std, 100, 2)} | {tuned} | {r.flops_ratio:.4f} | {wall} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="folder under results/benchmarks")
    p.add_argument("--checkpoint", required=True, help="the dense model the searches pruned")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--finetune-epochs", type=int, default=0)
    args = p.parse_args(argv)
    folder = ROOT / "results" / "benchmarks" / args.name
    (folder / "models").mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = pd.DataFrame(run_rows(folder, args.checkpoint, args.data_dir))
    if runs.empty:
        raise SystemExit(f"no finished runs in {folder}")
    model = json.loads(next(folder.glob("*-seed*/best_policy.json")).read_text())["model"]["name"]
    uniform_policy = folder / "models" / "uniform_policy.json"
    if not uniform_policy.is_file():
        amc("uniform", model, "--checkpoint", args.checkpoint, "--target", "0.5", "--out", str(uniform_policy))
    uniform = {"method": "uniform", "seed": -1, "episodes": 1, "search_reward": runs.uniform_search_reward.mean(),
               **apply(uniform_policy, folder / "models" / "uniform.pt", args.checkpoint, args.data_dir)}
    runs = pd.concat([runs, pd.DataFrame([uniform])], ignore_index=True)
    summary = runs.groupby("method", sort=False).agg(
        runs=("seed", "size"), episodes=("episodes", "max"), search_reward_mean=("search_reward", "mean"),
        search_reward_std=("search_reward", "std"), test_top1_mean=("test_top1", "mean"),
        test_top1_std=("test_top1", "std"), test_top1_min=("test_top1", "min"), test_top1_max=("test_top1", "max"),
        flops_ratio=("flops_ratio_measured", "max"), wall_s=("wall_s", "mean")).reset_index()
    summary["search_reward_std_uniform"] = runs.uniform_search_reward.std()
    if args.finetune_epochs > 0:  # the best searched policy (any method, any seed) and the uniform one
        best = runs[runs.method != "uniform"].sort_values("search_reward", ascending=False).iloc[0]
        run = folder / f"{best.method}-seed{best.seed}"
        tuned = {best.method: apply(run / "best_policy.json", folder / "models" / f"{run.name}-ft{args.finetune_epochs}.pt",
                                    args.checkpoint, args.data_dir, args.finetune_epochs)}
        tuned[best.method]["seed"] = int(best.seed)
        tuned["uniform"] = apply(uniform_policy, folder / "models" / f"uniform-ft{args.finetune_epochs}.pt",
                                 args.checkpoint, args.data_dir, args.finetune_epochs)
        summary["test_top1_finetuned"] = summary.method.map(lambda m: tuned.get(m, {}).get("test_top1_finetuned"))
        summary["finetuned_seed"] = summary.method.map(lambda m: tuned.get(m, {}).get("seed"))
    runs.to_csv(folder / "runs.csv", index=False)
    summary.to_csv(folder / "summary.csv", index=False)
    atomic_write_text(markdown_table(summary), folder / "table.md")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    plot_best_reward(axes[0], folder, float(uniform["search_reward"]))
    plot_test_accuracy(axes[1], summary)
    fig.suptitle(f"{model}, 50% FLOPs target, JPEG CIFAR-10 (search split 2,000 train images; test 10,000)")
    fig.tight_layout()
    fig.savefig(folder / "comparison.png", dpi=120)
    plt.close(fig)
    info = provenance()
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "seconds": time.time() - started,
              "machine": info["machine"], "versions": info["versions"],
              "finetune": {"epochs": args.finetune_epochs, "lr": 0.01, "command": "amc apply POLICY --finetune-epochs N"},
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(json.dumps(record, indent=2) + "\n", folder / "record.json")
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
