import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from amc.calibration import CalibrationSet, Needs, collect_stats
from amc.config import PruneConfig, replace, validate
from amc.cost import MacsCost
from amc.errors import AmcError
from amc.importance import CRITERIA, ScoringContext, criterion
from amc.io import channel_manifest, resize_to_manifest
from amc.models import ModelSpec, build_model
from amc.prune import ChannelPruner, MaskPruner, PruningEngine, fold_masks, least_squares_weight, sparsity
from amc.prune.recovery import dense_targets, normal_equations, refittable_layers, sampled_inputs
from amc.ratios import allowed_counts, channels_for_ratio, largest_count_at_most
from amc.selection import Selection, top_channels
from amc.structure import trace

from .nets import TEST_NETS, GroupedNet, TwiceNet, ViewFlattenNet, randomize_bn, random_kept

NO_RECOVERY = PruneConfig(reconstruct=False, bn_batches=0, channels_last=False)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "mobilenet_v2", "vgg16", "mobilenet_v1", *TEST_NETS])
def test_compact_matches_masked_original(name):
    torch.manual_seed(0)
    model = TEST_NETS[name]() if name in TEST_NETS else build_model(ModelSpec(name))
    randomize_bn(model)
    graph = trace(model, (3, 32, 32) if name not in TEST_NETS else (3, 8, 8))
    selection = Selection(random_kept(graph))
    small = ChannelPruner(graph).apply(model, selection)
    x = torch.randn(4, *graph.input_shape)
    with torch.no_grad():
        ref, out = MaskPruner(graph).apply(model, selection)(x), small(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-5  # float rounding, relative to the output scale
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert MacsCost().measure(model, graph.input_shape) == MacsCost().cost(graph)  # the original is untouched


def test_uneven_blocks_and_bad_indices_are_refused():
    model = GroupedNet()
    graph = trace(model, (3, 8, 8))
    with pytest.raises(AmcError, match="same number of channels in each of its 4 blocks"):
        ChannelPruner(graph).apply(model, Selection({"reduce": torch.tensor([0, 1, 4, 5, 8, 9, 12, 13, 14])}))
    with pytest.raises(AmcError, match="invalid channel indices"):
        ChannelPruner(graph).apply(model, Selection({"grouped": torch.tensor([0, 0, 1, 2])}))
    with pytest.raises(AmcError, match="unknown channel group"):
        ChannelPruner(graph).apply(model, Selection({"nope": torch.tensor([0])}))
    scores = torch.arange(16.0).flip(0)  # block b's best channels are its first ones
    assert top_channels(scores, 8, blocks=4).tolist() == [0, 1, 4, 5, 8, 9, 12, 13]


def test_ratio_rounding():
    assert allowed_counts(20, 8, 0.2) == [8, 16, 20]
    assert channels_for_ratio(0.5, 64, 8) == 32 and channels_for_ratio(0.01, 64, 8, 0.2) == 16
    assert channels_for_ratio(0.0, 3) == 1  # never zero channels
    assert largest_count_at_most(30, 64, 8) == 24


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_magnitude_criteria_rank_a_planted_channel_first(name):
    model = build_model(ModelSpec("plain20"))
    graph = trace(model, (3, 32, 32))
    g = graph.prunable[1]
    consumer = dict(model.named_modules())[g.consumers[0]]
    with torch.no_grad():
        consumer.weight.mul_(0.01)
        consumer.weight[:, 5] = 10.0
    ctx = ScoringContext(graph, dict(model.named_modules()))
    assert criterion(name).channel_scores(ctx, g).argmax() == 5
    with pytest.raises(AmcError, match="unknown criterion"):
        criterion("l3")


def _two_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()


@pytest.mark.parametrize("name,needs", [("apoz", Needs.ACTIVATIONS), ("mean_activation", Needs.ACTIVATIONS),
                                        ("taylor", Needs.GRADIENTS)])
def test_data_criteria_rank_a_planted_channel_first(name, needs):
    """Channel 2 is the only one that is active and matters for the loss; the others are dead (bias -10)."""
    model = _two_layer()
    with torch.no_grad():
        model[0].bias.fill_(-10.0)
        model[0].bias[2] = 5.0
        model[2].weight.mul_(0.01)
        model[2].weight[:, 2] = 1.0
    graph = trace(model, (3, 8, 8))
    g = graph.group["0"]
    calib = CalibrationSet(torch.randn(32, 3, 8, 8), torch.randint(0, 3, (32,)), batch_size=8)
    assert CRITERIA[name].needs == needs
    stats = collect_stats(model, graph, calib, needs)
    scores = criterion(name).channel_scores(ScoringContext(graph, dict(model.named_modules()), stats), g)
    assert scores.shape == (6,) and scores.argmax() == 2 and scores[[0, 1, 3, 4, 5]].max() < scores[2]


def test_taylor_matches_autograd_on_a_known_gradient():
    """|sum over positions of a * dL/da| per channel, averaged over images, from an explicit autograd computation."""
    model = _two_layer()
    graph = trace(model, (3, 8, 8))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    stats = collect_stats(model, graph, CalibrationSet(x, y, batch_size=4), Needs.GRADIENTS)
    a = torch.relu(model[0](x)).detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(model[5](model[4](model[3](model[2](a)))), y)
    (grad,) = torch.autograd.grad(loss, a)
    expected = (a * grad).sum(dim=(2, 3)).abs().mean(0).double()
    assert torch.allclose(stats.taylor["2"], expected, rtol=1e-5, atol=1e-9)


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
    out = nn.functional.conv2d(x[:, kept], w, stride=stride, padding=padding, groups=groups)
    assert torch.allclose(out, conv(x), atol=1e-3)


@pytest.mark.parametrize("name", ["resnet8", "grouped"])
def test_reconstruction_improves_pruned_outputs(name):
    torch.manual_seed(0)
    model = randomize_bn(GroupedNet() if name == "grouped" else build_model(ModelSpec(name)))
    shape = (3, 8, 8) if name == "grouped" else (3, 32, 32)
    graph = trace(model, shape)
    calib, x = CalibrationSet(torch.randn(64, *shape)), torch.randn(32, *shape)
    keep = {g.name: g.channels // 2 for g in graph.prunable if name != "grouped" or g.name == "reduce"}
    cfg = PruneConfig(bn_batches=0, points_per_image=0, channels_last=False)
    with torch.no_grad():
        ref = model(x)
        plain = PruningEngine(model, graph, NO_RECOVERY, calib).prune_keep(keep).model(x)
        recon = PruningEngine(model, graph, cfg, calib).prune_keep(keep).model(x)
    assert (recon - ref).pow(2).mean() < 0.5 * (plain - ref).pow(2).mean()


def test_engine_needs_calibration_and_honours_recorded_indices():
    model = randomize_bn(build_model(ModelSpec("resnet8")))
    graph = trace(model, (3, 32, 32))
    with pytest.raises(AmcError, match="need calibration images"):
        PruningEngine(model, graph, PruneConfig())
    engine = PruningEngine(model, graph, NO_RECOVERY)
    g = graph.prunable[0]
    recorded = {g.name: torch.tensor([7, 3, 11, 0])}
    selection = engine.select({g.name: 4}, recorded)
    assert selection.kept[g.name].tolist() == [0, 3, 7, 11]  # recorded, not the criterion's choice
    assert engine.select({g.name: 4}).kept[g.name].tolist() != [0, 3, 7, 11]
    with pytest.raises(AmcError, match="4 recorded channel indices for 5 kept channels"):
        engine.select({g.name: 5}, recorded)


def test_bn_scope_reconstructed_recalibrates_only_the_batchnorms_after_refitted_layers():
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec("resnet8"))).eval()
    graph = trace(model, (3, 32, 32))
    calib = CalibrationSet(torch.randn(40, 3, 32, 32), batch_size=20)
    inner = graph.prunable[0]  # a block's inner group: its consumer conv2 is refitted, bn2 follows it
    keep = {inner.name: inner.channels // 2}
    refitted = set(inner.consumers)
    cfg = PruneConfig(channels_last=False, bn_scope="reconstructed", reconstruction="consumers", bn_batches=1)
    engine = PruningEngine(model, graph, cfg, calib)
    chosen = engine.batchnorms_to_recalibrate(refitted)
    assert chosen and all(engine._bn_after[bn] in refitted for bn in chosen)
    small = engine.prune_keep(keep).model
    dense_bn = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for name, m in small.named_modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean.shape == dense_bn[name].running_mean.shape:
            same = torch.equal(m.running_mean, dense_bn[name].running_mean)
            assert same == (name not in chosen), name  # re-estimated exactly where chosen
    everything = PruningEngine(model, graph, replace(cfg, bn_scope="all"), calib).prune_keep(keep).model
    changed = [n for n, m in everything.named_modules() if isinstance(m, nn.BatchNorm2d)
               and m.running_mean.shape == dense_bn[n].running_mean.shape
               and not torch.equal(m.running_mean, dense_bn[n].running_mean)]
    assert set(changed) > set(chosen)  # bn_scope="all" re-estimates more of them


@pytest.mark.parametrize("reconstruction,atol", [("consumers", 1e-4), ("sequential", 1e-3)])
def test_channels_last_pruning_matches_contiguous(reconstruction, atol):
    """Equal up to float rounding (which the chain of sequential solves amplifies a little)."""
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec("resnet8"))).eval()
    graph = trace(model, (3, 32, 32))
    calib, x = CalibrationSet(torch.randn(40, 3, 32, 32), batch_size=20), torch.randn(8, 3, 32, 32)
    keep = {g.name: g.channels // 2 for g in graph.prunable}
    cfg = PruneConfig(channels_last=False, reconstruction=reconstruction)
    plain = PruningEngine(model, graph, cfg, calib).prune_keep(keep).model
    fast = PruningEngine(model, graph, replace(cfg, channels_last=True), calib).prune_keep(keep).model
    assert fast.layer1[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), plain(x), atol=atol)


