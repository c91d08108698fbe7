"""``amc search``: a resumable AMC policy search that writes everything to ``results/<run>/``.

Files of a run: ``config.yaml`` (resolved settings), ``episodes.csv`` (one row per episode),
``best_policy.json`` and ``top_policies/`` (policy files), ``baselines.json`` (the uniform policy's
score), ``run.log`` (heartbeat lines), ``checkpoint.pt`` (all state, written atomically after every
episode), plots and ``summary.md`` (see :mod:`agents.report`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from amc.checkpoint import atomic_save, atomic_write_text
from amc.data import DataConfig, Normalization
from amc.errors import AmcError
from amc.policy import make_policy, uniform_for_flops
from amc.pruner import PruneSettings

from .noise import TruncatedNormalNoise
from .ddpg import AgentConfig, agent_state, load_agent_state, make_agent, rng_state, set_rng_state


@dataclass
class SearchConfig:
    """Settings of one search (every ``amc search`` flag; YAML keys have the same names).

    model/checkpoint/num_classes/input_shape: what to prune. dataset/data_dir/search_size/split_seed:
    the data (the search split is held out of the training set). target: resource to keep as a ratio
    of the dense model's (constrained mode); resource: flops|params; mode: constrained|accuracy;
    metric: top1|top5; reward_scale. episodes: total evaluated episodes (warm-up included); agent:
    ddpg|td3|sac|random. criterion/reconstruct/bn_batches/calibration_images: pruning engine.
    round_to, lbound, rbound: channel rounding and preserve-ratio bounds. exclude: glob patterns of
    layers to keep. seed, device, threads, channels_last, top_k, out (run folder). The remaining
    fields are the agent's (see :class:`agents.ddpg.AgentConfig`).
    """

    model: str | None = None
    checkpoint: str | None = None
    num_classes: int | None = None
    input_shape: list[int] | None = None
    dataset: str = "synthetic"
    data_dir: str | None = None
    search_size: int = 2000
    split_seed: int = 0
    target: float = 0.5
    resource: str = "flops"
    mode: str = "constrained"
    metric: str = "top1"
    reward_scale: float = 1.0
    episodes: int = 400
    agent: str = "ddpg"
    criterion: str = "l1"
    reconstruct: bool = True
    bn_batches: int = 2
    calibration_images: int = 500
    round_to: int = 1
    lbound: float = 0.2
    rbound: float = 1.0
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    channels_last: bool = True
    top_k: int = 5
    warmup_episodes: int = 100
    sigma: float = 0.5
    sigma_decay: float = 0.95
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    out: str | None = None

    def agent_config(self) -> AgentConfig:
        return AgentConfig(actor_lr=self.actor_lr, critic_lr=self.critic_lr, tau=self.tau, batch_size=self.batch_size,
                           warmup_episodes=self.warmup_episodes, sigma=self.sigma, sigma_decay=self.sigma_decay)

    def prune_settings(self) -> PruneSettings:
        return PruneSettings(criterion=self.criterion, reconstruct=self.reconstruct, bn_batches=self.bn_batches,
                             seed=self.seed)


def config_from(args: argparse.Namespace) -> SearchConfig:
    """Defaults < YAML file (``--config``) < flags given on the command line."""
    values: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise AmcError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise AmcError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise AmcError(f"unknown keys in {args.config}: {', '.join(unknown)}")
    for name in known:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    return SearchConfig(**values)


class SearchRun:
    """One search: its environment, agent, files, and exact checkpoint/resume.

    Arguments: ``cfg`` (:class:`SearchConfig`), ``out`` (run folder), ``task`` (optional prebuilt
    :class:`~envs.task.PruningTask`, else built from ``cfg``), ``progress`` (show a progress bar).
    """

    def __init__(self, cfg: SearchConfig, out: Path, task=None, progress: bool = True):
        from envs import ChannelPruningEnv, load_task  # noqa: PLC0415
        from amc.models import open_model  # noqa: PLC0415

        self.cfg, self.out, self.progress = cfg, Path(out), progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        if task is None:
            if not cfg.model and not cfg.checkpoint:
                raise AmcError("give --model (and usually --checkpoint) or a --config that names them")
            model, spec, _ = open_model(cfg.model, cfg.checkpoint, cfg.num_classes,
                                        tuple(cfg.input_shape) if cfg.input_shape else None)
            data_cfg = DataConfig(cfg.dataset, cfg.data_dir, cfg.search_size, cfg.split_seed, Normalization(),
                                  image_size=spec.input_shape[-1], num_classes_hint=spec.num_classes)
            task = load_task(model, spec, data_cfg, cfg.prune_settings(), cfg.exclude, cfg.device, cfg.channels_last)
        self.task = task
        self.env = ChannelPruningEnv(task, cfg.target, cfg.resource, cfg.mode, cfg.lbound, cfg.rbound, cfg.round_to,
                                     cfg.metric, cfg.reward_scale)
        self.groups = self.env.groups
        self.agent = None
        if cfg.agent != "random":
            self.agent = make_agent(cfg.agent, self.env, len(self.groups), cfg.agent_config(), cfg.seed, cfg.device)
        self.rng = np.random.default_rng(cfg.seed)
        self.episode = 0
        self.top: list[dict] = []  # best episodes, best first: {"episode", "reward", "counts", "kept", ...}
        self.started = time.time()
        self.elapsed_before = 0.0
        self._episode_start = time.perf_counter()
        self._bar = None

    # ------------------------------------------------------------ files
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _log(self, message: str) -> None:
        with open(self.out / "run.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def save_checkpoint(self) -> None:
        state = {"episode": self.episode, "top": self.top, "rng": rng_state(), "search_rng": self.rng.bit_generator.state,
                 "elapsed": self.elapsed_before + time.time() - self.started,
                 "agent": agent_state(self.agent) if self.agent is not None else None}
        atomic_save(state, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        self.episode, self.top = state["episode"], state["top"]
        self.rng.bit_generator.state = state["search_rng"]
        self.elapsed_before = state["elapsed"]
        if self.agent is not None:
            load_agent_state(self.agent, state["agent"])
        set_rng_state(state["rng"])
        csv = self.out / "episodes.csv"
        if csv.is_file():  # rows of an episode that ran after the last checkpoint are re-run
            rows = pd.read_csv(csv)
            rows[rows.episode <= self.episode].to_csv(csv, index=False)
        self._write_policies()

    def _policy(self, entry: dict):
        counts = {g.space: entry["counts"][g.name] for g in self.groups}
        kept = {g.space: torch.tensor(entry["kept"][g.name]) for g in self.groups if g.name in entry["kept"]}
        requested = {g.space: r for g, r in zip(self.groups, entry["requested"])}
        metrics = {k: entry[k] for k in ("reward", "top1", "top5", "flops_ratio", "params_ratio", "episode")}
        metrics.update(search_split_images=len(self.task.search_labels), target=self.cfg.target,
                       resource=self.cfg.resource, mode=self.cfg.mode, method=self.cfg.agent,
                       prune_settings=dataclasses.asdict(self.cfg.prune_settings()))
        spec = {**self.task.spec.to_dict(), "exclude": list(self.cfg.exclude)}
        return make_policy(self.task.graph, spec, counts, requested, kept, metrics, self.cfg.seed, " ".join(sys.argv))

    def _write_policies(self) -> None:
        if not self.top:
            return
        self._policy(self.top[0]).save(self.out / "best_policy.json")
        for rank, entry in enumerate(self.top, 1):
            self._policy(entry).save(self.out / "top_policies" / f"policy_{rank}.json")

    # ------------------------------------------------------------ episodes
    def phase(self, episode: int) -> str:
        if self.agent is None:
            return "random"
        return "warm-up" if episode <= self.cfg.warmup_episodes else "explore"

    def record_episode(self, info: dict) -> None:
        """Called once per finished episode with the environment's final ``info``."""
        self.episode += 1
        now = time.perf_counter()
        env_time = sum(info["timings"].values())
        sigma = getattr(getattr(self.agent, "action_noise", None), "sigma", float("nan")) / 2  # ratio units
        row = {"episode": self.episode, "phase": self.phase(self.episode), "reward": info["reward"],
               "top1": info["top1"], "top5": info["top5"], "flops_ratio": info["flops_ratio"],
               "params_ratio": info["params_ratio"], "sigma": sigma,
               **{f"ratio:{g.name}": r for g, r in zip(self.groups, info["executed_ratios"])},
               **{f"{k}_s": v for k, v in info["timings"].items()},
               "agent_s": max(0.0, now - self._episode_start - env_time), "episode_s": now - self._episode_start,
               "elapsed_s": self.elapsed_before + time.time() - self.started,
               "wall_clock": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._episode_start = now
        csv = self.out / "episodes.csv"
        pd.DataFrame([row]).to_csv(csv, mode="a", header=not csv.is_file(), index=False)
        entry = {"episode": self.episode, "reward": info["reward"], "top1": info["top1"], "top5": info["top5"],
                 "flops_ratio": info["flops_ratio"], "params_ratio": info["params_ratio"], "counts": info["counts"],
                 "requested": info["requested_ratios"],
                 "kept": {g.name: info["kept"][g.space].tolist() for g in self.groups if g.space in info["kept"]}}
        improved = not self.top or entry["reward"] > self.top[0]["reward"]
        self.top = sorted(self.top + [entry], key=lambda e: (-e["reward"], e["episode"]))[:self.cfg.top_k]
        if any(e["episode"] == self.episode for e in self.top):
            self._write_policies()
        best = self.top[0]["reward"]
        self._log(f"heartbeat episode {self.episode}/{self.cfg.episodes} reward {info['reward']:.4f} best {best:.4f} "
                  f"flops {info['flops_ratio']:.3f} {row['episode_s']:.2f}s" + (" (new best)" if improved else ""))
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(best=f"{best:.4f}", sigma=f"{sigma:.3f}", s_per_ep=f"{row['episode_s']:.2f}")

    def run(self) -> dict:
        """Run (or continue) until ``cfg.episodes`` episodes are recorded; returns the best entry."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._evaluate_uniform_baseline()
        remaining = self.cfg.episodes - self.episode
        self._log(f"start: {remaining} episodes to go ({self.episode} done), agent {self.cfg.agent}")
        self._bar = tqdm(total=self.cfg.episodes, initial=self.episode, desc="amc search", disable=not self.progress,
                         unit="ep")
        self._episode_start = time.perf_counter()
        try:
            if remaining > 0 and self.agent is not None:
                self.agent.learn(total_timesteps=remaining * len(self.groups), callback=_EpisodeCallback(self),
                                 reset_num_timesteps=False)
            elif remaining > 0:
                self._random_search()
        finally:
            self._bar.close()
        self.save_checkpoint()
        self._log(f"done: {self.episode} episodes, best reward {self.top[0]['reward']:.4f}")
        return self.top[0]

    def _random_search(self) -> None:
        """Random-search baseline: each episode draws every action uniformly in [0, 1]."""
        while self.episode < self.cfg.episodes:
            self.save_checkpoint()
            self.env.reset()
            done = False
            while not done:
                _, _, done, _, info = self.env.step(self.rng.random(1).astype(np.float32))
            self.record_episode(info)

    def _evaluate_uniform_baseline(self) -> None:
        path = self.out / "baselines.json"
        if path.is_file():
            return
        if self.cfg.mode == "constrained":
            ratio, counts = uniform_for_flops_or_params(self.env, self.cfg)
        else:
            ratio, counts = 1.0, {g.space: g.channels for g in self.groups}
        info = self.env.evaluate_counts(counts)
        baseline = {"uniform": {"ratio": ratio, "reward": info["reward"], "top1": info["top1"], "top5": info["top5"],
                                "flops_ratio": info["flops_ratio"], "params_ratio": info["params_ratio"]}}
        atomic_write_text(json.dumps(baseline, indent=2), path)


def uniform_for_flops_or_params(env, cfg: SearchConfig) -> tuple[float, dict[int, int]]:
    if cfg.resource == "flops":
        return uniform_for_flops(env.graph, cfg.target, cfg.round_to, cfg.lbound)
    from amc.policy import uniform_counts  # noqa: PLC0415

    lo, hi = cfg.lbound, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if env._cost(env.graph, uniform_counts(env.graph, mid, cfg.round_to, cfg.lbound)) <= cfg.target * env.dense_cost:
            lo = mid
        else:
            hi = mid
    return lo, uniform_counts(env.graph, lo, cfg.round_to, cfg.lbound)


class _EpisodeCallback(BaseCallback):
    """Records finished episodes and checkpoints between episodes (after the agent's updates)."""

    def __init__(self, run: SearchRun):
        super().__init__()
        self.run = run

    def _on_rollout_start(self) -> None:
        # SB3 also calls ActionNoise.reset() when learn() starts, so a resumed run would count one
        # episode too many: pin the noise's episode count to the run's own before each episode
        noise = getattr(self.model, "action_noise", None)
        if isinstance(noise, TruncatedNormalNoise):
            noise.episodes = self.run.episode
        self.run.save_checkpoint()

    def _on_step(self) -> bool:
        # never stop early: learn() ends after exactly the remaining episodes, once their transitions are
        # stored and trained on, so that the final checkpoint equals the state an uninterrupted run has
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done:
                self.run.record_episode(info)
        return True


# ---------------------------------------------------------------- CLI
def add_search_args(p: argparse.ArgumentParser) -> None:
    """Flags default to None so that a YAML config's values are only overridden by flags actually given."""
    p.add_argument("--config", help="YAML file with SearchConfig keys (flags override it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    p.add_argument("--model", help="registry name, torchvision:NAME or package.module:factory")
    p.add_argument("--checkpoint", help="trained weights")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--input-shape", type=int, nargs=3)
    p.add_argument("--dataset", choices=["cifar10", "cifar100", "folder", "synthetic"])
    p.add_argument("--data-dir")
    p.add_argument("--search-size", type=int, help="training images held out to score policies (default 2000)")
    p.add_argument("--split-seed", type=int)
    p.add_argument("--target", type=float, help="resource to keep, ratio of dense (default 0.5)")
    p.add_argument("--resource", choices=["flops", "params"])
    p.add_argument("--mode", choices=["constrained", "accuracy"])
    p.add_argument("--metric", choices=["top1", "top5"])
    p.add_argument("--reward-scale", type=float)
    p.add_argument("--episodes", type=int, help="episodes in total, warm-up included (default 400)")
    p.add_argument("--agent", choices=["ddpg", "td3", "sac", "random"])
    p.add_argument("--criterion", choices=["l1", "l2", "apoz", "mean_activation", "random"])
    p.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--bn-batches", type=int, help="BatchNorm recalibration batches of 100 calibration images per "
                   "episode (default 2; 0 = off)")
    p.add_argument("--calibration-images", type=int)
    p.add_argument("--round-to", type=int)
    p.add_argument("--lbound", type=float)
    p.add_argument("--rbound", type=float)
    p.add_argument("--exclude", nargs="*")
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--threads", type=int)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format for compact models and images (default on: faster convs on CPU)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--warmup-episodes", type=int)
    p.add_argument("--sigma", type=float)
    p.add_argument("--sigma-decay", type=float)
    p.add_argument("--actor-lr", type=float)
    p.add_argument("--critic-lr", type=float)
    p.add_argument("--tau", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--out", help="run folder (default results/<model>-<agent>-<time>)")
    p.add_argument("--quiet", action="store_true")


def run_search_cli(args: argparse.Namespace) -> int:
    from .report import write_report  # noqa: PLC0415

    if args.resume:
        out = Path(args.resume)
        if not (out / "config.yaml").is_file() or not (out / "checkpoint.pt").is_file():
            raise AmcError(f"{out} is not a resumable run (needs config.yaml and checkpoint.pt)")
        cfg = SearchConfig(**yaml.safe_load((out / "config.yaml").read_text()))
        if args.episodes:
            cfg = dataclasses.replace(cfg, episodes=args.episodes)
    else:
        cfg = config_from(args)
        name = f"{(cfg.model or 'model').replace(':', '_')}-{cfg.agent}-{time.strftime('%Y%m%d-%H%M%S')}"
        out = Path(cfg.out or Path("results") / name)
        if (out / "checkpoint.pt").exists():
            raise AmcError(f"{out} already holds a search; use --resume {out} or another --out")
        cfg = dataclasses.replace(cfg, out=str(out))
    run = SearchRun(cfg, out, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), out / "config.yaml")
    if args.resume:
        run.load_checkpoint()
    best = run.run()
    write_report(out)
    base = json.loads((out / "baselines.json").read_text())["uniform"]
    print(f"best reward {best['reward']:.4f} (top-1 {best['top1']:.4f}, FLOPs {best['flops_ratio']:.3f}) at episode "
          f"{best['episode']}; uniform policy reward {base['reward']:.4f} (top-1 {base['top1']:.4f})")
    print(f"run folder: {out}  best policy: {out / 'best_policy.json'}")
    return 0


