"""Sparse training: lottery tickets (prune, rewind, controls, resume) and RigL / SET / static ERK masks, on tiny nets."""
import math

import pandas as pd
import pytest
import torch
from torch import nn

import amc
from amc.cli import main
from amc.config import TrainConfig
from amc.data import ImageSet, Normalization
from amc.errors import AmcError
from amc.io import open_model, read_checkpoint, save_model
from amc.lottery import LotteryConfig, lottery_ticket, prune_remaining, random_masks_like
from amc.models import ModelSpec, build_model
from amc.rigl import RigL, SparseConfig, drop_fraction, erk_sparsities, random_masks, sparse_train
from amc.training import Callback, KeepMasks, Trainer
from amc.unstructured import magnitude_masks, prunable_layers

NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is ~100x faster than two when the machine's cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Net(nn.Module):
    """conv -> BN -> conv -> linear: small, but with a BatchNorm whose statistics a rewind must restore."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def _images(n=64, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8),
                    torch.randint(0, classes, (n,), generator=gen), [str(i) for i in range(classes)])


def _train(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "lr": 0.1, "batch_size": 16, "augment": False, **changes})


def _keep_masks(s) -> KeepMasks:
    return next(cb for cb in s.callbacks if isinstance(cb, KeepMasks))


# ---------------------------------------------------------------- ERK
def test_erk_hits_the_requested_sparsity_exactly_and_follows_the_kernel_scores():
    model = build_model(ModelSpec("resnet8", 10, (3, 16, 16)))
    for keep_dense in ((), ("conv1", "linear")):
        layers = prunable_layers(model, keep_dense)
        sizes = {n: m.weight.numel() for n, m in layers.items()}
        total = sum(sizes.values())
        for target in (0.5, 0.8, 0.9, 0.95):
            s = erk_sparsities(model, target, keep_dense)
            assert set(s) == set(layers)
            removed = {n: s[n] * sizes[n] for n in s}
            assert all(abs(v - round(v)) < 1e-6 for v in removed.values())  # whole counts
            assert sum(round(v) for v in removed.values()) == round(target * total)
            # density = ε (sum of dims) / (product of dims) for every layer that is not made dense
            score = {n: sum(layers[n].weight.shape) / sizes[n] for n in s}
            eps = [(1 - s[n]) / score[n] for n in s if s[n] > 0]
            assert max(eps) - min(eps) < 2 / min(sizes[n] * score[n] for n in s)
            for n in s:  # a dense layer is one whose ERK density would exceed 1
                if s[n] == 0:
                    assert min(eps) * score[n] > 1 - 1e-9
    s = erk_sparsities(model, 0.9)
    assert s["conv1"] < s["layer1.0.conv1"] < s["layer3.0.conv2"]  # small layers keep more
    assert all(v == 0 for v in erk_sparsities(model, 0.0).values())
    uniform = erk_sparsities(model, 0.9, power=0.0)
    assert all(abs(v - 0.9) < 0.01 for v in uniform.values())
    with pytest.raises(AmcError, match="sparsity"):
        erk_sparsities(model, 1.0)
    with pytest.raises(AmcError, match="matches no conv"):
        erk_sparsities(model, 0.5, ("nope",))
    masks = random_masks(model, s, seed=3)
    assert all(int((~masks[n]).sum()) == round(s[n] * masks[n].numel()) for n in s)
    assert not torch.equal(masks["layer3.0.conv2"], random_masks(model, s, seed=4)["layer3.0.conv2"])


# ---------------------------------------------------------------- RigL
class Before(Callback):
    """Before RigL's step end: the dense gradient of the step and the weights after the optimizer step."""

    order = -60

    def __init__(self):
        self.grads, self.weights, self.masks = {}, {}, {}

    def on_after_backward(self, s):
        modules = dict(s.model.named_modules())
        self.grads = {n: modules[n].weight.grad.detach().clone() for n in _keep_masks(s).masks}

    def on_step_end(self, s):
        modules = dict(s.model.named_modules())
        rigl = _keep_masks(s)
        self.masks = {n: m.clone() for n, m in rigl.masks.items()}
        self.weights = {n: modules[n].weight.detach().clone() for n in rigl.masks}


