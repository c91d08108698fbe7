"""Patterns of the networks people deploy (SE, ConvNeXt, ShuffleNet, view-flatten, grouped conv over a concat,
a module called twice, stochastic depth): which groups are prunable, why the others are not, compact == masked,
and cost accounting == FlopCounterMode / 2 (MACs) and == the parameter count, dense and compact."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from amc.calibration import CalibrationSet
from amc.config import PruneConfig
from amc.errors import AmcError
from amc.cost import Budget, MacsCost, ParamsCost, check_costs, params
from amc.prune import ChannelPruner, MaskPruner, PruningEngine
from amc.selection import Selection
from amc.structure import trace

from .nets import PATTERN_NETS, random_kept, randomize_bn

SHAPE = (3, 8, 8)
MODEL_OUTPUT = "model output"

# net -> (prunable group names, {pinned group: words of its reason})
EXPECTED = {
    "se": ({"stem", "expand", "se.fc1", "head"}, {"fc": MODEL_OUTPUT}),
    "se_linear": ({"stem", "expand", "se.fc1", "head"}, {"fc": MODEL_OUTPUT}),
    "convnext": ({"stem", "pwconv1", "down"}, {"fc": MODEL_OUTPUT}),
    "convnext_tv": ({"stem.0", "stage.0.block.3", "stage.1.block.3", "down.1"}, {"fc": MODEL_OUTPUT}),
    "shuffle": ({"stem", "b1", "head"}, {"fc": MODEL_OUTPUT}),
    "shuffle_v1": ({"stem", "g1"}, {"fc": MODEL_OUTPUT}),
    "view_flatten": ({"c1", "c2"}, {"fc": MODEL_OUTPUT}),
    "grouped_concat": ({"g", "c"}, {"a": "grouped conv 'g' reads a concatenation",
                                    "b": "grouped conv 'g' reads a concatenation", "fc": MODEL_OUTPUT}),
    "twice": ({"c2"}, {"c1": "module 'shared' is called 2 times", "shared": "module 'shared' is called 2 times",
                       "shared#2": "module 'shared' is called 2 times", "fc": MODEL_OUTPUT}),
    "stochastic_depth": ({"stem", "c1"}, {"fc": MODEL_OUTPUT}),
}


def _net(name):
    torch.manual_seed(0)
    return randomize_bn(PATTERN_NETS[name]()).eval()


def _flop_macs(model, shape=SHAPE):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    assert counter.get_total_flops() % 2 == 0
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", list(PATTERN_NETS))
def test_prunable_groups_and_reasons(name):
    graph = trace(_net(name), SHAPE)
    prunable, pinned = EXPECTED[name]
    assert {g.name for g in graph.prunable} == prunable
    assert {g.name for g in graph.groups} == prunable | set(pinned)
    for group, words in pinned.items():
        assert words in graph.group[group].reason, (group, graph.group[group].reason)
    assert len({g.name for g in graph.groups}) == len(graph.groups)  # names are unique


@pytest.mark.parametrize("name", list(PATTERN_NETS))
def test_compact_matches_masked_and_costs_match_the_flop_counter(name):
    """Where no LayerNorm normalizes a pruned group, the compact model computes what the masked one does."""
    model = _net(name)
    graph = trace(model, SHAPE)
    kept = random_kept(graph)
    normalized = {g for g in kept if any(graph.layer[f].kind.name == "layernorm" for f in graph.group[g].followers)}
    if normalized:
        with pytest.raises(AmcError, match="LayerNorm"):
            MaskPruner(graph).masks(Selection(kept))
    maskable = Selection({g: idx for g, idx in kept.items() if g not in normalized})
    small = ChannelPruner(graph).apply(model, maskable)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        ref, out = MaskPruner(graph).apply(model, maskable)(x), small(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-5
    small = ChannelPruner(graph).apply(model, Selection(kept))
    keep = {n: len(i) for n, i in kept.items()}
    for m, k in ((model, None), (small, keep)):
        assert _flop_macs(m) == MacsCost().cost(graph, k) == MacsCost().measure(m, SHAPE)
        assert ParamsCost().cost(graph, k) == params(m) == sum(p.numel() for p in m.parameters())
    assert MacsCost().cost(graph, keep) < MacsCost().cost(graph)


def test_se_gate_joins_the_gated_channels():
    graph = trace(_net("se"), SHAPE)
    expand = graph.group["expand"]
    assert expand.producers == ["expand", "se.fc2"]  # the excite conv's outputs are pruned with x's channels
    assert expand.followers == ["expand_bn", "dw", "dw_bn"] and expand.consumers == ["se.fc1", "project"]
    assert graph.group["se.fc1"].consumers == ["se.fc2"]  # the reduced channels form their own group


def test_convnext_linears_over_channels_last_are_counted_per_position():
    model = _net("convnext")
    graph = trace(model, SHAPE)
    pw1 = graph.layer["pwconv1"]
    assert pw1.kind.name == "linear" and pw1.out_hw == (4, 4)
    assert MacsCost().layer_cost(graph, pw1) == 16 * 64 * 4 * 4
    assert graph.layer["norm"].kind.name == "layernorm" and graph.layer["gamma"].kind.name == "parameter"
    assert graph.fixed_params == 0  # gamma is sliced with the stream's channels
    assert graph.group["pwconv1"].consumers == ["pwconv2"]


def test_convnext_uniform_budget_with_reconstruction():
    """A 50%-MACs uniform policy on the channels-last MLP, with least squares over per-position linear inputs."""
    model = _net("convnext")
    graph = trace(model, SHAPE)
    keep = Budget(graph, "macs", 0.5).uniform()[1]
    calib, x = CalibrationSet(torch.randn(32, *SHAPE), batch_size=16), torch.randn(16, *SHAPE)
    plain = PruningEngine(model, graph, PruneConfig(reconstruct=False, bn_batches=0, channels_last=False), calib)
    recon = PruningEngine(model, graph, PruneConfig(bn_batches=0, points_per_image=0, channels_last=False), calib)
    plain_model, recon_model = plain.prune_keep(keep).model, recon.prune_keep(keep).model
    check_costs(graph, keep, recon_model, [MacsCost(), ParamsCost()])
    assert MacsCost().cost(graph, keep) <= 0.5 * MacsCost().cost(graph)
    with torch.no_grad():
        ref = model(x)
        assert (recon_model(x) - ref).pow(2).mean() <= (plain_model(x) - ref).pow(2).mean()


def _convnext_by_hand(model, kept, x):
    """ConvNeXtNet's forward with the dense weights restricted to the kept channels, written out op by op."""
    s, h, d = kept["stem"], kept["pwconv1"], kept["down"]
    F = nn.functional
    y = F.conv2d(x, model.stem.weight[s], model.stem.bias[s], stride=2)
    z = F.conv2d(y, model.dwconv.weight[s], model.dwconv.bias[s], padding=3, groups=len(s)).permute(0, 2, 3, 1)
    z = F.layer_norm(z, (len(s),), model.norm.weight[s], model.norm.bias[s], model.norm.eps)
    z = F.gelu(F.linear(z, model.pwconv1.weight[h][:, s], model.pwconv1.bias[h]))
    z = model.gamma[s] * F.linear(z, model.pwconv2.weight[s][:, h], model.pwconv2.bias[s])
    y = F.conv2d(y + z.permute(0, 3, 1, 2), model.down.weight[d][:, s], model.down.bias[d], stride=2)
    return F.linear(F.adaptive_avg_pool2d(y, 1).flatten(1), model.fc.weight[:, d], model.fc.bias)


