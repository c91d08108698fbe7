"""A corpus of bad inputs over every command: each gets a one-line error naming the problem, a non-zero
exit status, no traceback, and leaves every file that existed before exactly as it was (hashed)."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from amc.cli import main
from amc.io import save_model
from amc.models import ModelSpec, build_model

TINY = ["--input-shape", "3", "16", "16"]
DATA = ["--dataset", "synthetic", "--holdout", "100", "--search-images", "50"]
SEARCH = ["search", "--model", "resnet8", *TINY, *DATA, "--calibration-images", "40", "--bn-batches", "1",
          "--episodes", "3", "--agent", "random", "--quiet"]
BOOKKEEPING = {"run.lock", "run.pid"}  # lock files a refused resume may touch


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder of the user's files: checkpoints, policies, a finished search, data, damaged copies of each."""
    d = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    save_model(d / "dense.pt", build_model(spec), spec)
    save_model(d / "r20.pt", build_model(ModelSpec("resnet20")), ModelSpec("resnet20"))
    torch.save({"state_dict": build_model(ModelSpec("resnet20")).state_dict()}, d / "r20_plain.pt")
    assert main(["uniform", "--checkpoint", str(d / "dense.pt"), "--target", "0.5", *DATA,
                 "--out", str(d / "policy.json")]) == 0
    assert main(["uniform", "--checkpoint", str(d / "r20.pt"), "--target", "0.5", "--out", str(d / "policy_r20.json")]) == 0
    assert main([*SEARCH, "--checkpoint", str(d / "dense.pt"), "--out", str(d / "run")]) == 0
    assert main([*SEARCH, "--checkpoint", str(d / "dense.pt"), "--seed", "1", "--episodes", "2", "--out", str(d / "run2")]) == 0
    (d / "notes.txt").write_text("my notes\n")
    (d / "mine").mkdir()
    (d / "mine" / "keep.txt").write_text("keep me\n")
    (d / "empty.pt").write_bytes(b"")
    (d / "garbage.pt").write_text("not a checkpoint")
    (d / "trunc.pt").write_bytes((d / "dense.pt").read_bytes()[:2000])
    torch.save([1, 2, 3], d / "list.pt")
    (d / "empty.json").write_text("")
    (d / "notjson.json").write_text("{")
    (d / "list.json").write_text("[1, 2]")
    (d / "bad.yaml").write_text("env: [unclosed\n")
    (d / "unknown.yaml").write_text("env:\n  targte: 0.3\n")
    (d / "flat.yaml").write_text("target: 0.3\n")
    (d / "nan.yaml").write_text("env:\n  target: .nan\n")
    (d / "ratios_unknown.json").write_text('{"layer9.conv1": 0.5}')
    (d / "ratios_big.json").write_text('{"layer1.0.conv1": 1.5}')
    (d / "ratios_half.json").write_text('{"layer1.0.conv1": 0.5}')
    (d / "ratios_linear.json").write_text('{"linear": 0.5}')
    from PIL import Image

    for i in range(5):  # an image folder with 5 classes
        for split in ("train", "test"):
            (d / "classes5" / split / f"c{i}").mkdir(parents=True)
            Image.new("RGB", (16, 16), (50 * i, 0, 0)).save(d / "classes5" / split / f"c{i}" / "0.png")
    (d / "noclasses").mkdir()
    (d / "noclasses" / "train").mkdir()
    policy = json.loads((d / "policy.json").read_text())
    for name, change in POLICY_EDITS.items():
        edited = json.loads(json.dumps(policy))
        change(edited)
        (d / f"policy_{name}.json").write_text(json.dumps(edited))
    for name, damage in RUN_DAMAGE.items():
        shutil.copytree(d / "run", d / f"run_{name}")
        damage(d / f"run_{name}", d)
    return d


def _group(p, i=0, **values):
    p["groups"][i].update(values)