class After(Callback):
    """After RigL's step end: what changed in this step."""

    def __init__(self, before: Before):
        self.before, self.steps = before, []

    def on_step_end(self, s):
        modules = dict(s.model.named_modules())
        rigl = _keep_masks(s)
        record = {"step": s.step, "layers": {}}
        for n, new in rigl.masks.items():
            weight = modules[n].weight.detach()
            momentum = s.optimizer.state[modules[n].weight]["momentum_buffer"]
            record["layers"][n] = {"old": self.before.masks[n], "new": new.clone(), "weight": weight.clone(),
                                   "momentum": momentum.clone(), "grad": self.before.grads[n],
                                   "post_step": self.before.weights[n]}
        self.steps.append(record)


def _rigl_run(method="rigl", seed=0, sparsity=0.7, epochs=2):
    model = Net()
    masks = random_masks(model, erk_sparsities(model, sparsity), seed=0)
    before = Before()
    after = After(before)
    rigl = RigL(masks, method=method, every=1, alpha=0.4, seed=seed)  # 8 steps, updates after steps 1..5
    Trainer(_train(epochs=epochs), [before, rigl, after]).fit(model, _images(), NORM)
    return rigl, after.steps, masks


def test_rigl_keeps_every_layer_sparsity_and_regrows_at_zero_where_the_dense_gradient_is_largest():
    model = Net()
    erk = erk_sparsities(model, 0.7)
    rigl, steps, _ = _rigl_run()
    assert rigl.end_step == 6 and [e["step"] for e in rigl.events] == [1, 2, 3, 4, 5]
    moved = 0
    for record, event in zip(steps, rigl.events + [None] * 3):
        t = record["step"]
        for n, r in record["layers"].items():
            old, new, w = r["old"], r["new"], r["weight"]
            assert int((~new).sum()) == round(erk[n] * new.numel())  # the layer's count never changes
            assert (w[~new] == 0).all() and (r["momentum"][~new] == 0).all()  # masked weights exactly zero
            grown = new & ~old
            if t >= rigl.end_step:
                assert torch.equal(old, new)  # no update from T_end on
                continue
            k = round(drop_fraction(t, 0.4, 6) * int(old.sum()))
            dropped = old & ~new
            assert int(dropped.sum()) == int(grown.sum()) <= k
            # grown weights and their momentum start at exactly zero (the optimizer had moved them this step)
            assert (w[grown] == 0).all() and (r["momentum"][grown] == 0).all()
            # the grown positions carry the largest |dense gradient| among those left inactive
            g = r["grad"].abs()
            if grown.any() and (~new).any():
                assert g[grown].min() >= g[~new].max()
            # the dropped ones are among the k smallest |w| of the active weights (after the optimizer step)
            if dropped.any():
                active = r["post_step"][old].abs().sort().values
                assert r["post_step"][dropped].abs().max() <= active[k - 1]
            moved += int(grown.sum())
        if event is not None:
            assert event["drop_fraction"] == pytest.approx(0.2 * (1 + math.cos(math.pi * t / 6)))
            assert event["sparsity"] == pytest.approx(rigl.sparsity())
    assert moved > 0
    # the dense gradient is not masked: inactive positions have gradients too
    last = steps[0]["layers"]["conv2"]
    assert (last["grad"][~last["old"]] != 0).any()


def test_drop_fraction_is_a_cosine_that_ends_at_t_end():
    assert drop_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert drop_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert drop_fraction(75, 0.3, 100) == pytest.approx(0.15 * (1 + math.cos(0.75 * math.pi)))
    assert drop_fraction(100, 0.3, 100) == 0 and drop_fraction(150, 0.3, 100) == 0


def test_set_regrows_at_random_seeded_and_static_never_changes_the_masks():
    rigl, _, _ = _rigl_run("rigl")
    set0, steps, _ = _rigl_run("set", seed=0)
    set0_again, _, _ = _rigl_run("set", seed=0)
    set1, _, _ = _rigl_run("set", seed=1)
    assert all(torch.equal(set0.masks[n], set0_again.masks[n]) for n in set0.masks)
    assert any(not torch.equal(set0.masks[n], set1.masks[n]) for n in set0.masks)
    assert any(not torch.equal(set0.masks[n], rigl.masks[n]) for n in set0.masks)
    assert [e["dropped"] for e in set0.events] == [e["dropped"] for e in set1.events]
    # random, not by gradient: some grown position has a smaller |gradient| than one left inactive
    assert any(r["grad"].abs()[r["new"] & ~r["old"]].min() < r["grad"].abs()[~r["new"]].max()
               for record in steps[:5] for r in record["layers"].values() if (r["new"] & ~r["old"]).any())
    static, steps, initial = _rigl_run("static")
    assert static.events == [] and all(torch.equal(static.masks[n], initial[n]) for n in initial)
    assert all((r["weight"][~r["new"]] == 0).all() for record in steps for r in record["layers"].values())