def test_convnext_stream_prunes_its_layernorm_and_layer_scale_like_a_hand_written_slice():
    """Removing stream channels slices the LayerNorm (its statistics then run over the kept channels) and gamma."""
    model = _net("convnext")
    graph = trace(model, SHAPE)
    assert graph.group["stem"].followers == ["dwconv", "norm", "gamma"]
    kept = random_kept(graph, frac=0.5, seed=3)
    small = ChannelPruner(graph).apply(model, Selection(kept))
    assert small.norm.normalized_shape == (8,) and small.gamma.shape == (8,)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(small(x), _convnext_by_hand(model, kept, x))


def test_torchvision_style_convnext_is_pruned_and_rebuilt_from_its_manifest():
    """LayerNorm2d (functional layer_norm on a module's weight) and (C, 1, 1) layer scales owned by a block:
    sliced with the stream, and a compact model rebuilt from the shape manifest computes the same."""
    from amc.io import channel_manifest, resize_to_manifest

    model = _net("convnext_tv")
    graph = trace(model, SHAPE)
    assert {f: graph.layer[f].kind.name for f in graph.group["stem.0"].followers if "block.0" not in f} == {
        "stem.1": "layernorm", "stage.0.block.2": "layernorm", "stage.0.layer_scale": "parameter",
        "stage.1.block.2": "layernorm", "stage.1.layer_scale": "parameter", "down.0": "layernorm"}
    kept = random_kept(graph, frac=0.5, seed=1)
    small = ChannelPruner(graph).apply(model, Selection(kept))
    assert small.stage[1].layer_scale.shape == (4, 1, 1) and small.down[0].weight.shape == (4,)
    torch.testing.assert_close(small.stage[1].layer_scale, model.stage[1].layer_scale[kept["stem.0"]])
    rebuilt = resize_to_manifest(_net("convnext_tv"), channel_manifest(small))
    rebuilt.load_state_dict(small.state_dict())
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), small(x))


def test_module_called_twice_counts_macs_twice_and_params_once():
    model = _net("twice")
    graph = trace(model, SHAPE)
    calls = [layer.call for layer in graph.layers if layer.name == "shared"]
    assert calls == [1, 2]
    assert graph.group["shared#2"].producers == ["shared"]
    assert ParamsCost().cost(graph) == params(model) and MacsCost().cost(graph) == _flop_macs(model)


