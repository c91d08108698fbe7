"""Policy exports (Torch-Pruning script, NNI config_list, CSV) loaded back, and ratio dictionaries imported."""
import importlib.util
import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

import amc
from amc.cli import main
from amc.config import PruneConfig
from amc.errors import AmcError
from amc.export import nni_config_list, policy_from_ratios, policy_table, torch_pruning_ratios
from amc.models import ModelSpec, build_model

NO_RECOVERY = PruneConfig(reconstruct=False, bn_batches=0)


@pytest.fixture(scope="module")
def uniform(tmp_path_factory):
    """A 40%-MACs uniform policy of ResNet-20 (its residual streams are pinned: option-A shortcuts)."""
    d = tmp_path_factory.mktemp("export")
    path = d / "policy.json"
    assert main(["uniform", "resnet20", "--target", "0.4", "--out", str(path)]) == 0
    return amc.Policy.load(path), d


def _conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_torch_pruning_ratios_truncate_to_exactly_the_kept_counts(uniform):
    policy, _ = uniform
    ratios = torch_pruning_ratios(policy)
    by_group = {d.name: d for d in policy.groups}
    assert set(ratios) == {d.name for d in policy.groups if d.kept_channels < d.channels}  # ResNet-20: one producer each
    for name, ratio in ratios.items():
        d = by_group[name]
        assert int(d.channels * (1 - ratio)) == d.kept_channels  # Torch-Pruning's rounding


def test_torch_pruning_script_prunes_to_the_same_shapes_as_amc(uniform, tmp_path):
    pytest.importorskip("torch_pruning")  # an optional test extra
    policy, d = uniform
    script = tmp_path / "tp_prune.py"
    assert main(["export", str(d / "policy.json"), "--format", "torch-pruning", "--out", str(script)]) == 0
    spec = importlib.util.spec_from_file_location("tp_prune", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet20")).eval()
    ours = amc.apply_policy(model, policy, prune=NO_RECOVERY).model
    module.prune(model, torch.randn(1, 3, 32, 32))
    assert _conv_widths(model) == _conv_widths(ours)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_nni_config_list_couples_the_producers_of_a_residual_stream(tmp_path):
    from .nets import PATTERN_NETS

    model = PATTERN_NETS["se"]().eval()
    policy = amc.uniform_policy(model, (3, 8, 8), 0.5)
    graph = amc.trace(model, (3, 8, 8))
    config = nni_config_list(policy, graph)
    expand = next(e for e in config if "expand" in e["op_names"])
    assert expand["op_names"] == ["expand", "se.fc2"] and expand["dependency_group_id"] == "expand"
    kept = {d.name: d for d in policy.groups}["expand"]
    assert math.isclose(expand["sparse_ratio"], 1 - kept.kept_channels / kept.channels)
    assert all("dependency_group_id" not in e for e in config if len(e["op_names"]) == 1)


def test_nni_config_list_loads_in_nni(uniform, tmp_path):
    pytest.importorskip("nni")
    from nni.compression.pruning import L1NormPruner

    policy, d = uniform
    out = tmp_path / "config.json"
    assert main(["export", str(d / "policy.json"), "--format", "nni", "--out", str(out)]) == 0
    model = build_model(ModelSpec("resnet20"))
    L1NormPruner(model, json.loads(out.read_text()))  # accepts the config_list


def test_weight_policy_exports_per_layer_sparsities_to_nni_and_csv(tmp_path):
    policy = amc.Policy.for_weights({"layer1.0.conv1": 0.75, "layer2.0.conv2": 0.0}, model={"name": "resnet20"},
                                    input_shape=(3, 32, 32))
    assert nni_config_list(policy) == [{"op_names": ["layer1.0.conv1"], "sparse_ratio": 0.75}]
    table = policy_table(policy)
    assert list(table.layer) == ["layer1.0.conv1", "layer2.0.conv2"] and list(table.preserve_ratio) == [0.25, 1.0]
    with pytest.raises(AmcError, match="weight policy"):
        torch_pruning_ratios(policy)


def test_csv_reads_back_into_pandas_with_the_policy_numbers(uniform, tmp_path):
    policy, d = uniform
    out = tmp_path / "policy.csv"
    assert main(["export", str(d / "policy.json"), "--format", "csv", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.group) == [g.name for g in policy.groups]
    assert dict(zip(table.group, table.preserve_ratio)) == pytest.approx(policy.ratios)
    assert (table.kept_channels == table.channels * table.preserve_ratio).all()


def test_exported_pruning_ratios_import_back_as_the_same_policy(uniform, tmp_path):
    policy, d = uniform
    ratios = tmp_path / "ratios.json"
    ratios.write_text(json.dumps(torch_pruning_ratios(policy)))
    out = tmp_path / "imported.json"
    assert main(["import-ratios", str(ratios), "resnet20", "--pruning-ratios", "--out", str(out)]) == 0
    back = amc.Policy.load(out)
    assert {g.name: g.kept_channels for g in back.groups} == {g.name: g.kept_channels for g in policy.groups}
    graph = amc.trace(build_model(ModelSpec("resnet20")), (3, 32, 32))
    assert back.keep(graph) == policy.keep(graph)  # same architecture fingerprint: amc apply takes it


def test_ratios_by_any_producer_name_and_their_errors():
    from .nets import PATTERN_NETS

    model = PATTERN_NETS["se"]().eval()
    policy = policy_from_ratios(model, (3, 8, 8), {"se.fc2": 0.5, "stem": 1.0})
    kept = {d.name: d.kept_channels for d in policy.groups}
    channels = {d.name: d.channels for d in policy.groups}
    assert kept["expand"] == channels["expand"] // 2 and kept["stem"] == channels["stem"]
    with pytest.raises(AmcError, match="different ratios"):
        policy_from_ratios(model, (3, 8, 8), {"expand": 0.5, "se.fc2": 0.25})
    with pytest.raises(AmcError, match="'fc' is not a prunable"):
        policy_from_ratios(model, (3, 8, 8), {"fc": 0.5})
    with pytest.raises(AmcError, match=r"in \(0, 1\]"):
        policy_from_ratios(model, (3, 8, 8), {"stem": 0.0})


def test_apply_saves_a_torchscript_module_that_loads_back_without_amc(uniform, tmp_path):
    policy, d = uniform
    torch.manual_seed(0)
    spec = ModelSpec("resnet20")
    from amc.io import save_model
    save_model(tmp_path / "dense.pt", build_model(spec), spec)
    script = tmp_path / "compact.ts"
    assert main(["apply", str(d / "policy.json"), "--checkpoint", str(tmp_path / "dense.pt"), "--no-recovery",
                 "--out", str(tmp_path / "compact.pt"), "--torchscript", str(script)]) == 0
    loaded = torch.jit.load(str(script))
    compact, _, _ = amc.io.open_model(None, tmp_path / "compact.pt")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), compact(x))
    widths = {n: m.weight.shape[0] for n, m in loaded.named_modules() if n.endswith("conv1") and hasattr(m, "weight")}
    assert widths["layer1.0.conv1"] == {g.name: g.kept_channels for g in policy.groups}["layer1.0.conv1"]
