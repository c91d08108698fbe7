"""``amc search``: a resumable AMC policy search writing everything into one run folder."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import yaml

from ..config import SearchConfig, from_dict, replace
from ..errors import AmcError
from .args import add_flags, search_config
from .common import check_device, reuse_freed_memory


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="AMC search for a per-layer preserve-ratio policy (resumable)",
                       description="Defaults < --config YAML (nested sections as in a run's config.yaml) < flags. "
                       "On --resume only --episodes, --device, --threads, --workers and --cache-dir may change.")
    p.add_argument("--model", help="registry name, torchvision:NAME or package.module:factory (imports that code)")
    add_flags(p, "model", "data", "calibration", "prune", "env", "agent", "run")
    p.add_argument("--config", help="YAML file with SearchConfig sections (flags override it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    p.add_argument("--out", help="run folder (default results/<model>-<agent>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or lines")
    p.add_argument("--log-every", type=int, default=10, help="when stdout is not a terminal: a line every N episodes")
    p.set_defaults(func=run)


def _base(args: argparse.Namespace) -> SearchConfig:
    if args.resume:
        from amc_agents import RunStore  # noqa: PLC0415

        return RunStore.open(args.resume).config()
    if not args.config:
        return SearchConfig()
    path = Path(args.config)
    if not path.is_file():
        raise AmcError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AmcError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return from_dict(SearchConfig, data, str(path))


def progress_reporter(total: int, quiet: bool, every: int):
    """A tqdm bar on a terminal, else one line per ``every`` episodes (overnight logs)."""
    if quiet:
        return None, lambda: None
    if sys.stderr.isatty():
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=total, desc="amc search", unit="ep")

        def show(row: dict) -> None:
            bar.n = row["episode"]
            bar.set_postfix(best=f"{row['best_reward']:.4f}", s_per_ep=f"{row['episode_s']:.2f}")
        return show, bar.close

    def line(row: dict) -> None:
        if row["episode"] % every == 0 or row["episode"] == total:
            print(f"{time.strftime('%H:%M:%S')} episode {row['episode']}/{total} reward {row['reward']:.4f} "
                  f"best {row['best_reward']:.4f} ({row['episode_s']:.2f} s/episode)", flush=True)
    return line, lambda: None


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/amc``, else ``~/.cache/amc``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "amc"


def run(args: argparse.Namespace) -> int:
    from amc_agents import run_search  # noqa: PLC0415
    from amc_agents.report import write_report  # noqa: PLC0415

    cfg = search_config(args, _base(args))
    reuse_freed_memory()  # activations of every episode reuse the heap instead of page-faulting in afresh
    if cfg.cache_dir is None and not args.resume:
        cfg = replace(cfg, cache_dir=str(default_cache_dir()))
    if cfg.cache_dir == "none":
        cfg = dataclasses.replace(cfg, cache_dir=None)  # (amc.config.replace ignores None values)
    if args.resume:
        out = Path(args.resume)
    else:
        name = f"{(cfg.model.name or 'model').replace(':', '_')}-{cfg.agent.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
        out = Path(args.out or Path("results") / name)
    args.out = str(out)  # named in the message if the search is interrupted
    check_device(cfg.device)
    show, close = progress_reporter(cfg.episodes, args.quiet, args.log_every)
    try:
        best, store = run_search(cfg, out, resume=bool(args.resume), progress=show)
    finally:
        close()
    write_report(out)
    base = store.baselines()["uniform"]
    cost = "params" if cfg.prune.granularity == "weight" else "macs"
    score = "top1" if "top1" in best.result.metrics else "score"  # score: the user's --evaluator
    label = "top-1" if score == "top1" else "score"
    print(f"best reward {best.reward:.4f} ({label} {best.result.metrics[score]:.4f}, {cost} "
          f"{best.result.cost_ratio[cost]:.3f}) at episode {best.episode}; uniform policy reward "
          f"{base['reward']:.4f} ({label} {base[score]:.4f})")
    chosen = store.best_policy().metrics.get("reselected") if cfg.reselect else None
    if chosen:
        print(f"re-selected on {chosen['images']} held-out images: search rank {chosen['search_rank']}, held-out "
              f"reward {chosen['reward']:.4f}" + (f" (top-1 {chosen['top1']:.4f})" if "top1" in chosen else ""))
    print(f"run folder: {out}  best policy: {out / 'best_policy.json'}")
    return 0