POLICY_EDITS = {
    "missing_group": lambda p: p["groups"].pop(),
    "twice": lambda p: p["groups"].append(dict(p["groups"][0])),
    "kept_true": lambda p: _group(p, kept_channels=True),
    "kept_zero": lambda p: _group(p, kept_channels=0, executed_ratio=0.0),
    "kept_too_many": lambda p: _group(p, kept_channels=999, executed_ratio=1.0),
    "ratio_negative": lambda p: _group(p, requested_ratio=-0.5),
    "ratio_big": lambda p: _group(p, executed_ratio=1.7),
    "ratio_nan": lambda p: _group(p, requested_ratio=float("nan")),
    "ratio_mismatch": lambda p: _group(p, executed_ratio=0.9),
    "ratio_text": lambda p: _group(p, requested_ratio="half"),
    "unknown_group": lambda p: _group(p, name="layer9.0.conv1"),
    "channels_wrong": lambda p: _group(p, channels=17),
    "hash": lambda p: p["fingerprint"].update(layer_shapes_sha256="0" * 16),
    "schema": lambda p: p.update(schema_version=9),
    "format": lambda p: p.pop("format"),
    "no_groups": lambda p: p.pop("groups"),
    "prune_unknown": lambda p: p["prune"].update(mystery=1),
    "criterion": lambda p: p["prune"].update(criterion="l7"),
    "bn_negative": lambda p: p["prune"].update(bn_batches=-1),
    "calib_zero": lambda p: p["calibration"].update(images=0),
    "input_shape": lambda p: p.update(input_shape=[3, 32, 32]),
    "model_unknown": lambda p: p["model"].update(name="resnet9000"),
    "indices_bad": lambda p: _group(p, kept_indices=[0, 0, 1, 2, 3, 4, 5, 6]),
    "indices_count": lambda p: _group(p, kept_indices=[0, 1]),
}


def _replace_checkpoint(run, d):
    shutil.copy(d / "run2" / "checkpoint.pt", run / "checkpoint.pt")


RUN_DAMAGE = {
    "empty_checkpoint": lambda run, d: (run / "checkpoint.pt").write_bytes(b""),
    "trunc_checkpoint": lambda run, d: (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:500]),
    "empty_config": lambda run, d: (run / "config.yaml").write_text(""),
    "garbage_config": lambda run, d: (run / "config.yaml").write_text("{{{"),
    "short_csv": lambda run, d: (run / "episodes.csv").write_text((run / "episodes.csv").read_text()[:50]),
    "other_checkpoint": _replace_checkpoint,
    "no_checkpoint": lambda run, d: (run / "checkpoint.pt").unlink(),
}


