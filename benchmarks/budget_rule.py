"""Which layers AMC's clamp starves, and what the budget-aware ``scale`` rule changes (issue 12, part 2).

Random policies, paired: episode i draws one action per group (uniform in [0, 1], as random search and
DDPG's warm-up do) and the same actions are executed under both rules of
:class:`amc.config.EnvConfig` ``budget_rule``: ``clamp`` (AMC: forward order, each action capped so
that the rest can still meet the budget at ``lbound``) and ``scale`` (one common factor on all the
actions meets the budget, :meth:`amc.cost.Budget.scaled`). Each executed policy is scored on the
search split by the same :class:`amc_envs.ChannelPruningEnv` (same task, recovery, images). The
uniform policy at the same budget is the reference.

Writes to ``--out``: ``episodes.csv`` (tidy: one row per episode x rule x group: requested and executed
preserve ratios, whether the action was cut, the episode's search top-1 and MACs ratio),
``summary.md`` / ``summary.json`` (per rule: how often each group is cut, its mean executed ratio,
search top-1 mean/std/best, share of policies beating uniform, best policy's test top-1),
``executed_ratio.png`` and ``record.json`` (machine, versions, command, seconds).

    python benchmarks/budget_rule.py --checkpoint results/benchmarks/resnet20-jpeg-finetune/run/model.pt \\
        --data-dir /tmp/cifar --episodes 100 --out results/benchmarks/budget-rule
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_FROM = ROOT / "results/benchmarks/resnet20-50macs/ddpg-seed0/best_policy.json"
RULES = ("clamp", "scale")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_policy(env, actions: list[float]):
    env.reset(seed=0)
    executed = []
    for a in actions:
        _, _, done, _, info = env.step(np.array([a], dtype=np.float32))
        executed.append(info["executed_action"])
    return info["result"]


def plot_executed(df, path: Path, uniform_ratio: float) -> None:
    """Mean executed preserve ratio per group, one line per rule (random actions)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for rule, part in df.groupby("rule"):
        mean = part.groupby("index")["executed"].mean()
        ax.plot(mean.index, mean.values, marker="o", label=f"{rule}: mean executed ratio")
    ax.axhline(uniform_ratio, color="gray", ls=":", label=f"uniform policy ({uniform_ratio:.3f})")
    ax.set_xlabel("prunable group (forward order)")
    ax.set_ylabel("preserve ratio (fraction of channels kept)")
    ax.set_ylim(0, 1)
    ax.set_title("Random actions at 50% MACs: where the budget rule takes the channels from")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "results/benchmarks/resnet20-jpeg-finetune/run/model.pt"))
    p.add_argument("--data-dir", default="/tmp/cifar")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results/benchmarks/budget-rule"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import pandas as pd

    from amc import Policy
    from amc.config import EnvConfig, ModelConfig, replace
    from amc.evaluation import evaluate
    from amc.io import atomic_write_text
    from amc.provenance import provenance
    from amc_envs import ChannelPruningEnv, open_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    ref = Policy.load(SETTINGS_FROM)
    data = replace(ref.data, data_dir=args.data_dir)
    task = open_task(ModelConfig(name="resnet20", checkpoint=args.checkpoint), data, ref.calibration, ref.prune)
    envs = {rule: ChannelPruningEnv(task, EnvConfig(target=args.target, budget_rule=rule)) for rule in RULES}
    budget = envs["clamp"].budget
    groups = [g.name for g in budget.groups]
    uniform_ratio, uniform_keep = budget.uniform()
    uniform = envs["clamp"].evaluate(uniform_keep)
    log(f"uniform ratio {uniform_ratio:.4f}: search top-1 {uniform.metrics['top1']:.4f}")
    rng = np.random.default_rng(args.seed)
    rows, results = [], {rule: [] for rule in RULES}
    for episode in range(args.episodes):
        actions = [float(a) for a in rng.random(len(groups))]
        for rule, env in envs.items():
            result = run_policy(env, actions)
            results[rule].append((result, actions))
            for i, name in enumerate(groups):
                asked = budget.count_for(name, actions[i])
                rows.append({"episode": episode, "rule": rule, "index": i, "group": name, "requested": actions[i],
                             "executed": result.executed[name], "cut": result.keep[name] < asked,
                             "search_top1": result.metrics["top1"], "macs_ratio": result.cost_ratio["macs"]})
        if (episode + 1) % 10 == 0:
            log(f"{episode + 1}/{args.episodes} episodes")
    df = pd.DataFrame(rows)
    atomic_write_text(df.to_csv(index=False), out / "episodes.csv")
    plot_executed(df, out / "executed_ratio.png", uniform_ratio)

    test = task_split(data, task)
    summary = {"uniform": {"ratio": uniform_ratio, "search_top1": uniform.metrics["top1"],
                           "test_top1": float(evaluate(envs["clamp"].task.engine.prune_keep(uniform_keep).model,
                                                       *test)["top1"])}}
    for rule in RULES:
        part = df[df.rule == rule]
        scores = [r.metrics["top1"] for r, _ in results[rule]]
        best, _ = max(results[rule], key=lambda ra: ra[0].metrics["top1"])
        best_model = task.engine.prune_keep(best.keep).model
        per_group = part.groupby("group", sort=False).agg(cut_share=("cut", "mean"), executed_mean=("executed", "mean"))
        summary[rule] = {
            "search_top1_mean": statistics.mean(scores), "search_top1_std": statistics.stdev(scores),
            "search_top1_best": max(scores), "best_test_top1": float(evaluate(best_model, *test)["top1"]),
            "share_beating_uniform": sum(s > uniform.metrics["top1"] for s in scores) / len(scores),
            "macs_ratio_mean": float(part.groupby("episode").macs_ratio.first().mean()),
            "episodes_with_a_cut": float(part.groupby("episode").cut.any().mean()),
            "per_group": {g: {"cut_share": round(float(r.cut_share), 4), "executed_mean": round(float(r.executed_mean), 4)}
                          for g, r in per_group.iterrows()}}
        log(f"{rule}: {json.dumps({k: v for k, v in summary[rule].items() if k != 'per_group'})}")
    atomic_write_text(json.dumps(summary, indent=1) + "\n", out / "summary.json")
    lines = [f"ResNet-20, {args.target:.0%} MACs, {args.episodes} random policies (actions uniform in [0, 1], seed "
             f"{args.seed}) executed under both rules; search split {data.search_images} images. Uniform policy: "
             f"ratio {uniform_ratio:.3f}, search top-1 {uniform.metrics['top1'] * 100:.2f}%, test top-1 "
             f"{summary['uniform']['test_top1'] * 100:.2f}%.", "",
             "| rule | search top-1 % mean ± std | best | beats uniform | MACs kept (mean) | best policy's test top-1 % |",
             "| --- | --- | --- | --- | --- | --- |"]
    for rule in RULES:
        r = summary[rule]
        lines.append(f"| {rule} | {r['search_top1_mean'] * 100:.2f} ± {r['search_top1_std'] * 100:.2f} | "
                     f"{r['search_top1_best'] * 100:.2f} | {r['share_beating_uniform']:.0%} | {r['macs_ratio_mean']:.3f} | "
                     f"{r['best_test_top1'] * 100:.2f} |")
    lines += ["", "Per group (forward order): share of episodes whose action was cut by the rule, mean executed ratio.",
              "", "| group | clamp: cut | clamp: executed | scale: cut | scale: executed |", "| --- | --- | --- | --- | --- |"]
    for g in groups:
        c, s = summary["clamp"]["per_group"][g], summary["scale"]["per_group"][g]
        lines.append(f"| {g} | {c['cut_share']:.0%} | {c['executed_mean']:.3f} | {s['cut_share']:.0%} | "
                     f"{s['executed_mean']:.3f} |")
    atomic_write_text("\n".join(lines) + "\n", out / "summary.md")
    info = provenance(command=" ".join([Path(sys.executable).name, *sys.argv]))
    atomic_write_text(json.dumps({"command": info["command"], "machine": info["machine"], "versions": info["versions"],
                                  "threads": args.threads, "seconds": time.time() - started,
                                  "settings": vars(args)}, indent=1) + "\n", out / "record.json")
    log(f"done in {time.time() - started:.0f} s")
    return 0


def task_split(data, task):
    """The normalised test images and labels."""
    from amc.data import load_splits, normalization
    test = load_splits(data, ("test",), num_classes=task.spec.num_classes)["test"]
    return normalization(data)(test.images), test.labels


if __name__ == "__main__":
    sys.exit(main())
