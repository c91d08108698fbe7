import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from amc.compaction import channel_manifest, compact, masked, resize_to_manifest
from amc.errors import AmcError
from amc.flops import flops_of, measure, params_of
from amc.graph import PruningGraph
from amc.importance import criterion_by_name, top_channels
from amc.models import ModelSpec, build_model
from amc.policy import Policy, make_policy, uniform_for_flops
from amc.pruner import ChannelPruner, PruneSettings
from amc.ratios import allowed_counts, channels_for_ratio, largest_count_at_most
from amc.reconstruction import least_squares_weight

from .conftest import randomize_bn


class ConcatNet(nn.Module):
    """Branches joined by torch.cat, a grouped conv, and a flatten into a linear layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 8, 3, stride=2, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        y = self.g(torch.relu(self.c(y)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 4), 1))


class SplitNet(nn.Module):
    """A conv output chunked in two (one half refined, CSP/ShuffleNet style) and a split re-ordered by cat."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.p = nn.Conv2d(4, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        p, q = torch.relu(self.bn(self.a(x))).chunk(2, 1)
        first, second = torch.split(self.c(torch.cat([self.p(p), q], 1)), [3, 5], dim=1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.cat([second, first], 1), 1), 1))


class GroupedNet(nn.Module):
    """A ResNeXt-like block: grouped 3x3 conv between 1x1 convs, with a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.reduce = nn.Conv2d(12, 16, 1)
        self.bn1 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 24, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(24)
        self.expand = nn.Conv2d(24, 12, 1, groups=2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = self.expand(torch.relu(self.bn2(self.grouped(torch.relu(self.bn1(self.reduce(s)))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(y + s), 1), 1))


TEST_NETS = {"concat": ConcatNet, "split": SplitNet, "grouped": GroupedNet}


def _random_kept(graph, frac=0.5, seed=0):
    """Random kept channels per prunable group, the same number in each block (grouped convs)."""
    gen = torch.Generator().manual_seed(seed)
    kept = {}
    for g in graph.prunable_groups:
        size = g.channels // g.blocks
        n = max(1, int(size * frac))
        kept[g.space] = torch.cat([b * size + torch.randperm(size, generator=gen)[:n] for b in range(g.blocks)]).sort().values
    return kept


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "mobilenet_v2", "vgg16", "mobilenet_v1", *TEST_NETS])
def test_compact_matches_masked_original(name):
    torch.manual_seed(0)
    model = TEST_NETS[name]() if name in TEST_NETS else build_model(ModelSpec(name))
    randomize_bn(model)
    graph = PruningGraph(model, (3, 32, 32) if name not in TEST_NETS else (3, 8, 8))
    kept = _random_kept(graph)
    small = compact(model, graph, kept)
    x = torch.randn(4, *graph.input_shape)
    with torch.no_grad():
        ref, out = masked(model, graph, kept)(x), small(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert measure(small, graph.input_shape)["flops"] == flops_of(graph, {s: len(i) for s, i in kept.items()})
    assert measure(small, graph.input_shape)["params"] == params_of(graph, {s: len(i) for s, i in kept.items()})
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    # the original is untouched
    assert measure(model, graph.input_shape)["flops"] == flops_of(graph)


def test_concat_graph_offsets_and_reasons():
    graph = PruningGraph(ConcatNet(), (3, 8, 8))
    by_name = {g.name: g for g in graph.groups}
    assert by_name["a"].prunable and by_name["b"].prunable
    assert by_name["a"].followers == ["bn"] and by_name["b"].followers == ["bn"]
    assert by_name["c"].prunable and by_name["c"].blocks == 2 and by_name["c"].consumers == ["g"]
    assert by_name["g"].blocks == 2 and by_name["fc"].reason == "model output"


def test_chunk_and_split_pieces():
    graph = PruningGraph(SplitNet(), (3, 8, 8))
    by_name = {g.name: g for g in graph.groups}
    a = by_name["a"]  # chunk(2): one 4-channel space read twice, kept channels identical in both halves
    assert a.prunable and a.channels == 4 and a.consumers == ["p", "c"] and a.followers == ["bn"]
    assert graph.layout_indices(graph.layer_by_name["a"].out_layout, {a.space: torch.tensor([1, 3])}).tolist() == [1, 3, 5, 7]
    # explicit split sizes are constants: c's output is cut at 3 and pinned; fc reads [3:8] then [0:3]
    assert [by_name[n].channels for n in ("c[0:3]", "c[3:8]")] == [3, 5]
    assert all("sizes fixed" in by_name[n].reason for n in ("c[0:3]", "c[3:8]"))
    fc = graph.layer_by_name["fc"]
    assert [graph.root(s) for s in fc.in_layout] == [by_name["c[3:8]"].space, by_name["c[0:3]"].space]
    assert by_name["p"].prunable


def test_grouped_conv_keeps_equal_counts_per_group():
    model = GroupedNet()
    graph = PruningGraph(model, (3, 8, 8))
    by_name = {g.name: g for g in graph.groups}
    assert (by_name["reduce"].blocks, by_name["grouped"].blocks) == (4, 4)
    assert by_name["stem"].blocks == 2  # added to the output of expand (groups=2)
    assert by_name["reduce"].count_step(8) == 8 and by_name["grouped"].count_step(3) == 12
    uneven = {by_name["reduce"].space: torch.tensor([0, 1, 4, 5, 8, 9, 12, 13, 14])}
    with pytest.raises(AmcError, match="same number of channels in each of its 4 blocks"):
        compact(model, graph, uneven)
    scores = torch.arange(16.0).flip(0)  # block b's best channels are its first ones
    assert top_channels(scores, 8, blocks=4).tolist() == [0, 1, 4, 5, 8, 9, 12, 13]
    policy = make_policy(graph, {"name": "grouped"}, {by_name["reduce"].space: 6})
    with pytest.raises(AmcError, match="must keep a multiple of 4"):
        policy.counts(graph)


def test_one_channel_per_group_is_unprunable():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3, groups=8), nn.Conv2d(16, 4, 1))
    reasons = {g.name: g.reason for g in PruningGraph(model, (3, 8, 8)).groups}
    assert "one channel per group" in reasons["0"]


def test_option_a_resnet_groups():
    graph = PruningGraph(build_model(ModelSpec("resnet56")), (3, 32, 32))
    prunable = graph.prunable_groups
    assert len(prunable) == 27 and all(g.name.endswith("conv1") and g.name != "conv1" for g in prunable)
    assert all(g.consumers == [g.name.replace("conv1", "conv2")] for g in prunable)
    stream = [g for g in graph.groups if not g.prunable and g.name != "linear"]
    assert stream and all("zero-padding" in g.reason for g in stream)


def test_plain_net_first_input_and_classifier_never_pruned():
    graph = PruningGraph(build_model(ModelSpec("plain20")), (3, 32, 32))
    assert graph.groups[-1].reason == "model output"
    assert len(graph.prunable_groups) == 19


def test_exclude_patterns():
    model = build_model(ModelSpec("plain20"))
    graph = PruningGraph(model, (3, 32, 32), exclude=["layer3.*"])
    assert all(not g.prunable for g in graph.groups if g.name.startswith("layer3"))
    with pytest.raises(AmcError, match="matches no conv"):
        PruningGraph(model, (3, 32, 32), exclude=["layr3.*"])


def test_untraceable_model_is_reported():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x

    with pytest.raises(AmcError, match="cannot trace"):
        PruningGraph(Dynamic(), (3, 8, 8))


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "vgg16"])
def test_flops_match_torch_flop_counter(name):
    model = build_model(ModelSpec(name)).eval()
    graph = PruningGraph(model, (3, 32, 32))
    ratio, counts = uniform_for_flops(graph, 0.5)
    small = compact(model, graph, ChannelPruner(model, graph, PruneSettings(reconstruct=False, bn_batches=0)).kept_indices(counts))
    for m, c in ((model, None), (small, counts)):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(torch.zeros(1, 3, 32, 32))
        assert counter.get_total_flops() == 2 * flops_of(graph, c)


def test_uniform_policy_meets_target_and_unreachable_target():
    graph = PruningGraph(build_model(ModelSpec("resnet56")), (3, 32, 32))
    ratio, counts = uniform_for_flops(graph, 0.5)
    achieved = flops_of(graph, counts) / flops_of(graph)
    assert 0.49 <= achieved <= 0.5
    with pytest.raises(AmcError, match="unreachable"):
        uniform_for_flops(graph, 0.05, lbound=0.2)


def test_ratio_rounding():
    assert allowed_counts(20, 8, 0.2) == [8, 16, 20]
    assert channels_for_ratio(0.5, 64, 8) == 32 and channels_for_ratio(0.01, 64, 8, 0.2) == 16
    assert channels_for_ratio(0.0, 3) == 1  # never zero channels
    assert largest_count_at_most(30, 64, 8) == 24


def test_criteria_rank_by_consumer_weights():
    model = build_model(ModelSpec("plain20"))
    graph = PruningGraph(model, (3, 32, 32))
    g = graph.prunable_groups[1]
    consumer = dict(model.named_modules())[g.consumers[0]]
    with torch.no_grad():
        consumer.weight.mul_(0.01)
        consumer.weight[:, 5] = 10.0
    modules = dict(model.named_modules())
    for name in ("l1", "l2"):
        assert criterion_by_name(name).scores(graph, g, modules).argmax() == 5
    with pytest.raises(AmcError, match="unknown criterion"):
        criterion_by_name("l3")


def test_activation_criteria_use_calibration():
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec("resnet8")))
    graph = PruningGraph(model, (3, 32, 32))
    pruner = ChannelPruner(model, graph, PruneSettings(criterion="apoz", reconstruct=False, bn_batches=0),
                           torch.randn(20, 3, 32, 32))
    scores = pruner.scores(graph.prunable_groups[0].space)
    assert scores.shape == (graph.prunable_groups[0].channels,) and (scores >= 0).all() and (scores <= 1).all()


@pytest.mark.parametrize("kernel,stride,padding,groups", [(3, 1, 1, 1), (1, 1, 0, 1), (3, 2, 1, 1), (5, 1, 2, 1),
                                                           (3, 1, 1, 2), (1, 2, 0, 3)])
def test_least_squares_recovers_conv_exactly_when_possible(kernel, stride, padding, groups):
    """If the outputs do not depend on the dropped channels, reconstruction must reproduce them."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6 * groups, 4 * groups, kernel, stride, padding, bias=False, groups=groups)
    with torch.no_grad():
        conv.weight[:, 3:] = 0  # the last 3 input channels of every conv group are unused
    kept = torch.cat([torch.arange(3) + 6 * j for j in range(groups)])
    with torch.no_grad():  # start from a wrong weight: the solve must not depend on it
        wrong = conv.weight + 0.3 * torch.randn_like(conv.weight)
    x = torch.randn(16, 6 * groups, 10, 10)
    cols = nn.functional.unfold(x, kernel, padding=padding, stride=stride).transpose(1, 2).reshape(-1, 6 * groups * kernel * kernel)
    gram = cols.T.double() @ cols.double()
    w = least_squares_weight(conv.weight, gram, kept, ridge=1e-10, groups=groups)
    assert not torch.allclose(least_squares_weight(wrong, gram, kept, ridge=1e-10, groups=groups), w)
    ref = conv(x)
    out = nn.functional.conv2d(x[:, kept], w, stride=stride, padding=padding, groups=groups)
    assert torch.allclose(out, ref, atol=1e-3)


