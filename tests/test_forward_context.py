"""Every forward pass the library runs on a user's model leaves it as it was: each module's own training
flag (a BatchNorm frozen in eval mode inside a model in training mode stays frozen) and no hooks left."""
import pytest
import torch
from torch import nn

from amc.calibration import CalibrationSet, Needs, collect_stats
from amc.config import PruneConfig
from amc.cost import macs
from amc.evaluation import custom_score, evaluate, largest_activation_bytes
from amc.forward_context import attached_hooks, eval_mode
from amc.latency import LatencyCost, LatencyTable
from amc.models import ModelSpec, build_model
from amc.prune import PruningEngine
from amc.prune.recovery import batchnorms_after, dense_targets, recalibrate_batchnorm, refittable_layers
from amc.sensitivity import sensitivity
from amc.structure import trace


def frozen_bn_model() -> nn.Module:
    """resnet8 in training mode with its first BatchNorm frozen (eval mode), as in a detection fine-tune."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet8")).train()
    model.bn1.eval()
    return model


def state(model):
    return [(n, m.training, len(m._forward_hooks) + len(m._forward_pre_hooks)) for n, m in model.named_modules()]


X = torch.randn(6, 3, 32, 32)
GRAPH = trace(frozen_bn_model(), (3, 32, 32))  # the structure; traced once, outside the runs checked
Y = torch.randint(0, 10, (6,))
RUNS = {
    "evaluate": lambda m: evaluate(m, X, Y),
    "custom_score": lambda m: custom_score(lambda net: 0.5, m),
    "largest_activation_bytes": lambda m: largest_activation_bytes(m, (3, 32, 32)),
    "macs": lambda m: macs(m, X),
    "trace": lambda m: trace(m, (3, 32, 32)),
    "collect_stats": lambda m: collect_stats(m, GRAPH, CalibrationSet(X, Y, batch_size=3),
                                             Needs.ACTIVATIONS | Needs.GRAM | Needs.GRADIENTS),
    "dense_targets": lambda m: dense_targets(m, refittable_layers(m, GRAPH), X),
    "batchnorms_after": lambda m: batchnorms_after(m, X[:1]),
    "recalibrate_batchnorm": lambda m: recalibrate_batchnorm(m, [X]),
    "sensitivity": lambda m: sensitivity(m, X, lambda net: 0.5, [0.5]),
    "sensitivity weight": lambda m: sensitivity(m, X, lambda net: 0.5, [0.5], "weight"),
    "latency overhead": lambda m: LatencyTable.for_graph(trace(m, (3, 32, 32)), model=m, timer=lambda mod, x: 1.0),
    "latency measure": lambda m: LatencyCost(LatencyTable()).measure(m, (3, 32, 32)),
}


@pytest.mark.parametrize("run", RUNS)
def test_library_forward_passes_restore_every_modules_mode_and_remove_their_hooks(run):
    model = frozen_bn_model()
    before = state(model)
    RUNS[run](model)
    assert state(model) == before
    assert model.training and not model.bn1.training


def test_sequential_pruning_leaves_the_dense_model_and_its_frozen_batchnorm_as_they_were():
    model = frozen_bn_model()
    graph = trace(model, (3, 32, 32))
    before = state(model)
    cfg = PruneConfig(channels_last=False, reconstruction="sequential")
    small = PruningEngine(model, graph, cfg, CalibrationSet(X, batch_size=3)).prune_keep(
        {g.name: g.channels // 2 for g in graph.prunable}).model
    assert state(model) == before
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in small.modules())
    assert not any(m.training for m in small.modules())  # the pruned model comes back in eval mode


def test_recalibrate_batchnorm_still_re_estimates_the_statistics_it_is_asked_for():
    model = frozen_bn_model()
    old = model.bn1.running_mean.clone()
    assert recalibrate_batchnorm(model, [X, X]) == 2
    assert not torch.equal(model.bn1.running_mean, old)
    assert model.bn1.momentum == 0.1 and not model.bn1.training


def test_attached_hooks_and_eval_mode_undo_themselves_when_the_pass_raises():
    model = frozen_bn_model()
    before = state(model)
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model), attached_hooks(pre=[(model.conv1, lambda m, i: seen.append("pre"))],
                                              post=[(model.conv1, lambda m, i, o: seen.append("post"))]):
            assert not model.training
            model(X[:1])
            raise RuntimeError("boom")
    assert seen == ["pre", "post"] and state(model) == before