class _TwoShuffleUnits(nn.Module):
    """Two ShuffleNetV2 units: the second shuffle mixes the already shuffled stream with a fresh branch."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.b1, self.b2 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        from .nets import channel_shuffle

        for first, second in ((self.a1, self.a2), (self.b1, self.b2)):
            x1, x2 = (self.stem(x) if first is self.a1 else x).chunk(2, dim=1)
            x = channel_shuffle(torch.cat((x1, second(torch.relu(first(x2)))), dim=1), 2)
        return self.fc(x.mean((2, 3)))


def test_a_shuffle_of_differently_laid_out_parts_pins_the_stream_and_keeps_branches_prunable():
    model = _TwoShuffleUnits().eval()
    graph = trace(model, SHAPE)
    assert {g.name for g in graph.prunable} == {"a1", "b1"}
    assert "channel shuffle: its 2 parts are laid out differently" in graph.group["stem"].reason
    assert MacsCost().cost(graph) == _flop_macs(model) and ParamsCost().cost(graph) == params(model)


def test_view_flatten_keeps_the_last_conv_prunable():
    graph = trace(_net("view_flatten"), SHAPE)
    assert [(s.group, s.length, s.mult) for s in graph.layer["fc"].in_layout] == [("c2", 12, 4)]


class _FixedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(self.c(x), 1).view(-1, 6))


class _Tokens(nn.Module):
    """A linear over (N, HW, C) tokens (not followed by the analysis), a roll over channels, a LayerNorm over
    (C, H, W) and a conv that is never called: all counted, nothing prunable through them."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.ln = nn.LayerNorm([6, 8, 8])
        self.mix = nn.Linear(6, 10)
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(10 + 4, 5)

    def forward(self, x):
        tokens = self.ln(self.c(x)).flatten(2).transpose(1, 2)
        a = self.mix(tokens).mean(1)
        b = torch.roll(self.c2(x), 1, dims=1).mean((2, 3))
        return self.fc(torch.cat([a, b], 1))


def test_constant_view_sizes_pin_the_channels_they_fix():
    graph = trace(_FixedView(), SHAPE)
    assert "sizes fixed in the model's code (6,)" in graph.group["c"].reason


def test_unknown_ops_pin_their_groups_and_are_still_counted():
    model = _Tokens().eval()
    graph = trace(model, SHAPE)
    reasons = {g.name: g.reason for g in graph.groups}
    assert "LayerNorm 'ln' over (6, 8, 8)" in reasons["c"]
    assert reasons["mix"] == "linear 'mix' applied to a 3-d tensor"
    assert "unsupported op 'roll'" in reasons["c2"]
    assert graph.layer["mix"].out_hw == (64, 1)
    assert MacsCost().cost(graph) == _flop_macs(model) == MacsCost().measure(model, SHAPE)
    assert ParamsCost().cost(graph) == params(model)  # the LayerNorm and the unused conv are fixed parameters
    assert not graph.prunable


@pytest.mark.parametrize("name", ["apoz", "mean_activation", "taylor"])
def test_data_criteria_on_a_channels_last_linear_consumer(name):
    """Statistics of a Linear reading (N, H, W, C) are per channel C, not per row H."""
    from amc.calibration import CalibrationSet, collect_stats
    from amc.importance import CRITERIA, ScoringContext, criterion

    torch.manual_seed(0)
    model = PATTERN_NETS["convnext"]().eval()
    graph = trace(model, SHAPE)
    stats = collect_stats(model, graph, CalibrationSet(torch.randn(8, *SHAPE), torch.randint(0, 5, (8,)), 4),
                          CRITERIA[name].needs)
    ctx = ScoringContext(graph, dict(model.named_modules()), stats)
    for g in graph.prunable:
        scores = criterion(name).channel_scores(ctx, g)
        assert scores.shape == (g.channels,) and torch.isfinite(scores).all()


class _LiteralShuffle(nn.Module):
    """A shuffle written with numbers (or a no-op transpose): followed neither way, the channels stay."""

    def __init__(self, literal: bool, dims=(1, 2)):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.literal, self.dims = literal, dims
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.size()
        y = y.view(n, 2, 4, h, w) if self.literal else y.view(n, 2, c // 2, h, w)
        y = torch.transpose(y, *self.dims).contiguous().view(n, -1, h, w)
        return self.fc(self.b(y).mean((2, 3)))


@pytest.mark.parametrize("literal,dims,reason", [(True, (1, 2), "written as a constant"),
                                                 (False, (1, -4), "not followed")])
def test_shuffles_written_with_constants_or_no_op_transposes_pin_their_channels(literal, dims, reason):
    model = _LiteralShuffle(literal, dims).eval()
    graph = trace(model, SHAPE)
    assert not graph.group["a"].prunable and reason in graph.group["a"].reason
    assert MacsCost().cost(graph) == _flop_macs(model)
    assert trace(_LiteralShuffle(False).eval(), SHAPE).group["a"].prunable  # the same shuffle from sizes is followed