def test_reconstruction_of_grouped_consumer_improves_outputs():
    torch.manual_seed(0)
    model = randomize_bn(GroupedNet()).eval()
    graph = PruningGraph(model, (3, 8, 8))
    calib, x = torch.randn(64, 3, 8, 8), torch.randn(32, 3, 8, 8)
    counts = {g.space: g.channels // 2 for g in graph.prunable_groups if g.name == "reduce"}
    settings = dict(bn_batches=0, points_per_image=0)
    with torch.no_grad():
        ref = model(x)
        plain = ChannelPruner(model, graph, PruneSettings(reconstruct=False, **settings), calib).prune(counts).model(x)
        recon = ChannelPruner(model, graph, PruneSettings(reconstruct=True, **settings), calib).prune(counts).model(x)
    assert (recon - ref).pow(2).mean() < 0.5 * (plain - ref).pow(2).mean()


def test_reconstruction_improves_pruned_outputs():
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec("resnet8")))
    graph = PruningGraph(model, (3, 32, 32))
    calib = torch.randn(64, 3, 32, 32)
    counts = {g.space: g.channels // 2 for g in graph.prunable_groups}
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        plain = ChannelPruner(model, graph, PruneSettings(reconstruct=False, bn_batches=0), calib).prune(counts).model(x)
        rec = ChannelPruner(model, graph, PruneSettings(reconstruct=True, bn_batches=0, points_per_image=0), calib)
        recon = rec.prune(counts).model(x)
    assert (recon - ref).pow(2).mean() < 0.5 * (plain - ref).pow(2).mean()


def test_manifest_rebuilds_compact_model():
    model = randomize_bn(build_model(ModelSpec("mobilenet_v2")))
    graph = PruningGraph(model, (3, 32, 32))
    small = compact(model, graph, _random_kept(graph, 0.3))
    rebuilt = resize_to_manifest(build_model(ModelSpec("mobilenet_v2")), channel_manifest(small))
    rebuilt.load_state_dict(small.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), small(x))


