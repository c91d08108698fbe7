"""The training loop and its callbacks, on a tiny conv net and 8x8 random images (fast on 2 CPU cores)."""
import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from amc.config import TrainConfig
from amc.data import ImageSet, Normalization, iterate_batches
from amc.errors import AmcError
from amc.io import read_checkpoint
from amc.training import (Callback, Checkpoint, CsvMetrics, KeepMasks, Progress, Trainer, Validate, distillation_loss,
                          train)

NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def images(n: int, seed: int = 0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8),
                    torch.randint(0, 3, (n,), generator=gen), ["a", "b", "c"])


def tiny_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def config(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "lr": 0.1, "batch_size": 16, "augment": False, **changes})


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Spy(Callback):
    """Records every hook; optionally sets ``s.stop`` after step ``stop_at``."""

    def __init__(self, stop_at: int | None = None):
        self.events, self.steps, self.lrs, self.stop_at = [], [], [], stop_at

    def on_train_start(self, s):
        self.events.append("train_start")

    def on_epoch_start(self, s):
        self.events.append("epoch_start")

    def on_after_backward(self, s):
        self.events.append("after_backward")
        self.lrs.append((s.step, s.optimizer.param_groups[0]["lr"]))

    def on_step_end(self, s):
        self.events.append("step_end")
        self.steps.append(s.step)
        if s.step == self.stop_at:
            s.stop = True

    def on_epoch_end(self, s):
        self.events.append("epoch_end")

    def on_train_end(self, s):
        self.events.append("train_end")


def test_hooks_run_in_loop_order():
    spy = Spy()
    state = Trainer(config(), [spy]).fit(tiny_model(), images(32), NORM)
    assert spy.events == ["train_start", "epoch_start", "after_backward", "step_end", "after_backward", "step_end",
                          "epoch_end", "train_end"]
    assert spy.steps == [1, 2]
    assert (state.epoch, state.step, state.steps_per_epoch, len(state.history)) == (1, 2, 2, 1)


def test_learning_rate_follows_the_cosine_per_step():
    spy = Spy()
    Trainer(config(epochs=2, lr=0.05), [spy]).fit(tiny_model(), images(64), NORM)  # 4 steps per epoch
    assert [k for k, _ in spy.lrs] == list(range(8))
    assert [lr for _, lr in spy.lrs] == pytest.approx([0.05 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)],
                                                      rel=1e-12)
    slow, fast = tiny_model(), tiny_model()
    Trainer(config(lr=0.01), []).fit(slow, images(64), NORM)
    Trainer(config(lr=0.1), []).fit(fast, images(64), NORM)
    assert not same_weights(slow, fast)


def test_distillation_loss_mixes_cross_entropy_and_the_tempered_kl_to_the_teacher():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 1])
    hard = nn.functional.cross_entropy(student, y)
    assert torch.equal(distillation_loss(student, teacher, y, 0.0, 4.0), hard)
    p_t = torch.softmax(teacher / 4, 1)  # KL(p_t || p_s), summed over classes, mean over images, times T²
    kl = (p_t * (p_t.log() - torch.log_softmax(student / 4, 1))).sum(1).mean()
    assert distillation_loss(student, teacher, y, 0.25, 4.0).item() == pytest.approx((0.75 * hard + 0.25 * 16 * kl).item())
    assert distillation_loss(teacher, teacher, y, 1.0, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_a_distilled_student_learns_the_teacher_not_the_labels_and_leaves_the_teacher_unchanged():
    data = images(256)  # random labels; the teacher predicts something else on the same images
    teacher = tiny_model(seed=5)
    teacher.eval()
    with torch.no_grad():
        teacher_pred = teacher(NORM(data.images)).argmax(1)
    assert (teacher_pred == data.labels).float().mean() < 0.5
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = Trainer(config(epochs=30, distill=1.0, temperature=1.0), [], teacher).fit(tiny_model(), data, NORM).model
    plain = Trainer(config(epochs=30), []).fit(tiny_model(), data, NORM).model
    with torch.no_grad():
        agree = (student(NORM(data.images)).argmax(1) == teacher_pred).float().mean()
        agree_plain = (plain(NORM(data.images)).argmax(1) == teacher_pred).float().mean()
    assert agree > 0.8 and agree > agree_plain + 0.2
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()) and not teacher.training


def test_distillation_without_a_teacher_or_a_teacher_without_distillation_is_refused():
    with pytest.raises(AmcError, match="distillation needs a teacher"):
        Trainer(config(distill=0.5))
    with pytest.raises(AmcError, match="distill is 0"):
        Trainer(config(), teacher=tiny_model())


