"""Scoring speed without a different score: batches sized by activation memory, BatchNorm folding."""
import dataclasses

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from amc.config import PruneConfig, validate
from amc.errors import AmcError
from amc.evaluation import (MIB, eval_batch_size, evaluate, fold_batchnorm, fold_pairs, foldable_pairs,
                            largest_activation_bytes)
from amc.models import ModelSpec, build_model
from amc_envs import PruningTask, make_task

from .nets import GroupedNet, randomize_bn


class AddThenNorm(nn.Module):
    """BatchNorms that must stay: after an add, on the input, after a ReLU, after a conv whose output is
    used twice, and after the first of two calls of a shared conv; one foldable pair (c -> bn_ok)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.bn_in, self.bn_add, self.bn_relu = nn.BatchNorm2d(3), nn.BatchNorm2d(6), nn.BatchNorm2d(6)
        self.twice_used, self.bn_twice_used = nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6)
        self.shared, self.bn_shared = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c, self.bn_ok = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.bn_in(x)
        y = self.bn_relu(torch.relu(self.bn_add(self.a(x) + self.b(x))))
        t = self.twice_used(y)
        y = self.bn_twice_used(t) + t
        y = self.shared(torch.relu(self.bn_shared(self.shared(y))))
        y = self.bn_ok(self.c(y))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class CatNet(nn.Module):
    """Its widest tensor is a concatenation inside the forward pass, the output of no module."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