def test_float32_normal_equations_of_centred_samples_match_float64_where_plain_float32_does_not():
    """Post-ReLU-like inputs: a large common offset, small spread. Plain float32 products lose the spread; the
    centred float32 products plus the means' part in float64 keep it."""
    gen = torch.Generator().manual_seed(0)
    x = 40 + 0.05 * torch.randn(2, 5000, 30, generator=gen)  # (groups, samples, features)
    y = x @ torch.randn(30, 4, generator=gen) + 0.01 * torch.randn(2, 5000, 4, generator=gen)
    exact_a, exact_b = normal_equations(x, y, "float64")
    a, b = normal_equations(x, y, "float32")
    assert a.dtype == b.dtype == torch.float64
    solve = lambda a, b: torch.linalg.solve(a, b)  # noqa: E731
    error = (solve(a, b) - solve(exact_a, exact_b)).abs().max()
    plain = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y  # float32 throughout
    plain_error = (solve(plain[0].double(), plain[1].double()) - solve(exact_a, exact_b)).abs().max()
    assert error < 1e-3 and plain_error > 100 * error


def test_solve_precision_reaches_the_sequential_solves():
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec("resnet8"))).eval()
    graph = trace(model, (3, 32, 32))
    calib, x = CalibrationSet(torch.randn(40, 3, 32, 32), batch_size=20), torch.randn(8, 3, 32, 32)
    keep = {g.name: g.channels // 2 for g in graph.prunable}
    cfg = PruneConfig(channels_last=False)
    assert cfg.solve_precision == "float32"
    out = {p: PruningEngine(model, graph, replace(cfg, solve_precision=p), calib).prune_keep(keep).model(x).detach()
           for p in ("float32", "float64")}
    assert not torch.equal(out["float32"], out["float64"]) and torch.allclose(out["float32"], out["float64"], atol=1e-3)


def test_manifest_rebuilds_compact_model():
    model = randomize_bn(build_model(ModelSpec("mobilenet_v2")))
    graph = trace(model, (3, 32, 32))
    small = ChannelPruner(graph).apply(model, Selection(random_kept(graph, 0.3)))
    rebuilt = resize_to_manifest(build_model(ModelSpec("mobilenet_v2")), channel_manifest(small))
    rebuilt.load_state_dict(small.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), small(x))