def test_first_step_is_nesterov_sgd_with_weight_decay_on_the_seeded_batch():
    cfg = config(seed=3, weight_decay=0.01, momentum=0.8)
    data = images(64)
    model = tiny_model()
    Trainer(cfg, [Spy(stop_at=1)]).fit(model, data, NORM)
    ref = tiny_model()
    x, y = next(iter(iterate_batches(data, 16, NORM, shuffle=True, augment=False, seed=3000)))
    opt = torch.optim.SGD(ref.parameters(), lr=cfg.lr, momentum=0.8, weight_decay=0.01, nesterov=True)
    nn.functional.cross_entropy(ref(x), y).backward()
    opt.step()
    assert same_weights(model, ref)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    class CountSteps(Callback):
        def __init__(self):
            self.n = 0

        def on_step_end(self, s):
            self.n += 1

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    class StopAfterFirstEpoch(Callback):
        def on_epoch_end(self, s):
            s.stop = s.epoch == 1

    cfg = config(epochs=2, augment=True, seed=1)  # 4 steps per epoch, momentum 0.9, weight decay
    data = images(64)
    whole = tiny_model(0)
    full = Trainer(cfg, [CountSteps(), Checkpoint(tmp_path / "a.pt")]).fit(whole, data, NORM)

    first = Trainer(cfg, [CountSteps(), Checkpoint(tmp_path / "b.pt"), StopAfterFirstEpoch()])
    assert first.fit(tiny_model(0), data, NORM).epoch == 1
    resumed_model, counter = tiny_model(1), CountSteps()  # other initial weights: the checkpoint must set them
    resumed = Trainer(cfg, [counter, Checkpoint(tmp_path / "b.pt"), StopAfterFirstEpoch()]).fit(
        resumed_model, data, NORM, resume_from=Checkpoint.load_resume(tmp_path / "b.pt"))

    assert same_weights(whole, resumed_model)
    assert (resumed.epoch, resumed.step, counter.n) == (2, 8, 8)
    drop_time = [{k: v for k, v in row.items() if k != "seconds"} for row in full.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history] == drop_time
    assert Checkpoint.load_resume(tmp_path / "b.pt")["epoch"] == 2

    with pytest.raises(AmcError):
        Checkpoint.load_resume(tmp_path / "missing.pt")
    torch.save(whole.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(AmcError, match="not a training checkpoint"):
        Checkpoint.load_resume(tmp_path / "weights.pt")


def test_keep_masks_holds_torch_pruned_weights_at_zero():
    cfg = config(epochs=2, weight_decay=0.01)  # momentum 0.9

    def pruned() -> nn.Sequential:
        model = tiny_model()
        prune.l1_unstructured(model[0], "weight", amount=0.5)
        return model

    model = pruned()
    conv = model[0]
    pruned_away = ~conv.weight_mask.bool()
    kept_before = conv.weight_orig[~pruned_away].detach().clone()
    state = Trainer(cfg, [KeepMasks()]).fit(model, images(64), NORM)
    assert (conv.weight_orig[pruned_away] == 0).all()
    assert (state.optimizer.state[conv.weight_orig]["momentum_buffer"][pruned_away] == 0).all()
    assert not torch.equal(conv.weight_orig[~pruned_away], kept_before)  # the kept weights did train
    model(NORM(images(2).images))  # torch's prune hook recomputes conv.weight
    assert (conv.weight[pruned_away] == 0).all()
    prune.remove(conv, "weight")
    assert (conv.weight[pruned_away] == 0).all()

    unguarded = pruned()
    before = unguarded[0].weight_orig.detach().clone()
    Trainer(cfg, []).fit(unguarded, images(64), NORM)
    assert not torch.equal(unguarded[0].weight_orig[pruned_away], before[pruned_away])


def test_keep_masks_with_explicit_masks_on_plain_modules():
    model = tiny_model()
    mask = torch.rand(model[0].weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    initial = model[0].weight.detach().clone()
    state = Trainer(config(epochs=2), [KeepMasks({"0": mask})]).fit(model, images(64), NORM)
    assert (model[0].weight[~mask] == 0).all()
    assert (state.optimizer.state[model[0].weight]["momentum_buffer"][~mask] == 0).all()
    assert not torch.equal(model[0].weight[mask], initial[mask])
    with pytest.raises(AmcError, match="no module 'nope'"):
        Trainer(config(), [KeepMasks({"nope": mask})]).fit(tiny_model(), images(16), NORM)


def test_nan_loss_raises_before_the_step():
    class Poison(nn.Module):
        on = False

        def forward(self, x):
            return x * float("nan") if self.on else x

    model = nn.Sequential(Poison(), *tiny_model())

    class PoisonAfterStep5(Callback):
        def on_step_end(self, s):
            if s.step == 5:
                model[0].on = True
                self.weights = {k: v.clone() for k, v in s.model.state_dict().items()}

    spy = PoisonAfterStep5()
    with pytest.raises(AmcError, match=r"^training loss became nan at epoch 2 step 6$"):
        Trainer(config(epochs=2), [spy]).fit(model, images(64), NORM)  # 4 steps per epoch
    assert all(torch.equal(v, spy.weights[k]) for k, v in model.state_dict().items())


def test_validate_csv_and_progress(tmp_path, capsys):
    lines = []
    csv = tmp_path / "run" / "metrics.csv"
    # recorders listed before Validate: the callbacks' order, not the list, puts validation first
    state = Trainer(config(epochs=2), [CsvMetrics(csv), Progress(lines.append), Validate(images(30, seed=1), NORM)]
                    ).fit(tiny_model(), images(64), NORM)
    assert len(state.history) == 2
    assert all(0 <= row["val_top1"] <= row["val_top5"] <= 1 and row["val_loss"] > 0 for row in state.history)
    table = pd.read_csv(csv)
    assert len(table) == 2 and list(table["epoch"]) == [1, 2]
    assert {"train_loss", "train_top1", "lr", "seconds", "val_top1", "val_top5", "val_loss"} <= set(table.columns)
    assert list(table["val_top1"]) == pytest.approx([row["val_top1"] for row in state.history])
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2: train loss ") and ", val top-1 " in lines[1]
    assert capsys.readouterr() == ("", "")


def test_progress_without_a_bar_logs_a_line_per_interval_within_an_epoch():
    lines = []
    Trainer(config(epochs=2), [Progress(lines.append, every_s=0.0)]).fit(tiny_model(), images(64), NORM)  # 4 steps/epoch
    steps = [line for line in lines if ": step " in line]
    assert [line.split(",")[0] for line in steps] == [f"epoch {e}/2: step {i}/4" for e in (1, 2) for i in (1, 2, 3, 4)]
    assert len(lines) == 10 and lines[4].startswith("epoch 1/2: train loss")
    quiet = []
    Trainer(config(epochs=1), [Progress(quiet.append)]).fit(tiny_model(), images(64), NORM)  # default: every 60 s
    assert len(quiet) == 1


def test_stop_ends_training_after_the_current_step():
    spy = Spy(stop_at=1)
    state = Trainer(config(epochs=2), [spy]).fit(tiny_model(), images(64), NORM)
    assert spy.events == ["train_start", "epoch_start", "after_backward", "step_end", "train_end"]
    assert (state.step, state.scheduler.last_epoch, state.epoch, state.history) == (1, 1, 0, [])
    spy = Spy(stop_at=4)  # the epoch's last step: the epoch counts, and no other starts
    state = Trainer(config(epochs=2), [spy]).fit(tiny_model(), images(64), NORM)
    assert spy.events[-3:] == ["step_end", "epoch_end", "train_end"] and spy.events.count("epoch_start") == 1
    assert (state.step, state.epoch, len(state.history)) == (4, 1, 1)


def test_train_writes_the_usual_files_and_resumes(tmp_path):
    from amc.models import ModelSpec, build_model

    spec = ModelSpec("resnet8", 3, (3, 8, 8))
    with pytest.raises(AmcError, match="nothing to resume"):
        train(build_model(spec), spec, images(32), None, NORM, config(), tmp_path, resume=True)
    lines = []
    table = train(build_model(spec), spec, images(32), images(16, seed=1), NORM, config(), tmp_path, log=lines.append,
                  extra={"note": "x"})
    assert list(table["epoch"]) == [1] and "val_top1" in table and len(lines) == 1
    saved = read_checkpoint(tmp_path / "model.pt")
    assert saved["train_config"]["batch_size"] == 16 and saved["note"] == "x"
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 1
    again = train(build_model(spec), spec, images(32), images(16, seed=1), NORM, config(), tmp_path, resume=True)
    assert again.drop(columns="seconds").equals(table.drop(columns="seconds"))