class StopAfter(Callback):
    def __init__(self, epoch=None):
        self.epoch = epoch

    def on_epoch_end(self, s):
        s.stop = s.epoch == self.epoch


def test_sparse_train_from_pretrained_starts_from_magnitude_masks_and_resumes_exactly(tmp_path):
    cfg = SparseConfig(sparsity=0.8, initial_mask="magnitude", update_every=2, train=_train(epochs=3))
    pretrained = Net(1)
    expected = magnitude_masks(pretrained, 0.0, sparsities=erk_sparsities(pretrained, 0.8))
    whole = Net(1)
    result = sparse_train(whole, _images(), NORM, cfg, tmp_path / "a", test_set=_images(32, seed=1))
    assert result.updates.sparsity.tolist() == pytest.approx([0.8] * 4, abs=1e-3)
    assert list(result.history.sparsity) == pytest.approx([0.8] * 3, abs=1e-3) and "test_top1" in result.history
    assert any(not torch.equal(result.masks[n], expected[n]) for n in expected)  # the masks moved
    for n, m in dict(whole.named_modules()).items():
        if n in result.masks:
            assert (m.weight[~result.masks[n]] == 0).all()

    class Initial(Callback):
        def on_train_start(self, s):
            self.masks = {n: m.clone() for n, m in _keep_masks(s).masks.items()}

    spy = Initial()
    first = sparse_train(Net(1), _images(), NORM, cfg, tmp_path / "b", test_set=_images(32, seed=1),
                         callbacks=[spy, StopAfter(1)])
    assert len(first.history) == 1
    assert all(torch.equal(spy.masks[n], expected[n]) for n in expected)
    resumed_model = Net(2)  # other weights: the resume state must set them
    resumed = sparse_train(resumed_model, _images(), NORM, cfg, tmp_path / "b", test_set=_images(32, seed=1),
                           resume=True, callbacks=[Initial(), StopAfter()])
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed_model.state_dict().values()))
    assert all(torch.equal(result.masks[n], resumed.masks[n]) for n in result.masks)
    assert resumed.updates.equals(result.updates)
    assert pd.read_csv(tmp_path / "b" / "updates.csv").step.tolist() == [2, 4, 6, 8]
    with pytest.raises(AmcError, match="method"):
        sparse_train(Net(), _images(), NORM, SparseConfig(method="rigl2"))
    with pytest.raises(AmcError, match="nothing to resume"):
        sparse_train(Net(), _images(), NORM, cfg, tmp_path / "c", resume=True)
    pruned = Net()
    torch.nn.utils.prune.l1_unstructured(pruned.conv2, "weight", amount=0.5)
    with pytest.raises(AmcError, match="fold the masks"):
        sparse_train(pruned, _images(), NORM, cfg)


# ---------------------------------------------------------------- lottery tickets
class Watch(Callback):
    """Every training of a lottery run: its start state and masks, the state at step 3, masks held at every step."""

    order = 10  # after KeepMasks

    def __init__(self, kill_at_step=None):
        self.starts, self.masks, self.at3, self.violations = [], [], [], 0
        self.kill_at_step, self.steps = kill_at_step, 0

    def on_train_start(self, s):
        self.starts.append({k: v.detach().clone() for k, v in s.model.state_dict().items()})
        self.masks.append({n: m.clone() for n, m in _keep_masks(s).masks.items()})

    def on_step_end(self, s):
        self.steps += 1
        if s.step == 3:
            self.at3.append({k: v.detach().clone() for k, v in s.model.state_dict().items()})
        modules = dict(s.model.named_modules())
        for n, m in _keep_masks(s).masks.items():
            self.violations += int((modules[n].weight[~m] != 0).sum())
        if self.steps == self.kill_at_step:
            raise KeyboardInterrupt


