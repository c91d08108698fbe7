"""The pruning toolbox: unstructured masks, schedules, sensitivity + allocation, sparse files, `amc prune` / `amc sensitivity`."""
import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import amc
from amc.cli import main
from amc.cost import MacsCost
from amc.data import ImageSet, Normalization
from amc.errors import AmcError
from amc.io import open_model, save_model
from amc.models import ModelSpec, build_model
from amc.policy import Policy
from amc.prune import fold_masks
from amc.schedules import AGP, ChannelMasks, PruneRounds, agp_sparsity, schedule_callbacks
from amc.sensitivity import allocate, sensitivity, tolerated_levels
from amc.sparse_io import dense_state_dict, load_sparse, open_sparse, save_sparse, sparse_header, sparse_size_report
from amc.structure import trace
from amc.training import KeepMasks, Trainer
from amc.config import TrainConfig, replace
from amc.unstructured import export_masks, layer_sparsities, prune_unstructured

NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class TwoScales(nn.Module):
    """A conv with weights ~1 and a conv with weights ~0.01, then a classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.big = nn.Conv2d(3, 8, 3, padding=1)
        self.small = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.big.weight.normal_(0, 1.0)
            self.small.weight.normal_(0, 0.01)

    def forward(self, x):
        y = torch.relu(self.small(torch.relu(self.big(x))))
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def _images(n=48, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8),
                    torch.randint(0, classes, (n,), generator=gen), [str(i) for i in range(classes)])


def _zeros(w):
    return int((w == 0).sum())


# ---------------------------------------------------------------- unstructured masks
def test_layer_scope_gives_each_layer_exactly_the_sparsity_and_global_prunes_the_small_scale_layer_more():
    model = TwoScales()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer = prune_unstructured(model, 0.6)
    for name, m in layer.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert hasattr(m, "weight_orig") and hasattr(m, "weight_mask")
            assert _zeros(m.weight_mask) == round(0.6 * m.weight.numel()), name
            assert _zeros(m.weight) == round(0.6 * m.weight.numel())
    glob = prune_unstructured(model, 0.6, scope="global")
    s = layer_sparsities(glob)
    assert s["small"] > 0.8 and s["big"] < 0.2  # one threshold: the 0.01-scale layer loses (nearly) all it can
    masks = export_masks(glob)
    total = sum(m.numel() for m in masks.values())
    assert sum(_zeros(m) for m in masks.values()) == round(0.6 * total)
    weights = {n: m.weight.detach().abs() for n, m in model.named_modules() if n in masks}
    removed = torch.cat([weights[n][~masks[n]] for n in masks])
    kept = torch.cat([weights[n][masks[n]] for n in masks])
    assert removed.max() <= kept.min()  # one global magnitude threshold
    # the input model is untouched
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_keep_dense_per_layer_sparsities_and_bad_inputs():
    model = TwoScales()
    pruned = prune_unstructured(model, 0.9, scope="global", keep_dense=("big", "f*"))
    s = layer_sparsities(pruned)
    assert s["big"] == 0 and s["fc"] == 0 and s["small"] == pytest.approx(0.9, abs=1 / 576)
    assert not hasattr(pruned.big, "weight_mask")
    per = prune_unstructured(model, sparsities={"big": 0.5, "fc": 0.25})
    s = layer_sparsities(per)
    assert (s["big"], s["small"], s["fc"]) == (0.5, 0.0, 0.25)
    with pytest.raises(AmcError, match="matches no conv or linear layer"):
        prune_unstructured(model, 0.5, keep_dense=("classifier",))
    with pytest.raises(AmcError, match=r"\[0, 1\)"):
        prune_unstructured(model, 1.0)
    with pytest.raises(AmcError, match="not prunable"):
        prune_unstructured(model, sparsities={"nope": 0.5})
    with pytest.raises(AmcError, match="scope"):
        prune_unstructured(model, 0.5, scope="channel")


def test_exported_masks_load_with_torch_prune():
    model = TwoScales()
    pruned = prune_unstructured(model, 0.7, scope="global")
    fresh = TwoScales()
    fresh.load_state_dict(dense_state_dict(model))
    for name, mask in export_masks(pruned).items():
        torch_prune.custom_from_mask(dict(fresh.named_modules())[name], "weight", mask)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fresh(x), pruned(x))
    assert set(fresh.state_dict()) == set(pruned.state_dict())  # weight_orig / weight_mask keys
    folded = fold_masks(pruned)
    assert {n: m.sum() for n, m in export_masks(folded).items()} == \
        {n: m.sum() for n, m in export_masks(fresh).items()}


def test_masks_stay_exactly_zero_through_training_with_momentum():
    model = prune_unstructured(TwoScales(), 0.7)
    model(torch.randn(2, 3, 8, 8))  # a forward pass with autograd on before training (weight is then a non-leaf)
    masks = export_masks(model)
    cfg = TrainConfig(epochs=2, lr=0.5, momentum=0.9, weight_decay=1e-3, batch_size=8, augment=False)
    state = Trainer(cfg, [KeepMasks()]).fit(model, _images(), NORM)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        m = modules[name]
        assert torch.equal(m.weight_mask.bool(), mask)
        assert _zeros(m.weight_orig[~mask]) == int((~mask).sum())
        assert _zeros((m.weight_orig * m.weight_mask)[~mask]) == int((~mask).sum())
        assert (m.weight_orig[mask] != 0).float().mean() > 0.99  # the kept weights did train
        momentum = state.optimizer.state[m.weight_orig]["momentum_buffer"]
        assert _zeros(momentum[~mask]) == int((~mask).sum())


# ---------------------------------------------------------------- schedules
def test_agp_sparsity_at_each_pruning_step_is_the_cubic_formula():
    model = TwoScales()
    agp = AGP(0.8, initial=0.1, start=2, every=3, count=4)
    cfg = TrainConfig(epochs=3, lr=0.1, batch_size=8, augment=False)  # 6 steps per epoch, 18 in all
    state = Trainer(cfg, [KeepMasks(), agp]).fit(model, _images(), NORM)
    assert [e["step"] for e in agp.events] == [2, 5, 8, 11, 14]
    sizes = {n: m.weight_mask.numel() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    for e in agp.events:
        t = e["step"]
        expected = 0.8 + (0.1 - 0.8) * (1 - (t - 2) / (4 * 3)) ** 3
        assert e["sparsity"] == pytest.approx(expected, abs=1e-12)
        assert e["sparsity"] == agp_sparsity(t, final=0.8, initial=0.1, start=2, every=3, count=4)
        exact = sum(round(expected * n) for n in sizes.values()) / sum(sizes.values())
        assert e["measured"] == pytest.approx(exact, abs=1e-12)  # every layer exactly at the formula's sparsity
    assert agp.events[-1]["sparsity"] == pytest.approx(0.8)
    for name, m in model.named_modules():
        if name in sizes:
            assert _zeros(m.weight_orig * m.weight_mask) >= round(0.8 * sizes[name])
    assert [row["sparsity"] for row in state.history][-1] == pytest.approx(0.8)
    assert agp_sparsity(0, final=0.8, start=2) == 0.0 and agp_sparsity(10 ** 6, final=0.8) == 0.8


def test_rounds_and_named_schedules_use_the_same_epochs():
    model = TwoScales()
    rounds = PruneRounds(0.75, rounds=3, epochs=3)
    Trainer(TrainConfig(epochs=3, lr=0.05, batch_size=16, augment=False), [KeepMasks(), rounds]).fit(
        model, _images(), NORM)
    assert [e["epoch"] for e in rounds.events] == [0, 1, 2]
    assert [e["sparsity"] for e in rounds.events] == pytest.approx([1 - 0.25 ** (k / 3) for k in (1, 2, 3)])
    assert rounds.events[-1]["measured"] == pytest.approx(0.75, abs=2e-3)
    with pytest.raises(AmcError, match="rounds need at least"):
        PruneRounds(0.5, rounds=4, epochs=2)
    for name in ("oneshot", "agp", "rounds"):
        work, callbacks = schedule_callbacks(TwoScales(), name, 0.5, epochs=2, steps_per_epoch=3, rounds=2)
        state = Trainer(TrainConfig(epochs=2, lr=0.05, batch_size=16, augment=False), callbacks).fit(
            work, _images(), NORM)
        assert len(state.history) == 2
        assert layer_sparsities(work)["small"] == pytest.approx(0.5, abs=1e-2), name


def _channel_setup(frac=0.5):
    spec = ModelSpec("resnet8", 4, (3, 8, 8))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    graph = trace(model, spec.input_shape)
    keep = {g.name: max(1, int(g.channels * frac)) for g in graph.prunable}
    return model, graph, keep


def test_channel_agp_removes_channels_gradually_never_revives_them_and_compacts_to_the_same_function():
    model, graph, keep = _channel_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruning = ChannelMasks(graph, keep, criterion="l1")
    work, callbacks = schedule_callbacks(model, "agp", epochs=3, steps_per_epoch=6, pruning=pruning, agp_count=4)
    agp = callbacks[0]
    history = []

    class Watch(amc.training.Callback):  # the kept sets after every pruning step
        def on_step_end(self, s):
            history.append({n: set(i.tolist()) for n, i in pruning.kept.items()})

    state = Trainer(TrainConfig(epochs=3, lr=0.05, batch_size=8, augment=False), [*callbacks, Watch()]).fit(
        work, _images(), NORM)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input is untouched
    levels = [e["channels_removed"] for e in agp.events]
    assert levels == sorted(levels) and levels[-1] == pytest.approx(pruning.final) and len(levels) == 5
    macs = [e["macs_kept"] for e in agp.events]
    assert macs == sorted(macs, reverse=True) and macs[0] > macs[-1]
    for name, final_keep in keep.items():  # monotone: a removed channel never comes back
        sets = [h[name] for h in history if name in h]
        assert all(later <= earlier for earlier, later in zip(sets, sets[1:]))
        assert len(sets[-1]) == final_keep
    assert state.history[-1]["channels_removed"] == pytest.approx(pruning.final)
    small = pruning.compact(work)
    x = NORM(_images(8, seed=1).images)
    with torch.no_grad():
        assert torch.allclose(small.eval()(x), work.eval()(x), atol=1e-5)
    assert MacsCost().measure(small, (3, 8, 8)) == MacsCost().cost(graph, keep)


def test_channel_rounds_follow_the_geometric_levels_and_refuse_to_compact_early():
    model, graph, keep = _channel_setup(0.25)
    pruning = ChannelMasks(graph, keep)
    rounds = PruneRounds(rounds=3, epochs=3, pruning=pruning)
    seen = []

    class Stop(amc.training.Callback):
        def on_epoch_end(self, s):
            seen.append(pruning.counts(rounds.current))
            if s.epoch == 0:
                with pytest.raises(AmcError, match="not reached its final"):
                    pruning.compact(s.model)

    Trainer(TrainConfig(epochs=3, lr=0.05, batch_size=16, augment=False), [KeepMasks(), rounds, Stop()]).fit(
        model, _images(), NORM)
    f = pruning.final
    assert [e["channels_removed"] for e in rounds.events] == pytest.approx([1 - (1 - f) ** (k / 3) for k in (1, 2, 3)])
    assert seen[-1] == keep and all(seen[0][n] > keep[n] for n in keep)
    for e in rounds.events:  # each group removes its share of the level (to within one channel)
        counts = pruning.counts(e["channels_removed"])
        removed = sum(graph.group[n].channels - c for n, c in counts.items())
        assert abs(removed / sum(graph.group[n].channels for n in keep) - e["measured"]) < 1e-12
    with pytest.raises(AmcError, match="scores channels on data"):
        ChannelMasks(graph, keep, criterion="apoz")


# ---------------------------------------------------------------- sensitivity and allocation
def _score_fn(model, x):
    with torch.no_grad():
        ref = model(x)

    def score(m):
        with torch.no_grad():
            return -float((m(x) - ref).pow(2).mean())
    return score


def test_channel_sensitivity_and_allocation_meet_the_macs_budget():
    model = build_model(ModelSpec("resnet8", 10, (3, 16, 16))).eval()
    x = torch.randn(8, 3, 16, 16)
    levels = [0.25, 0.5, 0.75]
    curves = sensitivity(model, x, _score_fn(model, x), levels, "channel")
    graph = trace(model, (3, 16, 16))
    assert len(curves) == len(graph.prunable) * len(levels)
    assert set(zip(curves["name"], curves["level"])) == {(g.name, v) for g in graph.prunable for v in levels}
    assert list(curves.columns[:3]) == ["name", "granularity", "level"]
    assert (curves["baseline_score"] == 0).all() and (curves["drop"] >= 0).all()
    tolerance = float(curves["drop"].median())
    tolerated = tolerated_levels(curves, tolerance)
    for target in (0.8, 0.4):
        policy = allocate(curves, target, tolerance, model=model, example_input=x)
        ratio = MacsCost().cost(graph, policy.keep(graph)) / MacsCost().cost(graph)
        assert ratio <= target + 1e-9 and policy.metrics["macs_ratio"] == pytest.approx(ratio)
        if policy.metrics["tolerance_respected"]:
            for d in policy.groups:
                assert 1 - d.requested_ratio <= tolerated[d.name] + 1e-9
    loose = allocate(curves, 0.95, 1e9, model=model, example_input=x)
    assert loose.metrics["tolerance_respected"] and loose.metrics["multiplier"] <= 1
    with pytest.raises(AmcError, match="unreachable"):
        allocate(curves, 0.01, tolerance, model=model, example_input=x)
    assert amc.apply_policy(model, loose, prune=amc.config.PruneConfig(reconstruct=False, bn_batches=0)).costs


def test_weight_sensitivity_allocation_and_policy_file(tmp_path):
    model = TwoScales().eval()
    x = torch.randn(4, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curves = sensitivity(model, x, _score_fn(model, x), [0.3, 0.6, 0.9], "weight", keep_dense=("fc",))
    assert sorted(set(curves["name"])) == ["big", "small"] and len(curves) == 6
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    tolerance = float(curves["drop"].median())
    tolerated = tolerated_levels(curves, tolerance)
    policy = allocate(curves, 0.5, tolerance, model=model, example_input=x, keep_dense=("fc",))
    total = sum(p.numel() for p in model.parameters())
    pruned = prune_unstructured(model, sparsities=policy.sparsities)
    removed = sum(_zeros(m.weight) for m in (pruned.big, pruned.small))
    assert (total - removed) / total <= 0.5 + 1e-9
    if policy.metrics["tolerance_respected"]:
        assert all(policy.sparsities[n] <= tolerated[n] + 1e-6 for n in ("big", "small"))
    loose = allocate(curves, 0.9, 1e9, model=model, keep_dense=("fc",))
    assert loose.metrics["tolerance_respected"] and set(loose.sparsities) == {"big", "small"}
    policy.save(tmp_path / "w.json")
    loaded = Policy.load(tmp_path / "w.json")
    assert loaded.granularity == "weight" and loaded.sparsities == pytest.approx(policy.sparsities)
    data = json.loads((tmp_path / "w.json").read_text())
    assert data["schema_version"] == 2 and data["layers"][0].keys() == {"layer", "sparsity"}
    with pytest.raises(AmcError, match="not a channel policy"):
        loaded.keep(trace(model, (3, 8, 8)))
    data["layers"][0]["sparsity"] = 1.0
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(AmcError, match="sparsity"):
        Policy.load(tmp_path / "bad.json")
    channel = amc.uniform_policy(model, (3, 8, 8), 0.7).to_dict()
    assert "layers" not in channel and channel["granularity"] == "channel"


# ---------------------------------------------------------------- sparse files
def test_save_load_sparse_round_trip_smaller_and_quantized(tmp_path):
    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    model = build_model(spec).eval()
    pruned = prune_unstructured(model, 0.9)
    ref = dense_state_dict(pruned)
    save_sparse(pruned, tmp_path / "m.amcs", spec=spec)
    back = load_sparse(tmp_path / "m.amcs")
    assert back.keys() == ref.keys() and all(torch.equal(back[k], ref[k]) and back[k].dtype == ref[k].dtype
                                             for k in ref)
    torch.save(ref, tmp_path / "dense.pt")
    size = sparse_size_report(pruned, tmp_path / "m.amcs")
    assert size["sparse_bytes"] < 0.25 * (tmp_path / "dense.pt").stat().st_size
    assert size["sparsity"] == pytest.approx(0.9, abs=0.01)
    rebuilt, got_spec = open_sparse(tmp_path / "m.amcs")
    x = torch.randn(2, 3, 16, 16)
    assert got_spec == spec and torch.equal(rebuilt(x), pruned(x))
    save_sparse(pruned, tmp_path / "q.amcs", quantize=True)
    q = load_sparse(tmp_path / "q.amcs")
    scales = {e["name"]: e["scale"] for e in sparse_header(tmp_path / "q.amcs")["tensors"]
              if e["encoding"] == "sparse_int8"}
    assert scales and (tmp_path / "q.amcs").stat().st_size < (tmp_path / "m.amcs").stat().st_size
    for k, v in ref.items():
        if k in scales:
            assert (q[k] - v).abs().max() <= scales[k] / 2 + 1e-7
            assert torch.equal(q[k] == 0, v == 0) or ((q[k] == 0) >= (v == 0)).all()
        else:
            assert torch.equal(q[k], v)
    (tmp_path / "junk.amcs").write_bytes(b"not a sparse file")
    with pytest.raises(AmcError, match="not an amc sparse"):
        load_sparse(tmp_path / "junk.amcs")


# ---------------------------------------------------------------- command line
DATA = ["--input-shape", "3", "16", "16", "--dataset", "synthetic", "--holdout", "100", "--search-images", "50"]


@pytest.fixture
def checkpoint(tmp_path):
    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    torch.manual_seed(0)
    save_model(tmp_path / "dense.pt", build_model(spec), spec)
    return str(tmp_path / "dense.pt")


def test_cli_prune_weights_and_channels(tmp_path, checkpoint, capsys):
    out, sparse = tmp_path / "w.pt", tmp_path / "w.amcs"
    args = ["prune", "resnet8", "--checkpoint", checkpoint, "--sparsity", "0.9", "--scope", "global",
            "--keep-dense", "conv1", "linear", "--out", str(out), "--sparse-out", str(sparse)]
    assert main(args) == 0
    model, _, extra = open_model(None, out)
    s = layer_sparsities(model)
    assert s["conv1"] == 0 and s["linear"] == 0 and amc.prune.sparsity(model) == pytest.approx(0.9, abs=0.02)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())  # masks folded
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in load_sparse(sparse).items())
    assert extra["prune_report"]["granularity"] == "weight"
    capsys.readouterr()
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(["prune", "resnet8", "--checkpoint", checkpoint, "--granularity", "channel", "--sparsity", "0.5",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert main(["prune", "resnet8", "--checkpoint", checkpoint, "--granularity", "channel", "--criterion", "taylor",
                 "--ratio", "0.5", "--calibration-images", "32", *DATA, "--out", str(tmp_path / "c.pt")]) == 0
    small, _, extra = open_model(None, tmp_path / "c.pt")
    dense, _, _ = open_model(None, checkpoint)
    assert extra["policy"]["prune"]["criterion"] == "taylor"
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in dense.parameters())


def test_cli_prune_agp_finetune(tmp_path, checkpoint, monkeypatch):
    import amc.cli.prune as cli_prune

    real = cli_prune.splits_for

    def few(data, spec, names):  # keep the fine-tuning short: 64 training images
        return {k: v.subset(torch.arange(min(64, len(v)))) for k, v in real(data, spec, names).items()}

    monkeypatch.setattr(cli_prune, "splits_for", few)
    out = tmp_path / "agp.pt"
    assert main(["prune", "resnet8", "--checkpoint", checkpoint, "--sparsity", "0.8", *DATA, "--finetune-epochs", "2",
                 "--schedule", "agp", "--batch-size", "16", "--out", str(out)]) == 0
    model, _, extra = open_model(None, out)
    history = extra["prune_report"]["history"]
    assert len(history) == 2 and all("val_top1" in r and "sparsity" in r for r in history)
    assert history[-1]["sparsity"] == pytest.approx(0.8)
    assert amc.prune.sparsity(model) == pytest.approx(0.8, abs=0.01)
    cout = tmp_path / "rounds.pt"  # channels: masked over 2 rounds, then removed for real
    assert main(["prune", "resnet8", "--checkpoint", checkpoint, "--granularity", "channel", "--target", "0.5", *DATA,
                 "--finetune-epochs", "2", "--schedule", "rounds", "--rounds", "2", "--batch-size", "16",
                 "--out", str(cout)]) == 0
    small, _, extra = open_model(None, cout)
    report = extra["prune_report"]
    levels = [e["channels_removed"] for e in report["schedule_events"]]
    assert len(levels) == 2 and 0 < levels[0] < levels[1] and report["history"][-1]["channels_removed"] == levels[1]
    policy = Policy.from_dict(extra["policy"])
    assert MacsCost().measure(small, (3, 16, 16)) <= 0.5 * MacsCost().measure(open_model(None, checkpoint)[0], (3, 16, 16))
    assert all(d.kept_indices is not None for d in policy.groups if d.kept_channels < d.channels)
    assert report["schedule_events"][-1]["macs_kept"] == pytest.approx(policy.metrics["macs_ratio"])


def test_cli_fine_tunes_with_the_dense_model_as_distillation_teacher(tmp_path, checkpoint, monkeypatch):
    """``--distill W`` reaches the Trainer of ``amc prune`` and ``amc apply`` with the dense model as teacher."""
    import amc.cli.prune as cli_prune
    import amc.training

    seen = []

    class Recording(amc.training.Trainer):
        def __init__(self, cfg, callbacks=(), teacher=None):
            seen.append((cfg, teacher))
            super().__init__(replace(cfg, epochs=1), callbacks, teacher)

        def fit(self, model, train, norm, **kwargs):  # 16 images: only the wiring is under test
            return super().fit(model, train.subset(torch.arange(16)), norm, **kwargs)

    monkeypatch.setattr(cli_prune, "Trainer", Recording)
    monkeypatch.setattr(amc.training, "Trainer", Recording)
    dense, _, _ = open_model(None, checkpoint)
    x = torch.randn(2, 3, 16, 16)
    out = tmp_path / "c.pt"
    assert main(["prune", "resnet8", "--checkpoint", checkpoint, "--granularity", "channel", "--ratio", "0.5", *DATA,
                 "--finetune-epochs", "1", "--distill", "0.7", "--temperature", "2", "--batch-size", "8",
                 "--out", str(out)]) == 0
    policy = Policy.from_dict(open_model(None, out)[2]["policy"])
    policy.save(tmp_path / "p.json")
    assert main(["apply", str(tmp_path / "p.json"), "--checkpoint", checkpoint, "--no-recovery", *DATA[4:],
                 "--finetune-epochs", "1", "--distill", "0.3", "--batch-size", "8", "--out", str(tmp_path / "a.pt")]) == 0
    assert [(cfg.distill, cfg.temperature) for cfg, _ in seen] == [(0.7, 2.0), (0.3, 4.0)]
    for _, teacher in seen:
        with torch.no_grad():
            assert torch.equal(teacher.eval()(x), dense.eval()(x))  # the unpruned, untrained model


def test_cli_prune_embeds_the_recovery_it_used_when_flags_override_the_policy(tmp_path, checkpoint):
    from amc import apply_policy, calibration_for

    assert main(["prune", "resnet8", "--checkpoint", checkpoint, "--granularity", "channel", "--ratio", "0.5", *DATA,
                 "--calibration-images", "32", "--out", str(tmp_path / "c.pt")]) == 0
    policy = Policy.from_dict(open_model(None, tmp_path / "c.pt")[2]["policy"])
    assert policy.prune.reconstruction == "sequential"
    policy.save(tmp_path / "p.json")
    assert main(["prune", str(tmp_path / "p.json"), "--checkpoint", checkpoint, "--reconstruction", "consumers",
                 "--bn-batches", "2", "--out", str(tmp_path / "o.pt")]) == 0
    saved, _, extra = open_model(None, tmp_path / "o.pt")
    embedded = Policy.from_dict(extra["policy"])
    assert embedded.prune.reconstruction == "consumers" and embedded.prune.recalibration_batches == 2
    dense, _, _ = open_model(None, checkpoint)
    rebuilt = apply_policy(dense, embedded, calibration=calibration_for(embedded)).model
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), saved.eval()(x), atol=1e-5)  # the embedded policy rebuilds it


def test_cli_sensitivity_writes_curves_plot_and_policies_usable_downstream(tmp_path, checkpoint, capsys):
    out = tmp_path / "sens"
    args = ["sensitivity", "resnet8", "--checkpoint", checkpoint, *DATA, "--levels", "0.25", "0.5", "0.75",
            "--target", "0.6", "--tolerance", "0.05", "--out", str(out)]
    assert main(args) == 0
    import pandas as pd

    curves = pd.read_csv(out / "sensitivity.csv")
    assert len(curves) == 3 * curves["name"].nunique() and (out / "sensitivity.png").stat().st_size > 1000
    policy = Policy.load(out / "policy.json")
    assert policy.metrics["macs_ratio"] <= 0.6 and policy.data.search_images == 50
    assert main(["apply", str(out / "policy.json"), "--checkpoint", checkpoint, "--no-recovery",
                 "--out", str(tmp_path / "c.pt")]) == 0
    capsys.readouterr()
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    wout = tmp_path / "sensw"
    assert main(["sensitivity", "resnet8", "--checkpoint", checkpoint, *DATA, "--granularity", "weight",
                 "--levels", "0.5", "0.9", "--keep-dense", "conv1", "--target", "0.4", "--tolerance", "0.05",
                 "--out", str(wout)]) == 0
    wpolicy = Policy.load(wout / "policy.json")
    assert wpolicy.granularity == "weight" and "conv1" not in wpolicy.sparsities
    assert main(["prune", str(wout / "policy.json"), "--checkpoint", checkpoint, "--out", str(tmp_path / "w.pt")]) == 0
    model, _, _ = open_model(None, tmp_path / "w.pt")
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    assert nonzero <= 0.4 * sum(p.numel() for p in model.parameters()) + 1
