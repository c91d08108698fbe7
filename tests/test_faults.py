"""Faults a night can bring: a full disk in the middle of a search, a kill during a resume."""
import errno
import json

import pandas as pd

import amc_agents.store
from amc.cli import main

ARGS = ["search", "--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset", "synthetic", "--holdout", "100",
        "--search-images", "100", "--calibration-images", "50", "--bn-batches", "1", "--episodes", "8",
        "--warmup-episodes", "3", "--agent-batch-size", "8", "--hidden", "32", "32", "--seed", "4", "--quiet"]


def test_full_disk_stops_cleanly_and_the_run_resumes_exactly(tmp_path, monkeypatch, capsys):
    assert main([*ARGS, "--out", str(tmp_path / "reference")]) == 0
    assert "amc: warning: no checkpoint: resnet8 has random weights" in capsys.readouterr().err  # said, not refused
    real, calls = amc_agents.store.atomic_save, []

    def full_disk(obj, path):
        calls.append(path)
        if len(calls) == 5:  # the fifth checkpoint write finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(obj, path)

    monkeypatch.setattr(amc_agents.store, "atomic_save", full_disk)
    assert main([*ARGS, "--out", str(tmp_path / "run")]) == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("amc: warning:")]
    assert len(err) == 1 and "No space left on device" in err[0]
    assert not list((tmp_path / "run").glob(".*.tmp"))  # the half-written file is gone, the last good one is there
    monkeypatch.setattr(amc_agents.store, "atomic_save", real)
    assert main(["search", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    a, b = (pd.read_csv(tmp_path / d / "episodes.csv") for d in ("reference", "run"))
    assert b.episode.tolist() == list(range(1, 9))
    cols = ["reward", "top1", "macs_ratio"] + [c for c in a.columns if c.startswith("ratio:")]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    best = [json.loads((tmp_path / d / "best_policy.json").read_text())["groups"] for d in ("reference", "run")]
    assert best[0] == best[1]


def test_a_torn_last_row_is_dropped_on_resume(tmp_path):
    assert main([*ARGS, "--episodes", "4", "--out", str(tmp_path / "run")]) == 0
    csv = tmp_path / "run" / "episodes.csv"
    complete = csv.read_bytes()
    with open(csv, "ab") as f:  # what a crash in the middle of writing a row leaves
        f.write(b"5,explore,-0.9")
    assert main(["search", "--resume", str(tmp_path / "run"), "--episodes", "5", "--quiet"]) == 0
    rows = pd.read_csv(csv)
    assert rows.episode.tolist() == [1, 2, 3, 4, 5] and csv.read_bytes().startswith(complete)