def _lottery(out, watch=None, **changes):
    cfg = LotteryConfig(**{"rounds": 2, "prune_fraction": 0.3, "rewind_step": 3, "controls": ("reinit", "random_mask"),
                           "train": _train(), **changes})
    return lottery_ticket(Net(), _images(), NORM, cfg, out, test_set=_images(32, seed=1), fresh_init=lambda: Net(5),
                          callbacks=[watch or Watch()])


def test_lottery_prunes_the_remaining_weights_rewinds_exactly_and_keeps_masks_through_training(tmp_path):
    watch = Watch()
    table = _lottery(tmp_path / "lt", watch)
    assert list(zip(table["round"], table.variant)) == [(0, "ticket"), (1, "ticket"), (1, "reinit"),
                                                        (1, "random_mask"), (2, "ticket"), (2, "reinit"),
                                                        (2, "random_mask")]
    assert watch.violations == 0  # pruned weights stayed exactly zero at every step of every training
    sizes = {n: m.weight.numel() for n, m in prunable_layers(Net()).items()}
    total = sum(sizes.values())
    kept = [total]
    for _ in range(2):
        kept.append(kept[-1] - round(0.3 * kept[-1]))
    tickets = table[table.variant == "ticket"]
    assert list(tickets.kept_weights) == kept and list(tickets.sparsity) == pytest.approx([1 - k / total for k in kept])
    assert (table.groupby("round").kept_weights.nunique() == 1).all()  # controls at the same sparsity

    snapshot = torch.load(tmp_path / "lt" / "rewind.pt", weights_only=True)
    assert all(torch.equal(snapshot[k], v) for k, v in watch.at3[0].items())  # step 3 of round 0
    round1 = read_checkpoint(tmp_path / "lt" / "round1" / "ticket" / "weights.pt")
    round0 = read_checkpoint(tmp_path / "lt" / "round0" / "ticket" / "weights.pt")
    masks1, masks2 = round1["masks"], read_checkpoint(tmp_path / "lt" / "round2" / "ticket" / "weights.pt")["masks"]
    # round 1 pruned the smallest trained weights of round 0, with one global threshold
    pruned_mag = torch.cat([round0["state_dict"][f"{n}.weight"][~m].abs() for n, m in masks1.items()])
    kept_mag = torch.cat([round0["state_dict"][f"{n}.weight"][m].abs() for n, m in masks1.items()])
    assert pruned_mag.max() <= kept_mag.min()
    assert all(not (masks2[n] & ~masks1[n]).any() for n in masks1)  # pruned weights stay pruned
    # rewinding: survivors equal the snapshot exactly, pruned weights are zero, BatchNorm too
    for unit, masks in ((1, masks1), (4, masks2)):
        start = watch.starts[unit]
        assert all(torch.equal(watch.masks[unit][n], masks[n]) for n in masks)
        for k, v in snapshot.items():
            name = k.rsplit(".", 1)[0]
            if k.endswith("weight") and name in masks:
                assert torch.equal(start[k][masks[name]], v[masks[name]]) and (start[k][~masks[name]] == 0).all()
            else:
                assert torch.equal(start[k], v), k
    # trained tickets are zero exactly where pruned
    for n, m in masks1.items():
        assert (round1["state_dict"][f"{n}.weight"][~m] == 0).all()