class Untraceable(nn.Module):
    """Control flow on a tensor's value: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.wide = nn.Conv2d(5, 9, 1)
        self.fc = nn.Linear(9, 3)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = -y
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.wide(y), 1), 1))


def models():
    torch.manual_seed(0)
    return {"resnet20": (build_model(ModelSpec("resnet20")), (3, 32, 32)),
            "mobilenet_v2": (build_model(ModelSpec("mobilenet_v2")), (3, 32, 32)),
            "mobilenet_v1": (build_model(ModelSpec("mobilenet_v1")), (3, 32, 32)),  # depthwise convs
            "grouped": (GroupedNet(), (3, 12, 12))}


# ------------------------------------------------------------------ batch sizes by activation memory
def test_largest_activation_is_the_widest_tensor_of_one_image():
    model = build_model(ModelSpec("resnet8", 10, (3, 16, 16)))
    assert largest_activation_bytes(model, (3, 16, 16)) == 16 * 16 * 16 * 4  # the stem's 16 channels at full size
    model.train()
    largest_activation_bytes(model, (3, 16, 16))
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert largest_activation_bytes(CatNet(), (3, 8, 8)) == 10 * 8 * 8 * 4  # the concatenation, no module's output


def test_untraceable_model_is_measured_by_hooks():
    assert largest_activation_bytes(Untraceable(), (3, 6, 6)) == 9 * 6 * 6 * 4


def test_batch_size_shrinks_with_the_budget_and_never_below_one():
    model = build_model(ModelSpec("resnet8", 10, (3, 16, 16)))
    per_image = 16 * 16 * 16 * 4
    assert eval_batch_size(model, (3, 16, 16), 1 * MIB) == MIB // per_image == 64
    assert eval_batch_size(model, (3, 16, 16), 0.5 * MIB) == 32
    assert eval_batch_size(model, (3, 16, 16), 7.5 * per_image) == 7
    assert eval_batch_size(model, (3, 16, 16), 10) == 1
    sizes = [eval_batch_size(model, (3, 16, 16), b * MIB) for b in (8, 4, 2, 1, 0.5, 0.01, 1e-6)]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) == 1
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(AmcError, match="budget"):
            eval_batch_size(model, (3, 16, 16), bad)


def test_eval_batch_mib_is_validated():
    assert validate(PruneConfig(eval_batch_mib=0.5)).eval_batch_mib == 0.5
    for bad in (0, -2.0, float("nan"), float("inf"), True):
        with pytest.raises(AmcError, match="eval_batch_mib"):
            validate(PruneConfig(eval_batch_mib=bad))


def test_task_sizes_its_batches_once_from_the_config():
    task = PruningTask.tiny(seed=0)
    spec, data = ModelSpec("resnet8", 10, (3, 16, 16)), task.data
    small = make_task(task.model, spec, data, task.calibration, PruneConfig(bn_batches=2, eval_batch_mib=7.5 * 16 ** 3 * 4 / MIB))
    assert small.batch_size == 7
    assert task.batch_size == eval_batch_size(task.model, (3, 16, 16), PruneConfig().eval_batch_mib * MIB)


def test_scores_equal_between_batch_500_and_memory_sized_batches():
    torch.manual_seed(1)
    model = randomize_bn(build_model(ModelSpec("resnet8", 10, (3, 16, 16))))
    x = torch.randn(205, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = torch.randint(0, 10, (len(y[::3]),))  # some right, some wrong
    big = evaluate(model, x, y, 500)
    batch = eval_batch_size(model, (3, 16, 16), 7.5 * 16 ** 3 * 4)
    assert batch == 7 and 205 % batch  # an uneven last batch
    small = evaluate(model, x, y, batch)
    assert 0 < big["top1"] < 1 and big["top5"] > big["top1"]
    assert small["top1"] == big["top1"] and small["top5"] == big["top5"] and small["images"] == big["images"] == 205
    assert small["loss"] == pytest.approx(big["loss"], rel=1e-5)


# ------------------------------------------------------------------ BatchNorm folding
@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "mobilenet_v1", "grouped"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_model_matches_and_has_no_batchnorm_left(name, channels_last):
    model, shape = models()[name]
    model = randomize_bn(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert folded is not model
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the input keeps its BatchNorms
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    ours = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in ours for p in folded.parameters())  # nothing shared with the input
    if channels_last:
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
                   for m in folded.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(3, *shape).contiguous(memory_format=fmt)
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_only_batchnorms_right_after_a_layer_used_once_are_folded():
    model = randomize_bn(AddThenNorm())
    folded = fold_batchnorm(model)
    kept = {n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert kept == {"bn_in", "bn_add", "bn_relu", "bn_twice_used", "bn_shared"}
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_linear_then_batchnorm1d_is_folded():
    model = randomize_bn(nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    x = torch.randn(5, 3, 2, 2)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_training_mode_hooks_and_untraceable_models_are_left_alone():
    model = randomize_bn(build_model(ModelSpec("resnet8", 10, (3, 16, 16)))).train()
    assert fold_batchnorm(model) is model  # training BatchNorms normalise by the batch: nothing to fold
    untraceable = randomize_bn(Untraceable())
    before = {k: v.clone() for k, v in untraceable.state_dict().items()}
    assert fold_batchnorm(untraceable) is untraceable
    assert all(torch.equal(v, before[k]) for k, v in untraceable.state_dict().items())
    x = torch.randn(2, 3, 6, 6)
    hooked = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    hooked[0].register_forward_hook(lambda m, i, out: out.abs())  # runs between the conv and its BatchNorm
    folded = fold_batchnorm(hooked)
    assert [type(m) for m in folded.children()] == [nn.Conv2d, nn.BatchNorm2d, nn.Conv2d, nn.Identity]  # only the plain pair
    with torch.no_grad():
        assert torch.allclose(folded(x), hooked(x), atol=1e-5)
    masked = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    torch_prune.l1_unstructured(masked[2], "weight", amount=0.5)  # a forward pre-hook applies the mask
    folded = fold_batchnorm(masked)
    assert isinstance(folded.get_submodule("3"), nn.BatchNorm2d)  # the masked conv keeps its mask and BatchNorm
    with torch.no_grad():
        assert torch.allclose(folded(x), masked(x), atol=1e-5)


def test_task_scores_folded_models_like_unfolded_ones_and_evaluators_get_the_model():
    task = PruningTask.tiny(seed=0)
    randomize_bn(task.model)
    plain = evaluate(task.model, task.search_images, task.search_labels, 500)
    scored = task.score(task.model)
    assert scored["top1"] == plain["top1"] and scored["top5"] == plain["top5"]
    assert scored["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in task.model.modules())
    seen = []
    judged = dataclasses.replace(task, evaluator=lambda m: seen.append(m) or 0.5)
    assert judged.score(task.model) == {"score": 0.5} and seen == [task.model]


def test_pairs_found_on_the_dense_model_fold_its_pruned_copies():
    task = PruningTask.tiny(seed=1)
    pairs = foldable_pairs(task.model)
    assert pairs and all(isinstance(task.model.get_submodule(bn), nn.BatchNorm2d) for _, bn in pairs)
    small = task.engine.prune_keep({g.name: g.channels // 2 for g in task.graph.prunable}).model
    folded = fold_pairs(small, pairs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in small.modules())  # the pruned model itself is unchanged
    x = task.search_images[:8]
    with torch.no_grad():
        assert torch.allclose(folded(x), small(x), atol=1e-4)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())  # pairs that do not fit a model: no fold, not a wrong one
    assert fold_pairs(other, pairs) is None
    assert task.dense_fold_pairs() == pairs
    assert task.score(small) == task.score(folded)  # the task folds the pruned model with the same pairs
    with torch.no_grad():
        expected = small(x)
    assert fold_pairs(small, pairs, in_place=True) is small  # in place: the model itself, no copy
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    with torch.no_grad():
        assert torch.allclose(small(x), expected, atol=1e-4)


def test_task_evaluate_scores_the_episode_model_folded_in_place_with_the_same_score():
    task = PruningTask.tiny(seed=2)
    keep = {g.name: max(1, g.channels // 2) for g in task.graph.prunable}
    metrics, result = task.evaluate(keep)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())  # folded, not a copy
    rebuilt = task.engine.prune_keep(keep).model
    assert any(isinstance(m, nn.BatchNorm2d) for m in rebuilt.modules())
    assert task.score(rebuilt)["top1"] == metrics["top1"]
    assert task.score(rebuilt)["loss"] == pytest.approx(metrics["loss"], rel=1e-6)
