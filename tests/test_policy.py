import json
from pathlib import Path

import pytest

from amc.api import uniform_policy
from amc.config import CalibrationConfig, PruneConfig, replace
from amc.errors import AmcError
from amc.models import ModelSpec, build_model
from amc.policy import Policy
from amc.structure import trace

ROOT = Path(__file__).resolve().parents[1]


def _policy(**kwargs):
    model = build_model(ModelSpec("resnet20"))
    return model, uniform_policy(model, (3, 32, 32), 0.6, model_spec=ModelSpec("resnet20").to_dict(), **kwargs)


def test_roundtrip_keeps_everything_needed_to_rebuild(tmp_path):
    model, policy = _policy(prune=PruneConfig(criterion="l2", bn_batches=7))
    policy.calibration = CalibrationConfig(images=123, seed=9)
    policy.save(tmp_path / "p.json")
    again = Policy.load(tmp_path / "p.json")
    assert again.to_dict() == policy.to_dict()
    assert again.prune.criterion == "l2" and again.prune.bn_batches == 7 and again.calibration.images == 123
    graph = trace(model, (3, 32, 32))
    assert again.keep(graph) == {d.name: d.kept_channels for d in policy.groups}
    assert set(again.ratios) == {g.name for g in graph.prunable}
    assert all(0 < r <= 1 for r in again.ratios.values())


def test_mismatch_names_the_groups(tmp_path):
    _, policy = _policy()
    other = trace(build_model(ModelSpec("resnet32")), (3, 32, 32))
    with pytest.raises(AmcError, match="does not match the model: .*layer1.3.conv1: missing from the policy"):
        policy.keep(other)
    wider = trace(build_model(ModelSpec("resnet20")), (3, 64, 64))  # same groups, other input shape
    with pytest.raises(AmcError, match="other layer shapes or input shape"):
        policy.keep(wider)
    assert policy.keep(wider, force=True)


@pytest.mark.parametrize("change,message", [
    (lambda d: d["groups"].pop(), "no decision in the policy"),
    (lambda d: d["groups"].append(dict(d["groups"][0])), "more than once"),
    (lambda d: d["groups"][0].update(kept_channels=True), "not a whole number"),
    (lambda d: d["groups"][0].update(requested_ratio=float("nan")), "preserve ratios lie in"),
    (lambda d: d["groups"][0].update(executed_ratio=1.7), "preserve ratios lie in"),
    (lambda d: d["groups"][0].update(executed_ratio=0.9), "records executed_ratio"),
    (lambda d: d["groups"][0].update(kept_channels=0, executed_ratio=0.0), "keeps 0 of"),
    (lambda d: d.update(schema_version=7), "schema version 7"),
    (lambda d: d["prune"].update(unknown=1), "unknown PruneConfig keys: unknown"),
])
def test_invalid_policies_are_refused_with_a_reason(tmp_path, change, message):
    model, policy = _policy()
    data = policy.to_dict()
    change(data)
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(AmcError, match=message):
        Policy.load(tmp_path / "p.json").keep(trace(model, (3, 32, 32)))


def test_not_json_or_missing_file(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AmcError, match="not valid JSON"):
        Policy.load(tmp_path / "bad.json")
    with pytest.raises(AmcError, match="not found"):
        Policy.load(tmp_path / "none.json")


def test_schema_1_policies_still_load():
    """A policy written before the restructuring (copied from the first ResNet-20 benchmark record)."""
    for f in [ROOT / "tests" / "data" / "schema1_resnet20_policy.json"]:
        policy = Policy.load(f)
        assert json.loads(f.read_text())["schema_version"] == 1
        spec = policy.model
        graph = trace(build_model(ModelSpec(spec["name"], spec["num_classes"])), tuple(policy.input_shape))
        keep = policy.keep(graph)
        assert len(keep) == len(graph.prunable) and policy.kept() and policy.prune.criterion == "l1"
        assert all(len(policy.kept()[n]) == keep[n] for n in policy.kept())
        # scored with AMC's least squares and 2 BatchNorm batches of 100 images: rebuilt that way, not with today's
        assert policy.prune.reconstruction == "consumers" and policy.prune.recalibration_batches == 2
        assert policy.calibration.batch_size == 100


def test_policies_written_before_sequential_least_squares_rebuild_with_the_consumers_least_squares(tmp_path):
    """Files without ``prune.reconstruction`` were scored with AMC's least squares: loading them must not pick
    up today's default, or the rebuilt model would differ from the scored one."""
    _, policy = _policy(prune=PruneConfig(bn_batches=1))
    d = policy.to_dict()
    assert d["prune"]["reconstruction"] == "sequential"  # today's default is written out
    del d["prune"]["reconstruction"]
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = Policy.load(tmp_path / "old.json")
    assert old.prune.reconstruction == "consumers" and old.prune.recalibration_batches == 1
    policy.save(tmp_path / "new.json")
    new = Policy.load(tmp_path / "new.json")
    assert new.prune.reconstruction == "sequential" and new.prune == policy.prune
    assert new.prune.solve_precision == "float32"  # today's default; files from before it solved in float64
    del d["prune"]["solve_precision"]
    d["prune"]["reconstruction"] = "sequential"
    (tmp_path / "float64.json").write_text(json.dumps(d))
    assert Policy.load(tmp_path / "float64.json").prune == replace(policy.prune, solve_precision="float64")
    default = _policy()[1]
    default.save(tmp_path / "default.json")
    assert Policy.load(tmp_path / "default.json").prune.recalibration_batches == 0  # None round-trips
