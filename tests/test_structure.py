import pytest
import torch
from torch import nn

from amc.errors import AmcError
from amc.models import ModelSpec, build_model
from amc.structure import trace

from .nets import ConcatNet, GroupedNet, SplitNet


def test_concat_graph_offsets_and_reasons():
    graph = trace(ConcatNet(), (3, 8, 8))
    by_name = graph.group
    assert by_name["a"].prunable and by_name["b"].prunable
    assert by_name["a"].followers == ["bn"] and by_name["b"].followers == ["bn"]
    assert by_name["c"].prunable and by_name["c"].blocks == 2 and by_name["c"].consumers == ["g"]
    assert by_name["g"].blocks == 2 and by_name["fc"].reason == "model output"
    # bn reads a, then b: the second segment starts at offset 6
    assert graph.channel_slices(graph.layer["bn"].in_layout, "b") == [(6, 4, 1)]


def test_chunk_and_split_pieces():
    graph = trace(SplitNet(), (3, 8, 8))
    by_name = graph.group
    a = by_name["a"]  # chunk(2): one 4-channel space read twice, kept channels identical in both halves
    assert a.prunable and a.channels == 4 and a.consumers == ["p", "c"] and a.followers == ["bn"]
    assert graph.feature_index(graph.layer["a"].out_layout, {"a": torch.tensor([1, 3])}).tolist() == [1, 3, 5, 7]
    # explicit split sizes are constants: c's output is cut at 3 and pinned; fc reads [3:8] then [0:3]
    assert [by_name[n].channels for n in ("c[0:3]", "c[3:8]")] == [3, 5]
    assert all("sizes fixed" in by_name[n].reason for n in ("c[0:3]", "c[3:8]"))
    assert [s.group for s in graph.layer["fc"].in_layout] == ["c[3:8]", "c[0:3]"]
    assert by_name["p"].prunable


def test_layouts_name_groups_and_never_expose_integer_spaces():
    graph = trace(build_model(ModelSpec("resnet20")), (3, 32, 32))
    segments = [s for layer in graph.layers for s in layer.in_layout + layer.out_layout]
    assert all(isinstance(s.group, str) for s in segments)
    assert {s.group for s in segments} - set(graph.group) == {s.group for s in graph.layers[0].in_layout}  # model input
    assert not any(hasattr(g, "space") for g in graph.groups)


def test_grouped_conv_keeps_equal_counts_per_group():
    graph = trace(GroupedNet(), (3, 8, 8))
    by_name = graph.group
    assert (by_name["reduce"].blocks, by_name["grouped"].blocks) == (4, 4)
    assert by_name["stem"].blocks == 2  # added to the output of expand (groups=2)
    assert by_name["reduce"].count_step(8) == 8 and by_name["grouped"].count_step(3) == 12


def test_one_channel_per_group_is_unprunable():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3, groups=8), nn.Conv2d(16, 4, 1))
    reasons = {g.name: g.reason for g in trace(model, (3, 8, 8)).groups}
    assert "one channel per group" in reasons["0"]


def test_option_a_resnet_groups():
    graph = trace(build_model(ModelSpec("resnet56")), (3, 32, 32))
    prunable = graph.prunable
    assert len(prunable) == 27 and all(g.name.endswith("conv1") and g.name != "conv1" for g in prunable)
    assert all(g.consumers == [g.name.replace("conv1", "conv2")] for g in prunable)
    stream = [g for g in graph.groups if not g.prunable and g.name != "linear"]
    assert stream and all("zero-padding" in g.reason for g in stream)


def test_plain_net_first_input_and_classifier_never_pruned():
    graph = trace(build_model(ModelSpec("plain20")), (3, 32, 32))
    assert graph.groups[-1].reason == "model output"
    assert len(graph.prunable) == 19


def test_exclude_patterns():
    model = build_model(ModelSpec("plain20"))
    graph = trace(model, (3, 32, 32), exclude=["layer3.*"])
    assert all(not g.prunable for g in graph.groups if g.name.startswith("layer3"))
    assert any(g.prunable for g in graph.groups if g.name.startswith("layer2"))
    with pytest.raises(AmcError, match="matches no conv"):
        trace(model, (3, 32, 32), exclude=["layr3.*"])


def test_untraceable_model_is_reported():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x

    with pytest.raises(AmcError, match="cannot trace"):
        trace(Dynamic(), (3, 8, 8))


def test_group_names_are_unique_and_stable():
    from .nets import TwiceNet

    names = [[g.name for g in trace(TwiceNet(), (3, 8, 8)).groups] for _ in range(2)]
    assert names[0] == names[1] == ["c1", "shared", "shared#2", "c2", "fc"]
    graph = trace(TwiceNet(), (3, 8, 8), exclude=["c2"])
    assert graph.group["c2"].reason == "excluded by pattern 'c2'" and not graph.prunable


def test_existing_models_keep_their_layers_and_groups():
    """The new patterns add nothing to networks without them (policy fingerprints stay valid)."""
    graph = trace(build_model(ModelSpec("mobilenet_v2")), (3, 32, 32))
    assert [layer.kind.name for layer in graph.layers].count("layernorm") == 0
    assert all(layer.call == 1 for layer in graph.layers) and graph.fixed_params == 0