def test_mask_pruner_is_torch_prune_compatible_and_masks_survive_an_optimizer_step():
    model = randomize_bn(build_model(ModelSpec("resnet8")))
    graph = trace(model, (3, 32, 32))
    kept = random_kept(graph, 0.5)
    weight_mask = torch.rand_like(model.linear.weight) > 0.5
    masked = MaskPruner(graph).apply(model, Selection(kept, {"linear": weight_mask}))
    conv = masked.layer1[0].conv2  # consumer of layer1.0.conv1
    assert torch_prune.is_pruned(conv) and hasattr(conv, "weight_orig") and hasattr(conv, "weight_mask")
    dropped = torch.ones(16, dtype=torch.bool)
    dropped[kept["layer1.0.conv1"]] = False
    assert (conv.weight[:, dropped] == 0).all() and (conv.weight[:, ~dropped] != 0).any()
    assert (masked.linear.weight[~weight_mask] == 0).all()
    assert not torch_prune.is_pruned(model.layer1[0].conv2)  # the input model is untouched
    opt = torch.optim.SGD(masked.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        masked.train()(torch.randn(4, 3, 32, 32)).sum().backward()
        opt.step()
    assert (conv.weight[:, dropped] == 0).all() and (masked.linear.weight[~weight_mask] == 0).all()
    fold_masks(masked)
    assert not torch_prune.is_pruned(conv) and (conv.weight[:, dropped] == 0).all()
    assert 0 < sparsity(masked) < 0.5


CONSUMERS = PruneConfig(reconstruction="consumers")  # gathers Gram matrices (the statistics the cache keeps)


def test_stats_cache_serves_equal_statistics_without_recomputing_and_never_stale(tmp_path, monkeypatch):
    import amc.prune.engine as engine_module
    from amc.stats_cache import StatsCache

    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec("resnet8"))).eval()
    graph = trace(model, (3, 32, 32))
    calib = CalibrationSet(torch.randn(40, 3, 32, 32), batch_size=20)
    calls = []
    real = engine_module.collect_stats
    monkeypatch.setattr(engine_module, "collect_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = StatsCache(tmp_path / "cache")
    first = PruningEngine(model, graph, CONSUMERS, calib, cache).stats
    second = PruningEngine(model, graph, CONSUMERS, calib, cache).stats
    assert len(calls) == 1 and second.gram.keys() == first.gram.keys()
    assert all(torch.equal(first.gram[k], second.gram[k]) for k in first.gram)
    PruningEngine(model, graph, CONSUMERS, CalibrationSet(calib.images + 1e-3, batch_size=20), cache).stats
    PruningEngine(model, graph, replace(CONSUMERS, points_per_image=3), calib, cache).stats
    assert len(calls) == 3  # other images, other sampling: other keys
    # the sampled positions follow the batch order: another batch size gathers other Gram matrices,
    # and serving the cached ones would score a model that apply_policy (no cache) does not rebuild
    halves = CalibrationSet(calib.images, batch_size=10)
    served = PruningEngine(model, graph, CONSUMERS, halves, cache).stats
    fresh = PruningEngine(model, graph, CONSUMERS, halves, None).stats
    assert len(calls) == 5 and all(torch.equal(served.gram[k], fresh.gram[k]) for k in fresh.gram)
    assert any(not torch.equal(first.gram[k], fresh.gram[k]) for k in fresh.gram)
    for f in (tmp_path / "cache").glob("stats-*.pt"):
        f.write_bytes(b"torn")
    again = PruningEngine(model, graph, CONSUMERS, calib, cache).stats
    assert len(calls) == 6 and all(torch.equal(first.gram[k], again.gram[k]) for k in first.gram)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stats_cache_key_tells_devices_apart(tmp_path):
    """CPU and CUDA statistics differ by rounding: one device's entry is never served to the other."""
    from amc.stats_cache import StatsCache

    model, calib = build_model(ModelSpec("resnet8")), CalibrationSet(torch.randn(8, 3, 32, 32), batch_size=4)
    cache = StatsCache(tmp_path)
    assert cache.stats_key(model, calib, {}) != cache.stats_key(model, calib.to("cuda"), {})


@pytest.mark.parametrize("layer", [nn.Conv2d(4, 6, 3, 1, 1), nn.Conv2d(4, 6, 3, 2, 1), nn.Conv2d(4, 6, 5, 1, 2, dilation=1),
                                   nn.Conv2d(4, 6, 3, 1, 2, dilation=2), nn.Conv2d(4, 6, 1, 2, 0), nn.Conv2d(4, 6, 3, 2, 0),
                                   nn.Conv2d(4, 6, 3, 1, "same"), nn.Conv2d(4, 6, 4, 1, "same"),
                                   nn.Conv2d(4, 6, 2, 1, "same", dilation=3), nn.Conv2d(4, 6, 3, 2, "valid"),
                                   nn.Conv2d(4, 6, 3, 1, 1, padding_mode="reflect"),
                                   nn.Conv2d(4, 6, 3, 1, 2, padding_mode="circular"),
                                   nn.Conv2d(4, 4, 3, 1, 1, groups=4), nn.Linear(4, 6)])
def test_sampled_inputs_are_the_patches_that_produce_the_sampled_outputs(layer):
    """Every sampled row times the weight must give the layer's output at that position (wrong patch
    geometry or column order fails)."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 9, 9) if isinstance(layer, nn.Conv2d) else torch.randn(3, 5, 4)
    out = layer(x).detach()
    target = dense_targets(nn.Sequential(layer), ["0"], x, points_per_image=7, seed=1)["0"]
    count = out[0, 0].numel() if isinstance(layer, nn.Conv2d) else 5
    points = target.positions.shape[1]
    assert points == min(7, count) and len(target.positions.unique()) > 3  # all positions when fewer than asked
    rows = sampled_inputs(layer, x, target.positions)
    groups = getattr(layer, "groups", 1)
    w = layer.weight.detach().reshape(len(layer.weight), -1)
    xg, wg = rows.reshape(len(rows), groups, -1), w.reshape(groups, -1, w.shape[1])
    produced = torch.einsum("sgf,gof->sgo", xg, wg).reshape(len(rows), -1)
    assert torch.allclose(produced, target.outputs, atol=1e-5)
    flat = out.flatten(2) if isinstance(layer, nn.Conv2d) else out.transpose(1, 2)
    n, p = 1, points - 1  # one entry checked against the layer's own output
    assert torch.allclose(target.outputs[n * points + p] + layer.bias.detach(), flat[n, :, target.positions[n, p]], atol=1e-5)


def _output_error(model, graph, keep, calib, x, cfg):
    with torch.no_grad():
        return (PruningEngine(model, graph, cfg, calib).prune_keep(keep).model(x) - model(x)).pow(2).mean().item()


@pytest.mark.parametrize("name", ["resnet8", "mobilenet_v2"])
def test_sequential_least_squares_beats_consumers_and_refits_after_the_first_pruned_layer(name):
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec(name, 10, (3, 16, 16)))).eval()
    graph = trace(model, (3, 16, 16))
    calib, x = CalibrationSet(torch.randn(64, 3, 16, 16), batch_size=32), torch.randn(32, 3, 16, 16)
    keep = {g.name: max(1, g.channels // 2) for g in graph.prunable[1:]}  # the first group stays whole
    consumers = PruneConfig(bn_batches=2, channels_last=False, reconstruction="consumers")
    sequential = replace(consumers, reconstruction="sequential")
    assert _output_error(model, graph, keep, calib, x, sequential) < 0.8 * _output_error(model, graph, keep, calib, x, consumers)
    engine = PruningEngine(model, graph, sequential, calib)
    small = engine.prune_keep(keep).model
    again = engine.prune_keep(keep).model
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), again.state_dict().values()))
    assert engine.needs == Needs.WEIGHTS or not engine.needs & Needs.GRAM  # no Gram matrices are gathered
    order = refittable_layers(model, graph)
    first = min(order.index(c) for g in graph.prunable[1:] for c in g.consumers)
    sliced = PruningEngine(model, graph, replace(sequential, reconstruct=False, bn_batches=0)).prune_keep(keep).model
    plain, pruned = dict(sliced.named_modules()), dict(small.named_modules())
    for i, name in enumerate(order):
        untouched = torch.equal(plain[name].weight, pruned[name].weight)
        assert untouched == (i < first), name  # before any pruned input: sliced only; from there on: refitted


@pytest.mark.parametrize("net", [ViewFlattenNet, TwiceNet])
def test_sequential_least_squares_without_batchnorm_and_with_a_module_called_twice(net):
    """No BatchNorm still means a reconstruction pass; a module run twice is refitted once, for its first call."""
    torch.manual_seed(0)
    model = net().eval()
    graph = trace(model, (3, 8, 8))
    calib, x = CalibrationSet(torch.randn(200, 3, 8, 8)), torch.randn(64, 3, 8, 8)
    keep = {g.name: g.channels // 2 for g in graph.prunable}
    sliced = PruneConfig(reconstruct=False, bn_batches=0, channels_last=False)
    engine = PruningEngine(model, graph, replace(sliced, reconstruct=True), calib)
    small = engine.prune_keep(keep).model
    consumers = {c for g in graph.prunable for c in g.consumers}
    assert consumers and all(not torch.equal(dict(small.named_modules())[c].weight,
                                             dict(PruningEngine(model, graph, sliced).prune_keep(keep).model.named_modules())[c].weight)
                             for c in consumers if c != "shared")  # refitted
    with torch.no_grad():
        error = (small(x) - model(x)).pow(2).mean()
    assert error < 0.5 * _output_error(model, graph, keep, calib, x, sliced)


def test_sequential_least_squares_leaves_batchnorm_statistics_of_the_pruned_model():
    """With bn_batches=0 the statistics are those of the reconstruction pass over all calibration images."""
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelSpec("resnet8", 10, (3, 16, 16)))).eval()
    graph = trace(model, (3, 16, 16))
    calib = CalibrationSet(torch.randn(48, 3, 16, 16), batch_size=16)
    keep = {g.name: g.channels // 2 for g in graph.prunable}
    small = PruningEngine(model, graph, PruneConfig(bn_batches=0, channels_last=False, reconstruction="sequential"),
                          calib).prune_keep(keep).model
    seen = {}
    bn = small.layer1[0].bn2
    handle = bn.register_forward_pre_hook(lambda m, i: seen.__setitem__("x", i[0]))
    with torch.no_grad():
        small(calib.images)
    handle.remove()
    assert torch.allclose(bn.running_mean, seen["x"].mean(dim=(0, 2, 3)), atol=1e-3)  # not the dense ones
    assert torch.allclose(bn.running_var, seen["x"].var(dim=(0, 2, 3)), rtol=1e-3)


def test_unknown_reconstruction_is_refused():
    model = build_model(ModelSpec("resnet8"))
    with pytest.raises(AmcError, match="reconstruction"):
        PruningEngine(model, trace(model, (3, 32, 32)), PruneConfig(reconstruction="global"), CalibrationSet(torch.randn(4, 3, 32, 32)))
    with pytest.raises(AmcError, match="consumers | sequential"):
        validate(PruneConfig(reconstruction="global"))
    with pytest.raises(AmcError, match="sequential least squares re-estimates every BatchNorm"):
        PruningEngine(model, trace(model, (3, 32, 32)), PruneConfig(bn_scope="reconstructed"),
                      CalibrationSet(torch.randn(4, 3, 32, 32)))