def test_policy_roundtrip_and_mismatch(tmp_path):
    model = build_model(ModelSpec("resnet20"))
    graph = PruningGraph(model, (3, 32, 32))
    ratio, counts = uniform_for_flops(graph, 0.6)
    policy = make_policy(graph, ModelSpec("resnet20").to_dict(), counts, {s: ratio for s in counts}, seed=3)
    policy.save(tmp_path / "p.json")
    again = Policy.load(tmp_path / "p.json")
    assert again.to_dict() == policy.to_dict()
    assert again.counts(graph) == counts
    other = PruningGraph(build_model(ModelSpec("resnet32")), (3, 32, 32))
    with pytest.raises(AmcError, match="does not match the model: .*layer1.3.conv1: missing from the policy"):
        again.counts(other)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AmcError, match="not valid JSON"):
        Policy.load(tmp_path / "bad.json")


def test_channels_last_pruning_matches_contiguous():
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec("resnet8"))).eval()
    graph = PruningGraph(model, (3, 32, 32))
    calib, x = torch.randn(40, 3, 32, 32), torch.randn(8, 3, 32, 32)
    counts = {g.space: g.channels // 2 for g in graph.prunable_groups}
    settings = PruneSettings(bn_batches=2, batch_size=20)
    plain = ChannelPruner(model, graph, settings, calib).prune(counts).model
    fast = ChannelPruner(model, graph, settings, calib, channels_last=True).prune(counts).model
    assert fast.layer1[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), plain(x), atol=1e-4)