def test_lottery_controls_differ_from_the_ticket_in_one_thing_each(tmp_path):
    watch = Watch()
    _lottery(tmp_path / "lt", watch, rounds=1)
    ticket, reinit, random_mask = (1, 2, 3)  # trainings: round 0, then round 1's ticket and controls
    snapshot = torch.load(tmp_path / "lt" / "rewind.pt", weights_only=True)
    fresh = Net(5).state_dict()
    tm, rm, mm = watch.masks[ticket], watch.masks[reinit], watch.masks[random_mask]
    # reinit: the ticket's mask on fresh values
    assert all(torch.equal(tm[n], rm[n]) for n in tm)
    for n in tm:
        w = watch.starts[reinit][f"{n}.weight"]
        assert torch.equal(w[tm[n]], fresh[f"{n}.weight"][tm[n]]) and (w[~tm[n]] == 0).all()
        assert not torch.equal(w[tm[n]], snapshot[f"{n}.weight"][tm[n]])
    # random mask: the same count in every layer, other positions, the ticket's rewound values
    for n in tm:
        assert int(mm[n].sum()) == int(tm[n].sum()) and not torch.equal(mm[n], tm[n])
        w = watch.starts[random_mask][f"{n}.weight"]
        assert torch.equal(w[mm[n]], snapshot[f"{n}.weight"][mm[n]]) and (w[~mm[n]] == 0).all()
    assert torch.equal(watch.starts[random_mask]["bn.running_mean"], snapshot["bn.running_mean"])
    # the library pieces on their own
    weights = {"a": torch.tensor([[0.1, -0.5], [0.3, 0.0]]), "b": torch.tensor([2.0, -0.2, 0.05])}
    masks = prune_remaining(weights, {"b": torch.tensor([True, True, False])}, 0.5, "global")
    assert masks["a"].tolist() == [[False, True], [True, False]] and masks["b"].tolist() == [True, False, False]
    masks = prune_remaining(weights, {}, 0.5, "layer")
    assert masks["a"].tolist() == [[False, True], [True, False]] and masks["b"].tolist() == [True, False, False]
    shuffled = random_masks_like(masks, seed=1)
    assert {n: int(m.sum()) for n, m in shuffled.items()} == {"a": 2, "b": 1}


