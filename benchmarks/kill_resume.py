"""Fault injection: SIGKILL a search (and its resumes) at random moments, resume, and check nothing is lost or doubled.

Runs one uninterrupted reference search, then the same search killed ``--kills`` times at random
moments (uniform over a time window; start-up, warm-up and learning episodes, checkpoint writes
and resumes' start-up are all hit), each kill followed by ``amc search --resume``. At the end the
episode log must have every episode exactly once and equal the reference row for row (reward,
accuracy, MACs, per-group ratios), and the best policy must be the reference's.

    python benchmarks/kill_resume.py --kills 30 --record results/benchmarks/reliability/kill_resume.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from amc.io import atomic_write_text
from amc.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in (".", "envs", "agents"))}


def search_argv(out: Path, episodes: int) -> list[str]:
    return [sys.executable, "-m", "amc.cli", "search", "--model", "resnet8", "--input-shape", "3", "16", "16",
            "--dataset", "synthetic", "--holdout", "200", "--search-images", "200", "--episodes", str(episodes),
            "--warmup-episodes", "5", "--agent-batch-size", "8", "--hidden", "64", "64", "--threads", "1",
            "--seed", "7", "--bn-batches", "1", "--calibration-images", "100", "--quiet", "--out", str(out)]


def compare(reference: pd.DataFrame, got: pd.DataFrame) -> list[str]:
    problems = []
    if got.episode.tolist() != list(range(1, len(reference) + 1)):
        problems.append(f"episodes {got.episode.tolist()}")
    cols = ["reward", "top1", "macs_ratio"] + [c for c in reference.columns if c.startswith("ratio:")]
    if len(got) == len(reference) and not got[cols].equals(reference[cols]):
        problems.append("rows differ from the uninterrupted run")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=30)
    p.add_argument("--episodes", type=int, default=80)
    p.add_argument("--window", type=float, default=12.0, help="kill after a uniform random delay in [0.3, window] s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        reference_dir, killed_dir = Path(tmp) / "reference", Path(tmp) / "killed"
        subprocess.run(search_argv(reference_dir, args.episodes), env=ENV, cwd=ROOT, check=True, capture_output=True)
        reference = pd.read_csv(reference_dir / "episodes.csv")
        kills, finished_early, log = 0, 0, []
        first = True
        while kills < args.kills:
            cmd = search_argv(killed_dir, args.episodes) if first else \
                [sys.executable, "-m", "amc.cli", "search", "--resume", str(killed_dir), "--quiet"]
            if not first and not (killed_dir / "checkpoint.pt").is_file():  # killed before the first checkpoint
                subprocess.run(["rm", "-rf", str(killed_dir)])
                cmd = search_argv(killed_dir, args.episodes)
            proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            delay = rng.uniform(0.3, args.window)
            try:
                proc.wait(timeout=delay)
                finished_early += 1
                if proc.returncode != 0:
                    raise SystemExit(f"a resume failed: {proc.stderr.read().decode().strip()}")
                subprocess.run(["rm", "-rf", str(killed_dir)])  # finished: start over to keep killing
                first = True
                continue
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            kills += 1
            done = len(pd.read_csv(killed_dir / "episodes.csv")) if (killed_dir / "episodes.csv").is_file() else 0
            log.append({"kill": kills, "after_s": round(delay, 3), "rows_on_disk": done})
            first = False
        final = subprocess.run([sys.executable, "-m", "amc.cli", "search", "--resume", str(killed_dir), "--quiet"],
                               env=ENV, cwd=ROOT, capture_output=True, text=True)
        if final.returncode != 0:
            raise SystemExit(f"the final resume failed: {final.stderr.strip()}")
        got = pd.read_csv(killed_dir / "episodes.csv")
        problems = compare(reference, got)
        same_best = json.loads((killed_dir / "best_policy.json").read_text())["groups"] == \
            json.loads((reference_dir / "best_policy.json").read_text())["groups"]
    record = {"benchmark": "kill_resume", "kills": kills, "runs_that_finished_before_their_kill": finished_early,
              "episodes": args.episodes, "problems": problems, "best_policy_equal": same_best,
              "kills_log": log, "seconds": time.time() - started, **provenance(args.seed)}
    print(f"{kills} SIGKILLs; final log: {len(got)} rows, {'no problems' if not problems else problems}; "
          f"best policy equal to the uninterrupted run's: {same_best}")
    if args.record:
        atomic_write_text(json.dumps(record, indent=2) + "\n", args.record)
    return 0 if not problems and same_best else 1


if __name__ == "__main__":
    raise SystemExit(main())
