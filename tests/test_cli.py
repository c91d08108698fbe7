"""The command line: flags reach their config fields, errors are one line, and the end-to-end paths work."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from amc.cli import build_parser
from amc.cli.args import BOOL, FLAGS, SECTIONS, run_values, section
from amc.config import SearchConfig
from amc.io import save_model
from amc.models import ModelSpec, build_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in (".", "envs", "agents"))}
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
REQUIRED = {"train": [], "evaluate": [], "inspect": [], "uniform": ["--target", "0.5", "--out", "p.json"],
            "search": [], "apply": ["p.json", "--out", "x.pt"]}


def amc(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "amc.cli", *map(str, args)], env=ENV, cwd=cwd, capture_output=True,
                          text=True)


def _value(flag):
    """A value unlike any default for this flag (as typed on the command line, and as stored in the config)."""
    if flag.type == BOOL:
        return ["--no-" + flag.name[2:]], False
    if flag.choices:
        default = getattr(SECTIONS[flag.section](), flag.field)
        choice = next(c for c in flag.choices if c != default and not (c == "flops" and default == "macs"))
        return [flag.name, choice], choice
    if flag.nargs is not None:
        values = {"--input-shape": [3, 24, 24], "--mean": [0.1, 0.2, 0.3], "--std": [0.3, 0.2, 0.1],
                  "--exclude": ["layer1.*"], "--hidden": [17, 19], "--model-arg": ["width=0.5"]}[flag.name]
        return [flag.name, *map(str, values)], tuple(values)
    value = {int: 7, float: 0.37, str: "somewhere"}[flag.type]
    return [flag.name, str(value)], value


def _commands_and_flags():
    subparsers = build_parser()._subparsers._group_actions[0].choices
    return [(cmd, f) for cmd in REQUIRED for f in FLAGS if f.name in subparsers[cmd]._option_string_actions]


COMMANDS = _commands_and_flags()


@pytest.mark.parametrize("command,flag", COMMANDS, ids=[f"{c}{f.name}" for c, f in COMMANDS])
def test_every_flag_sets_its_config_field(command, flag):
    parser = build_parser()
    argv, expected = _value(flag)
    args = parser.parse_args([command, *REQUIRED[command], *argv])
    if flag.section == "run":
        got = run_values(args)[flag.field]
    else:
        cfg = section(args, flag.section)
        got = getattr(cfg, flag.field)
        assert got != getattr(SECTIONS[flag.section](), flag.field)
    assert got == expected


def test_every_config_field_has_a_flag():
    """No setting is out of reach of the command line (except the synthetic dataset's size and the granularity)."""
    reachable = {(f.section, f.field) for f in FLAGS}
    for name, cls in SECTIONS.items():
        for field in cls.__dataclass_fields__:
            if (name, field) in {("model", "name"), ("data", "synthetic_size"), ("prune", "granularity")}:
                continue
            assert (name, field) in reachable or (name == "train" and field == "seed"), f"{name}.{field}"
    for field in ("episodes", "top_k", "seed", "device", "threads"):
        assert ("run", field) in reachable and field in SearchConfig.__dataclass_fields__


def test_search_config_file_and_flags_combine(tmp_path):
    (tmp_path / "c.yaml").write_text("env:\n  target: 0.3\nagent:\n  sigma: 0.2\nepisodes: 9\n")
    from amc.cli.search import _base
    from amc.cli.args import search_config

    args = build_parser().parse_args(["search", "--config", str(tmp_path / "c.yaml"), "--sigma", "0.1"])
    cfg = search_config(args, _base(args))
    assert (cfg.env.target, cfg.agent.sigma, cfg.episodes) == (0.3, 0.1, 9)
    (tmp_path / "bad.yaml").write_text("env:\n  targte: 0.3\n")
    args = build_parser().parse_args(["search", "--config", str(tmp_path / "bad.yaml")])
    with pytest.raises(Exception, match="unknown EnvConfig keys: targte"):
        _base(args)


def test_errors_are_one_line(tmp_path):
    save_model(tmp_path / "r20.pt", build_model(ModelSpec("resnet20")), ModelSpec("resnet20"))
    (tmp_path / "empty.pt").write_bytes(b"")
    cases = [["evaluate", "resnet21"], ["evaluate", "resnet20", "--checkpoint", tmp_path / "none.pt"],
             ["evaluate", "resnet20", "--checkpoint", tmp_path / "empty.pt"],
             ["evaluate", "resnet20", "--dataset", "cifar10", "--data-dir", tmp_path / "nodata"],
             ["inspect", "resnet20", "--exclude", "layr1.*"],
             ["inspect", "mobilenet_v2", "--model-arg", "widht=0.5"], ["inspect", "mobilenet_v2", "--model-arg", "width"],
             ["uniform", "resnet20", "--target", "0.01", "--out", tmp_path / "p.json"],
             ["uniform", "resnet20", "--target", "nan", "--out", tmp_path / "p.json"],
             ["search", "--resume", tmp_path],
             ["search", "--model", "resnet8", "--episodes", "0", "--out", tmp_path / "s0"],
             ["apply", tmp_path / "nopolicy.json", "--out", tmp_path / "x.pt"],
             ["train", "resnet8", "--epochs", "0", "--out", tmp_path / "t"]]
    for args in cases:
        r = amc(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("amc: error: "), (args, r.stderr)


def test_uniform_then_apply_then_load_in_a_fresh_process(tmp_path):
    save_model(tmp_path / "r20.pt", build_model(ModelSpec("resnet20")), ModelSpec("resnet20"))
    r = amc("uniform", "resnet20", "--target", "0.5", "--out", tmp_path / "p.json", "--criterion", "l2")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "p.json").read_text())["prune"]["criterion"] == "l2"
    r = amc("apply", tmp_path / "p.json", "resnet32", "--checkpoint", tmp_path / "r20.pt", "--out", tmp_path / "x.pt")
    assert r.returncode == 2 and "holds a 'resnet20' model, not 'resnet32'" in r.stderr
    r = amc("apply", tmp_path / "p.json", "--checkpoint", tmp_path / "r20.pt", "--out", tmp_path / "c.pt")
    assert r.returncode == 2 and "needs calibration images" in r.stderr
    r = amc("apply", tmp_path / "p.json", "--out", tmp_path / "c.pt", "--no-recovery")
    assert r.returncode == 2 and "--random-init" in r.stderr
    r = amc("apply", tmp_path / "p.json", "--checkpoint", tmp_path / "r20.pt", "--out", tmp_path / "p.json", "--no-recovery")
    assert r.returncode == 2 and "is one of the inputs" in r.stderr
    r = amc("apply", tmp_path / "p.json", "--checkpoint", tmp_path / "r20.pt", "--out", tmp_path / "c.pt", "--no-recovery",
            *(["--onnx", tmp_path / "c.onnx"] if HAVE_ORT else []))
    assert r.returncode == 0, r.stderr
    if HAVE_ORT:  # the exported graph runs in ONNX Runtime and matches torch
        assert "ONNX Runtime matches torch" in r.stdout and (tmp_path / "c.onnx").stat().st_size > 10_000
    code = ("import torch, amc; from amc.io import open_model; m,s,e=open_model(None, %r); "
            "print(amc.cost.macs(m, torch.zeros(1,3,32,32)))") % str(tmp_path / "c.pt")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 0.49 * 40_551_040 <= int(out.stdout.strip()) <= 0.5 * 40_551_040