def test_lottery_resumes_after_a_kill_and_with_more_rounds_like_an_uninterrupted_run(tmp_path):
    def drop_time(df):
        return df.drop(columns=["seconds"])

    full = _lottery(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):  # killed in the second epoch of round 1's reinit control
        _lottery(tmp_path / "killed", Watch(kill_at_step=2 * 8 + 6))
    assert (tmp_path / "killed" / "round1" / "reinit" / "last.pt").is_file()
    assert len(pd.read_csv(tmp_path / "killed" / "rounds.csv")) == 2
    resumed = lottery_ticket(Net(), _images(), NORM, LotteryConfig(
        rounds=2, prune_fraction=0.3, rewind_step=3, controls=("reinit", "random_mask"), train=_train()),
        tmp_path / "killed", test_set=_images(32, seed=1), fresh_init=lambda: Net(5), callbacks=[Watch()], resume=True)
    pd.testing.assert_frame_equal(drop_time(resumed), drop_time(full))
    short = _lottery(tmp_path / "more", rounds=1)
    assert len(short) == 4
    longer = lottery_ticket(Net(), _images(), NORM, LotteryConfig(
        rounds=2, prune_fraction=0.3, rewind_step=3, controls=("reinit", "random_mask"), train=_train()),
        tmp_path / "more", test_set=_images(32, seed=1), fresh_init=lambda: Net(5), callbacks=[Watch()], resume=True)
    pd.testing.assert_frame_equal(drop_time(longer), drop_time(full))
    a = read_checkpoint(tmp_path / "full" / "round2" / "ticket" / "weights.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "killed" / "round2" / "ticket" / "weights.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(AmcError, match="already holds a lottery run"):
        _lottery(tmp_path / "full")
    with pytest.raises(AmcError, match="settings differ.*prune_fraction"):
        lottery_ticket(Net(), _images(), NORM, LotteryConfig(rounds=2, prune_fraction=0.5, rewind_step=3,
                       controls=("reinit", "random_mask"), train=_train()), tmp_path / "full", resume=True)
    with pytest.raises(AmcError, match="rewind_step 99 is beyond the 8 steps"):
        _lottery(tmp_path / "x", rewind_step=99)
    with pytest.raises(AmcError, match="prune_fraction"):
        _lottery(tmp_path / "x", prune_fraction=1.0)
    with pytest.raises(AmcError, match="controls"):
        _lottery(tmp_path / "x", controls=("shuffle",))


# ---------------------------------------------------------------- command line
DATA = ["--input-shape", "3", "16", "16", "--dataset", "synthetic", "--holdout", "40", "--search-images", "20",
        "--epochs", "1", "--batch-size", "32"]


@pytest.fixture
def few_images(monkeypatch):
    import amc.cli.lottery as cli_lottery
    import amc.cli.rigl as cli_rigl

    def few(real):
        def splits(data, spec, names):  # 96 training images, 64 test images: seconds, not minutes
            out = real(data, spec, names)
            return {k: v.subset(torch.arange(min(96 if k == "train" else 64, len(v)))) for k, v in out.items()}
        return splits

    monkeypatch.setattr(cli_lottery, "splits_for", few(cli_lottery.splits_for))
    monkeypatch.setattr(cli_rigl, "splits_for", few(cli_rigl.splits_for))


def test_cli_lottery_writes_rounds_refuses_to_overwrite_and_resumes_with_more_rounds(tmp_path, few_images, capsys):
    out = tmp_path / "lt"
    args = ["lottery", "resnet8", *DATA, "--rounds", "1", "--prune-fraction", "0.5", "--keep-dense", "conv1", "linear",
            "--rewind-step", "2", "--controls", "random_mask", "--out", str(out), "--quiet"]
    assert main(args) == 0
    table = pd.read_csv(out / "rounds.csv")
    assert list(table.variant) == ["ticket", "ticket", "random_mask"] and table.sparsity.iloc[1] == pytest.approx(0.5, abs=1e-3)
    assert "test_top1" in table and "val_top1" in table
    model, spec, extra = open_model(None, out / "model.pt")
    assert spec.name == "resnet8" and extra["round"] == 1 and "conv1" not in extra["masks"]
    assert amc.layer_sparsities(model)["conv1"] == 0
    capsys.readouterr()
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(["lottery", "--resume", "--out", str(out), "--prune-fraction", "0.1"]) == 2
    assert "drop --prune-fraction" in capsys.readouterr().err
    assert main(["lottery", "--resume", "--out", str(out), "--rounds", "2", "--quiet"]) == 0
    table = pd.read_csv(out / "rounds.csv")
    assert list(table["round"]) == [0, 1, 1, 2, 2] and table.sparsity.iloc[3] == pytest.approx(0.75, abs=1e-3)
    assert open_model(None, out / "model.pt")[2]["round"] == 2
    for bad, message in ((["--prune-fraction", "1.5"], "prune_fraction"), (["--keep-dense", "conv9"], "matches no"),
                         (["--rewind-step", "99"], "beyond"), (["--rounds", "0"], "rounds")):
        capsys.readouterr()
        assert main(["lottery", "resnet8", *DATA, *bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("amc: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_cli_rigl_trains_at_the_sparsity_from_scratch_and_from_a_checkpoint(tmp_path, few_images, capsys):
    out = tmp_path / "rigl"
    assert main(["rigl", "resnet8", *DATA, "--sparsity", "0.8", "--update-every", "1", "--out", str(out),
                 "--quiet"]) == 0
    model, _, extra = open_model(None, out / "model.pt")
    assert extra["sparse_config"]["initial_mask"] == "random" and extra["sparse_config"]["method"] == "rigl"
    masks = extra["masks"]
    weights = dict(model.named_modules())
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == round(0.8 * sum(m.numel() for m in masks.values()))
    assert all((weights[n].weight[~m] == 0).all() for n, m in masks.items())
    assert pd.read_csv(out / "updates.csv").step.tolist() == [1]  # 3 steps, T_end = floor(0.75 * 3) = 2
    ck = tmp_path / "dense.pt"
    spec = ModelSpec("resnet8", 10, (3, 16, 16))
    torch.manual_seed(0)
    save_model(ck, build_model(spec), spec)
    assert main(["rigl", "--checkpoint", str(ck), *DATA, "--method", "static", "--keep-dense", "conv1",
                 "--out", str(tmp_path / "static"), "--quiet"]) == 0
    _, _, extra = open_model(None, tmp_path / "static" / "model.pt")
    assert extra["sparse_config"]["initial_mask"] == "magnitude" and "conv1" not in extra["masks"]
    assert pd.read_csv(tmp_path / "static" / "updates.csv").empty
    capsys.readouterr()
    for bad, message in ((["--sparsity", "1"], "sparsity"), (["--drop-fraction", "2"], "drop_fraction"),
                         (["--update-every", "0"], "update_every")):
        assert main(["rigl", "resnet8", *DATA, *bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("amc: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert main(["rigl", "resnet8", *DATA, "--out", str(out)]) == 2 and "already exists" in capsys.readouterr().err