def cases():
    """(id, argv with {d} for the user folder, expected message fragment)."""
    c = []
    ck = ["--checkpoint", "{d}/dense.pt"]
    # ---- search: numbers and names
    for flag, values in {"--target": ["nan", "inf", "0", "1.5", "-0.5"], "--lbound": ["nan", "0", "1.5"],
                         "--rbound": ["0", "2"], "--round-to": ["0", "-1"], "--episodes": ["0", "-3"],
                         "--top-k": ["0"], "--holdout": ["-1"], "--search-images": ["0", "101"],
                         "--calibration-images": ["0"], "--calibration-batch-size": ["0"], "--bn-batches": ["-1"],
                         "--points-per-image": ["-1"], "--ridge": ["nan", "-1"], "--actor-lr": ["0", "nan", "inf"],
                         "--eval-batch-mib": ["0", "nan", "-1"],
                         "--critic-lr": ["0", "-1"], "--tau": ["0", "2"], "--agent-batch-size": ["0"],
                         "--gamma": ["1.5"], "--buffer-per-group": ["0"], "--warmup-episodes": ["-1"],
                         "--sigma": ["nan", "-1"], "--sigma-decay": ["0", "2"], "--baseline-momentum": ["0"],
                         "--reward-scale": ["0", "nan"], "--threads": ["-1"], "--seed": ["-1"], "--hidden": ["0"],
                         "--num-classes": ["0"], "--split-seed": ["-2"], "--calibration-seed": ["-1"]}.items():
        for v in values:
            c.append((f"search{flag}={v}", [*SEARCH, *ck, flag, v, "--out", "{d}/new"], None))
    for flag, v in (("--episodes", "abc"), ("--target", "half"), ("--agent", "ppo"), ("--criterion", "l7"),
                    ("--cost", "joules"), ("--mode", "greedy"), ("--metric", "top3"), ("--dataset", "mnist")):
        c.append((f"search{flag}={v}", [*SEARCH, *ck, flag, v, "--out", "{d}/new"], "invalid"))
    c += [
        ("search-device-cuda", [*SEARCH, *ck, "--device", "cuda", "--out", "{d}/new"], "CUDA"),
        ("search-device-tpu", [*SEARCH, *ck, "--device", "tpu", "--out", "{d}/new"], "device"),
        ("search-input-shape", [*SEARCH, *ck, "--input-shape", "3", "0", "16", "--out", "{d}/new"], "input_shape"),
        ("search-mean-nan", [*SEARCH, *ck, "--mean", "nan", "0", "0", "--out", "{d}/new"], "mean"),
        ("search-std-zero", [*SEARCH, *ck, "--std", "0", "1", "1", "--out", "{d}/new"], "std"),
        ("search-warmup-whole-run", [*SEARCH, *ck, "--agent", "ddpg", "--warmup-episodes", "3", "--out", "{d}/new"],
         "never learn"),
        ("search-unreachable", [*SEARCH, *ck, "--target", "0.01", "--out", "{d}/new"], "unreachable"),
        ("search-lbound-above-rbound", [*SEARCH, *ck, "--lbound", "0.8", "--rbound", "0.5", "--out", "{d}/new"], "above"),
        ("search-into-run", [*SEARCH, *ck, "--out", "{d}/run"], "already holds a search"),
        ("search-into-user-folder", [*SEARCH, *ck, "--out", "{d}/mine"], "not an empty folder"),
        ("search-into-file", [*SEARCH, *ck, "--out", "{d}/notes.txt"], "not an empty folder"),
        ("search-below-file", [*SEARCH, *ck, "--out", "{d}/notes.txt/run"], "is a file"),
        ("search-no-model", ["search", *DATA, "--out", "{d}/new"], "give --model"),
        ("search-missing-checkpoint", [*SEARCH, "--checkpoint", "{d}/none.pt", "--out", "{d}/new"], "not found"),
        ("search-empty-checkpoint", [*SEARCH, "--checkpoint", "{d}/empty.pt", "--out", "{d}/new"], "cannot read"),
        ("search-garbage-checkpoint", [*SEARCH, "--checkpoint", "{d}/garbage.pt", "--out", "{d}/new"], "cannot read"),
        ("search-trunc-checkpoint", [*SEARCH, "--checkpoint", "{d}/trunc.pt", "--out", "{d}/new"], "cannot read"),
        ("search-list-checkpoint", [*SEARCH, "--checkpoint", "{d}/list.pt", "--out", "{d}/new"], "expected a state_dict"),
        ("search-wrong-arch", [*SEARCH, "--checkpoint", "{d}/r20_plain.pt", "--out", "{d}/new"], "does not match"),
        ("search-data-missing", [*SEARCH, *ck, "--dataset", "cifar10", "--data-dir", "{d}/nodata", "--out", "{d}/new"],
         "not found"),
        ("search-data-not-cifar", [*SEARCH, *ck, "--dataset", "cifar10", "--data-dir", "{d}/mine", "--out", "{d}/new"],
         "not a cifar-10"),
        ("search-folder-no-classes", [*SEARCH, *ck, "--dataset", "folder", "--data-dir", "{d}/noclasses", "--out",
                                      "{d}/new"], "no class subfolders"),
        ("search-cifar-no-dir", [*SEARCH, *ck, "--dataset", "cifar10", "--out", "{d}/new"], "needs --data-dir"),
        ("search-holdout-too-big", [*SEARCH, *ck, "--holdout", "7000", "--out", "{d}/new"], "holdout"),
        ("search-exclude-nothing", [*SEARCH, *ck, "--exclude", "layr*", "--out", "{d}/new"], "matches no"),
        ("search-config-missing", [*SEARCH, *ck, "--config", "{d}/none.yaml", "--out", "{d}/new"], "not found"),
        ("search-config-bad-yaml", [*SEARCH, *ck, "--config", "{d}/bad.yaml", "--out", "{d}/new"], "not valid YAML"),
        ("search-config-unknown", [*SEARCH, *ck, "--config", "{d}/unknown.yaml", "--out", "{d}/new"], "targte"),
        ("search-config-flat", [*SEARCH, *ck, "--config", "{d}/flat.yaml", "--out", "{d}/new"], "unknown"),
        ("search-config-nan", [*SEARCH, *ck, "--config", "{d}/nan.yaml", "--out", "{d}/new"], "target"),
        ("search-unknown-model", ["search", "--model", "resnet9000", *DATA, "--out", "{d}/new"], "unknown model"),
        ("search-factory-missing", ["search", "--model", "nosuchpkg.mod:make", *TINY, *DATA, "--out", "{d}/new"],
         "cannot import"),
    ]
    # ---- resume
    c += [
        ("resume-not-a-run", ["search", "--resume", "{d}/mine"], "not a resumable run"),
        ("resume-missing", ["search", "--resume", "{d}/nowhere"], "not a resumable run"),
        ("resume-changed-target", ["search", "--resume", "{d}/run", "--target", "0.4"], "env.target"),
        ("resume-changed-agent", ["search", "--resume", "{d}/run", "--agent", "ddpg"], "agent.algorithm"),
        ("resume-changed-seed", ["search", "--resume", "{d}/run", "--seed", "3"], "seed"),
        ("resume-changed-checkpoint", ["search", "--resume", "{d}/run", "--checkpoint", "{d}/r20.pt"], "model.checkpoint"),
        ("resume-fewer-episodes", ["search", "--resume", "{d}/run", "--episodes", "2"], "more than --episodes 2"),
        ("resume-zero-episodes", ["search", "--resume", "{d}/run", "--episodes", "0"], "episodes"),
    ]
    for name, fragment in (("empty_checkpoint", "missing or empty"), ("trunc_checkpoint", "damaged"),
                           ("empty_config", "empty or damaged"), ("garbage_config", "cannot read"),
                           ("short_csv", "rows were lost"), ("other_checkpoint", "another run"),
                           ("no_checkpoint", "not a resumable run")):
        c.append((f"resume-{name}", ["search", "--resume", f"{{d}}/run_{name}", "--episodes", "4", "--quiet"], fragment))
    # ---- apply
    base = ["apply", "{d}/policy.json", *ck]
    c += [
        ("apply-missing-policy", ["apply", "{d}/none.json", *ck, "--out", "{d}/x.pt"], "not found"),
        ("apply-empty-policy", ["apply", "{d}/empty.json", *ck, "--out", "{d}/x.pt"], "not valid JSON"),
        ("apply-notjson-policy", ["apply", "{d}/notjson.json", *ck, "--out", "{d}/x.pt"], "not valid JSON"),
        ("apply-list-policy", ["apply", "{d}/list.json", *ck, "--out", "{d}/x.pt"], "not an amc policy"),
        ("apply-checkpoint-as-policy", ["apply", "{d}/dense.pt", *ck, "--out", "{d}/x.pt"], "not valid JSON"),
        ("apply-out-is-policy", [*base, "--out", "{d}/policy.json"], "one of the inputs"),
        ("apply-out-is-checkpoint", [*base, "--out", "{d}/dense.pt"], "one of the inputs"),
        ("apply-onnx-is-checkpoint", [*base, "--out", "{d}/x.pt", "--onnx", "{d}/dense.pt"], "one of the inputs"),
        ("apply-out-exists", [*base, "--out", "{d}/notes.txt"], "already exists"),
        ("apply-onnx-exists", [*base, "--out", "{d}/x.pt", "--onnx", "{d}/notes.txt"], "already exists"),
        ("apply-out-folder", [*base, "--out", "{d}/mine"], "already exists"),
        ("apply-out-below-file", [*base, "--out", "{d}/notes.txt/x.pt"], "is a file"),
        ("apply-no-weights", ["apply", "{d}/policy.json", "--out", "{d}/x.pt"], "--random-init"),
        ("apply-other-model", ["apply", "{d}/policy.json", "--checkpoint", "{d}/r20.pt", "--out", "{d}/x.pt"],
         "holds a 'resnet20' model"),
        ("apply-r20-policy-on-r8", ["apply", "{d}/policy_r20.json", *ck, "--out", "{d}/x.pt"], "holds a 'resnet8' model"),
        ("apply-no-data", ["apply", "{d}/policy_r20.json", "--checkpoint", "{d}/r20.pt", "--out", "{d}/x.pt"],
         "needs calibration images"),
        ("apply-finetune-negative", [*base, "--out", "{d}/x.pt", "--finetune-epochs", "-1"], "finetune"),
        ("apply-finetune-no-data", ["apply", "{d}/policy_r20.json", "--checkpoint", "{d}/r20.pt", "--no-recovery",
                                    "--out", "{d}/x.pt", "--finetune-epochs", "1"], "needs data"),
        ("apply-device-cuda", [*base, "--out", "{d}/x.pt", "--device", "cuda"], "CUDA"),
        ("apply-bn-negative", [*base, "--out", "{d}/x.pt", "--bn-batches", "-1"], "bn_batches"),
        ("apply-ridge-nan", [*base, "--out", "{d}/x.pt", "--ridge", "nan"], "ridge"),
        ("apply-lr-zero", [*base, "--out", "{d}/x.pt", "--finetune-epochs", "1", "--lr", "0"], "lr"),
        ("apply-batch-zero", [*base, "--out", "{d}/x.pt", "--finetune-epochs", "1", "--batch-size", "0"], "batch_size"),
        ("apply-distill-above-1", [*base, "--out", "{d}/x.pt", "--finetune-epochs", "1", "--distill", "1.5"], "distill"),
        ("apply-temperature-zero", [*base, "--out", "{d}/x.pt", "--finetune-epochs", "1", "--distill", "0.5",
                                    "--temperature", "0"], "temperature"),
        ("apply-distill-no-finetune", [*base, "--out", "{d}/x.pt", "--distill", "0.5"], "--finetune-epochs"),
        ("apply-temperature-no-distill", [*base, "--out", "{d}/x.pt", "--finetune-epochs", "1", "--temperature", "2"],
         "--distill"),
        ("apply-empty-checkpoint", ["apply", "{d}/policy.json", "--checkpoint", "{d}/empty.pt", "--out", "{d}/x.pt"],
         "cannot read"),
        ("apply-data-missing", [*base, "--out", "{d}/x.pt", "--data-dir", "{d}/nodata", "--dataset", "cifar10"],
         "not found"),
    ]
    for name in POLICY_EDITS:
        c.append((f"apply-policy-{name}", ["apply", f"{{d}}/policy_{name}.json", *ck, "--out", "{d}/x.pt"], None))
    # ---- uniform
    c += [(f"uniform--target={v}", ["uniform", *ck, "--target", v, "--out", "{d}/u.json"], None)
          for v in ("0", "nan", "inf", "2", "-1", "0.01")]
    c += [
        ("uniform-no-target", ["uniform", *ck, "--out", "{d}/u.json"], "required"),
        ("uniform-lbound-zero", ["uniform", *ck, "--target", "0.5", "--lbound", "0", "--out", "{d}/u.json"], "lbound"),
        ("uniform-round-zero", ["uniform", *ck, "--target", "0.5", "--round-to", "0", "--out", "{d}/u.json"], "round_to"),
        ("uniform-out-exists", ["uniform", *ck, "--target", "0.5", "--out", "{d}/notes.txt"], "already exists"),
        ("uniform-out-is-checkpoint", ["uniform", *ck, "--target", "0.5", "--out", "{d}/dense.pt"], "one of the inputs"),
        ("uniform-out-folder", ["uniform", *ck, "--target", "0.5", "--out", "{d}/mine"], "already exists"),
        ("uniform-calib-zero", ["uniform", *ck, "--target", "0.5", "--calibration-images", "0", "--out", "{d}/u.json"],
         "images"),
        ("uniform-unknown-model", ["uniform", "resnet9000", "--target", "0.5", "--out", "{d}/u.json"], "unknown model"),
    ]
    # ---- train
    tr = ["train", "resnet8", *TINY, *DATA]
    c += [(f"train{flag}={v}", [*tr, flag, v, "--out", "{d}/t"], None)
          for flag, v in (("--epochs", "0"), ("--epochs", "-1"), ("--lr", "0"), ("--lr", "nan"), ("--batch-size", "0"),
                          ("--weight-decay", "-1"), ("--momentum", "1.5"), ("--holdout", "-5"), ("--seed", "-1"))]
    c += [
        ("train-into-user-folder", [*tr, "--out", "{d}/mine"], "already exists"),
        ("train-into-run", [*tr, "--out", "{d}/run"], "already exists"),
        ("train-out-is-file", [*tr, "--out", "{d}/notes.txt"], "already exists"),
        ("train-resume-nothing", [*tr, "--out", "{d}/mine", "--resume"], "nothing to resume"),
        ("train-no-model", ["train", *DATA, "--out", "{d}/t"], "give a model name"),
        ("train-device-cuda", [*tr, "--out", "{d}/t", "--device", "cuda"], "CUDA"),
        ("train-holdout-too-big", [*tr, "--holdout", "7000", "--out", "{d}/t"], "holdout"),
    ]
    # ---- evaluate, inspect, report
    c += [
        ("evaluate-unknown-model", ["evaluate", "resnet21"], "unknown model"),
        ("evaluate-missing-checkpoint", ["evaluate", "resnet8", "--checkpoint", "{d}/none.pt"], "not found"),
        ("evaluate-empty-checkpoint", ["evaluate", "resnet8", "--checkpoint", "{d}/empty.pt"], "cannot read"),
        ("evaluate-wrong-arch", ["evaluate", "resnet8", "--checkpoint", "{d}/r20_plain.pt"], "does not match"),
        ("evaluate-other-name", ["evaluate", "resnet32", "--checkpoint", "{d}/r20.pt"], "holds a 'resnet20'"),
        ("evaluate-no-data-dir", ["evaluate", "resnet8", *ck, "--dataset", "cifar10"], "needs --data-dir"),
        ("evaluate-device", ["evaluate", "resnet8", *ck, "--device", "cuda"], "CUDA"),
        ("evaluate-split", ["evaluate", "resnet8", *ck, "--split", "valid"], "invalid choice"),
        ("evaluate-bad-shape", ["evaluate", "resnet8", "--input-shape", "3", "0", "16"], "input_shape"),
        ("evaluate-labels-beyond-classes", ["evaluate", "resnet8", *TINY, "--num-classes", "3", "--dataset", "folder",
                                            "--data-dir", "{d}/classes5"], "labels up to 4"),
        ("inspect-exclude", ["inspect", "resnet20", "--exclude", "layr1.*"], "matches no"),
        ("inspect-unknown", ["inspect", "resnet21"], "unknown model"),
        ("inspect-factory-needs-input-shape", ["inspect", "tests.nets:fixed_224_factory"], "--input-shape"),
        ("inspect-lbound", ["inspect", "resnet20", "--lbound", "0"], "bounds"),
        ("inspect-round", ["inspect", "resnet20", "--round-to", "0"], "round_to"),
        ("inspect-garbage-checkpoint", ["inspect", "--checkpoint", "{d}/garbage.pt"], "cannot read"),
        ("report-not-a-run", ["report", "{d}/mine"], "no episodes.csv"),
        ("report-missing", ["report", "{d}/nowhere"], "no episodes.csv"),
        ("report-empty-csv", ["report", "{d}/run_short_csv"], None),
        ("report-several-without-pareto", ["report", "{d}/run", "{d}/run2"], "--pareto"),
        ("report-pareto-into-user-folder", ["report", "{d}/run", "{d}/run2", "--pareto", "{d}/mine"],
         "not an empty folder"),
        ("demo-user-folder", ["demo", "--out", "{d}/mine", "--episodes", "2"], "not made by amc demo"),
        ("export-missing-policy", ["export", "{d}/none.json", "--format", "csv", "--out", "{d}/x.pt"], "not found"),
        ("export-format", ["export", "{d}/policy.json", "--format", "onnx", "--out", "{d}/x.pt"], "invalid choice"),
        ("export-over-notes", ["export", "{d}/policy.json", "--format", "csv", "--out", "{d}/notes.txt"],
         "already exists"),
        ("export-onto-policy", ["export", "{d}/policy.json", "--format", "nni", "--out", "{d}/policy.json",
                                "--overwrite"], "one of the inputs"),
        ("export-bad-module-name", ["export", "{d}/policy.json", "--format", "torch-pruning", "--out",
                                    "{d}/t/my-script.py"], "module name"),
        ("export-edited-policy", ["export", "{d}/policy_channels_wrong.json", "--format", "csv", "--out", "{d}/x.pt"],
         None),
        ("import-missing", ["import-ratios", "{d}/none.json", "resnet20", "--out", "{d}/u.json"], "not found"),
        ("import-not-json", ["import-ratios", "{d}/notjson.json", "resnet20", "--out", "{d}/u.json"], "not a JSON"),
        ("import-list", ["import-ratios", "{d}/list.json", "resnet20", "--out", "{d}/u.json"], "JSON object"),
        ("import-unknown-layer", ["import-ratios", "{d}/ratios_unknown.json", "resnet20", "--out", "{d}/u.json"],
         "'layer9.conv1' is not a prunable"),
        ("import-out-of-range", ["import-ratios", "{d}/ratios_big.json", "resnet20", "--out", "{d}/u.json"],
         "in [0, 1]"),
        ("import-all-removed", ["import-ratios", "{d}/ratios_half.json", "resnet20", "--pruning-ratios",
                                "--out", "{d}/notes.txt"], "already exists"),
        ("import-pinned-group", ["import-ratios", "{d}/ratios_linear.json", "resnet20", "--out", "{d}/u.json"],
         "model output"),
        ("prune-latency", ["prune", "resnet20", "--granularity", "channel", "--target", "0.5", "--cost", "latency",
                           "--random-init", "--out", "{d}/x.pt"], "amc prune budgets macs or params"),
        ("sensitivity-latency", ["sensitivity", "resnet8", *TINY, *DATA, "--cost", "latency", "--target", "0.5",
                                 "--out", "{d}/new"], "amc sensitivity budgets macs or params"),
        ("sweep-user-folder", ["sweep", "--model", "resnet8", *TINY, *DATA, "--targets", "0.5", "--out", "{d}/mine"],
         "not a sweep's (keep.txt)"),
        ("sweep-out-is-file", ["sweep", "--model", "resnet8", *TINY, *DATA, "--targets", "0.5", "--out",
                               "{d}/notes.txt"], "is a file"),
        ("sweep-target-nan", ["sweep", "--model", "resnet8", *TINY, *DATA, "--targets", "nan", "--out", "{d}/new"],
         "target"),
        ("sweep-target-big", ["sweep", "--model", "resnet8", *TINY, *DATA, "--targets", "0.5", "1.5", "--out",
                              "{d}/new"], "target"),
        ("sweep-unknown-agent", ["sweep", "--model", "resnet8", *TINY, *DATA, "--targets", "0.5", "--agents", "ppo",
                                 "--out", "{d}/new"], "ppo"),
        ("apply-torchscript-over-notes", ["apply", "{d}/policy.json", "--checkpoint", "{d}/dense.pt", "--no-recovery",
                                          "--out", "{d}/x.pt", "--torchscript", "{d}/notes.txt"], "already exists"),
        ("search-evaluator-missing", [*SEARCH, "--checkpoint", "{d}/dense.pt", "--evaluator", "tests.nets:nope",
                                      "--out", "{d}/new"], "no attribute 'nope'"),
        ("search-latency-accuracy-mode", [*SEARCH, "--cost", "latency", "--mode", "accuracy", "--out", "{d}/new"],
         "needs a count"),
        ("unknown-command", ["prune-everything"], "invalid choice"),
        ("unknown-flag", ["search", "--turbo"], "unrecognized"),
    ]
    return c


CASES = cases()


def _hashes(d: Path) -> dict:
    return {p.relative_to(d): hashlib.sha256(p.read_bytes()).hexdigest() for p in d.rglob("*")
            if p.is_file() and p.name not in BOOKKEEPING}


def test_the_corpus_is_large():
    assert len(CASES) >= 150 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_one_line_error_and_changes_nothing(files, case, capsys):
    _, argv, fragment = case
    before = _hashes(files)
    argv = [a.replace("{d}", str(files)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code not in (0, None), f"accepted: {argv}"
    assert len(lines) == 1 and lines[0].startswith("amc: error: "), err
    assert "Traceback" not in err
    if fragment:
        assert fragment in lines[0], lines[0]
    assert _hashes(files) == before, "a file the user had was changed"
    for leftover in ("new", "t", "x.pt", "u.json"):
        assert not (files / leftover).exists(), f"{leftover} was created by a refused command"