def _search_cmd(out, *extra):
    return ["search", "--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset", "synthetic", "--holdout", "200",
            "--search-images", "200", "--episodes", "14", "--warmup-episodes", "4", "--agent-batch-size", "8",
            "--hidden", "64", "64", "--threads", "1", "--seed", "5", "--bn-batches", "1", "--calibration-images", "100",
            "--quiet", "--out", str(out), *extra]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert amc(*_search_cmd(full)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "amc.cli", *_search_cmd(killed)], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        csv = killed / "episodes.csv"
        if csv.is_file() and len(csv.read_text().splitlines()) >= 8:  # header + 7 episodes: past warm-up
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(pd.read_csv(killed / "episodes.csv")) < 14
    resume = subprocess.Popen([sys.executable, "-m", "amc.cli", "search", "--resume", str(killed), "--quiet"], env=ENV,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.5)  # killed again, during the resume's start-up or its first episodes
    resume.send_signal(signal.SIGKILL)
    resume.wait()
    r = amc("search", "--resume", killed, "--quiet", "--bn-batches", "3")
    assert r.returncode == 2 and "prune.bn_batches: 1 -> 3" in r.stderr
    r = amc("search", "--resume", killed, "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = pd.read_csv(full / "episodes.csv"), pd.read_csv(killed / "episodes.csv")
    assert b.episode.tolist() == list(range(1, 15))
    cols = ["reward", "top1", "macs_ratio"] + [c for c in a.columns if c.startswith("ratio:")]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    pa, pb = (json.loads((d / "best_policy.json").read_text()) for d in (full, killed))
    assert pa["groups"] == pb["groups"]


def test_ctrl_c_stops_with_a_resume_command_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"  # 60 episodes: still running when the signal comes
    # a test runner started in the background inherits an ignored SIGINT; a user's terminal delivers it
    proc = subprocess.Popen([sys.executable, "-m", "amc.cli", *_search_cmd(out), "--episodes", "60"], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "episodes.csv").is_file() and
                                          len((out / "episodes.csv").read_text().splitlines()) >= 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"amc search --resume {out}" in err
    assert len(pd.read_csv(out / "episodes.csv")) < 60
    r = amc("search", "--resume", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(out / "episodes.csv").episode.tolist() == list(range(1, 61))


def test_demo_compares_at_one_budget_and_reuses_its_folder(tmp_path):
    """A tiny demo (1 epoch, 3 episodes) in process, then the CLI on the same folder reuses model and search."""
    from amc.errors import AmcError
    from amc.policy import Policy
    from amc_agents.demo import TARGET, run_demo

    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI does: the numbers below must equal the CLI's table
    try:
        r = run_demo(out, 3, epochs=1, agent="random")
    finally:
        torch.set_num_threads(threads)
    dense, uniform, searched = (r.row(n) for n in ("dense", "uniform", "searched"))
    assert [row.name for row in r.rows] == ["dense", "uniform", "searched"] and r.test_images == 400
    for row in (uniform, searched):  # both pruned models within the same budget, and really smaller
        assert row.macs <= TARGET * dense.macs and row.params < dense.params and 0 <= row.top1 <= 1
    best = Policy.load(out / "search" / "best_policy.json")
    assert best.metrics["top1"] == pytest.approx(searched.search_top1)  # the applied model is the one scored
    assert best.data.dataset == "digits" and (out / "search" / "summary.md").is_file()
    assert (out / "compact.pt").is_file() and (out / "uniform.pt").is_file()
    again = amc("demo", "--out", out, "--episodes", "3", "--epochs", "1", "--agent", "random")
    assert again.returncode == 0, again.stderr
    assert "reusing trained model" in again.stdout and "continuing the AMC search" in again.stdout
    assert len(pd.read_csv(out / "search" / "episodes.csv")) == 3  # the finished search was not run again
    table = {line.split()[0]: line.split() for line in again.stdout.splitlines()
             if line.split()[:1] in (["dense"], ["uniform"], ["searched"]) and line.endswith("%")}
    assert float(table["searched"][-2].rstrip("%")) == pytest.approx(100 * searched.top1, abs=0.01)
    assert float(table["uniform"][-2].rstrip("%")) == pytest.approx(100 * uniform.top1, abs=0.01)
    older = tmp_path / "older"  # a folder of the earlier synthetic-image demo (its marker file is empty)
    (older / "dense").mkdir(parents=True)
    (older / ".amc-demo").touch()
    with pytest.raises(AmcError, match="older amc demo"):
        run_demo(older, 3, epochs=1)


def test_cache_dir_none_writes_no_cache_folder(tmp_path, monkeypatch):
    """--cache-dir none turns the cache off: nothing named 'none' appears in the working folder."""
    from amc.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["search", "--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset", "synthetic",
                 "--holdout", "100", "--search-images", "50", "--calibration-images", "40", "--bn-batches", "1",
                 "--episodes", "2", "--agent", "random", "--quiet", "--cache-dir", "none", "--out", "run"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert "cache_dir: null" in (tmp_path / "run" / "config.yaml").read_text()
