import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.flop_counter import FlopCounterMode

import amc
from amc.cost import Budget, MacsCost, ParamsCost, cost_model
from amc.errors import AmcError
from amc.models import ModelSpec, build_model
from amc.prune import ChannelPruner
from amc.selection import Selection
from amc.structure import trace

from .nets import TEST_NETS, random_kept

COSTS = [MacsCost(), ParamsCost()]


@pytest.mark.parametrize("cost", COSTS, ids=lambda c: c.name)
@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", *TEST_NETS])
def test_cost_model_contract_estimate_equals_measurement(cost, name):
    """Every exact cost model: the accounting of the dense and of a pruned model equals a measurement."""
    model = TEST_NETS[name]() if name in TEST_NETS else build_model(ModelSpec(name))
    graph = trace(model, (3, 8, 8) if name in TEST_NETS else (3, 32, 32))
    kept = random_kept(graph, 0.5)
    small = ChannelPruner(graph).apply(model, Selection(kept))
    keep = {n: len(i) for n, i in kept.items()}
    assert cost.measure(model, graph.input_shape) == cost.cost(graph)
    assert cost.measure(small, graph.input_shape) == cost.cost(graph, keep) < cost.cost(graph)
    assert sum(cost.layer_cost(graph, layer, keep) for layer in graph.layers) <= cost.cost(graph, keep)


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "vgg16"])
def test_macs_are_half_of_torch_flop_counter(name):
    model = build_model(ModelSpec(name)).eval()
    graph = trace(model, (3, 32, 32))
    keep = Budget(graph, "macs", 0.5).uniform()[1]
    small = ChannelPruner(graph).apply(model, Selection({n: torch.arange(k) for n, k in keep.items()}))
    for m, k in ((model, None), (small, keep)):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(torch.zeros(1, 3, 32, 32))
        assert counter.get_total_flops() == 2 * MacsCost().cost(graph, k) == 2 * amc.cost.macs(m, torch.zeros(1, 3, 32, 32))
    assert amc.cost.params(model) == ParamsCost().cost(graph) == sum(p.numel() for p in model.parameters())


def test_cost_model_registry():
    assert cost_model("flops").name == "macs" and cost_model("params").name == "params"
    with pytest.raises(AmcError, match="unknown cost"):
        cost_model("energy")
    with pytest.raises(AmcError, match="needs a table measured for the model"):
        cost_model("latency")
    from amc.cost import Latency
    from amc.latency import LatencyCost

    assert Latency is LatencyCost and cost_model(Latency.__new__(Latency)).__class__ is LatencyCost


@pytest.mark.parametrize("cost", ["macs", "params"])
def test_uniform_meets_target_and_is_the_largest_ratio(cost):
    graph = trace(build_model(ModelSpec("resnet56")), (3, 32, 32))
    budget = Budget(graph, cost, 0.5)
    ratio, keep = budget.uniform()
    assert 0.45 <= budget.ratio(keep) <= 0.5
    a_bit_more = {g: budget.count_for(g, ratio + 0.02) for g in keep}
    assert budget.ratio(a_bit_more) > 0.5  # the bisection found the edge
    with pytest.raises(AmcError, match="unreachable.*smallest reachable target"):
        Budget(graph, cost, 0.05, lbound=0.2)


_GRAPH = trace(build_model(ModelSpec("resnet20")), (3, 32, 32))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=9, max_size=9), st.sampled_from([0.3, 0.5, 0.7]), st.sampled_from([1, 4]),
       st.sampled_from(["macs", "params"]))
def test_clamp_always_meets_budget(actions, target, round_to, cost):
    """AMC's clamp, applied group by group in forward order, never exceeds the budget (property)."""
    budget = Budget(_GRAPH, cost, target, round_to=round_to)
    keep = {}
    for g, a in zip(budget.groups, actions):
        keep[g.name] = min(budget.count_for(g.name, a), budget.max_count(g.name, keep))
        assert keep[g.name] % g.count_step(round_to) == 0 or keep[g.name] == g.channels
    assert budget.ratio(keep) <= target + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=9, max_size=9), st.sampled_from([0.3, 0.5, 0.7]), st.sampled_from([1, 4]),
       st.sampled_from(["macs", "params"]))
def test_scaled_rule_meets_budget_keeps_the_shape_and_spends_the_budget(actions, target, round_to, cost):
    """The budget-aware mapping: within budget, same order of preserve ratios, no budget left on the table."""
    budget = Budget(_GRAPH, cost, target, round_to=round_to)
    ratios = {g.name: a for g, a in zip(budget.groups, actions)}
    alpha, keep = budget.scaled(ratios)
    assert budget.ratio(keep) <= target + 1e-9
    assert keep == {g.name: budget.count_for(g.name, alpha * max(ratios[g.name], 1e-6)) for g in budget.groups}
    for a in budget.groups:  # a group asking for more never keeps a smaller fraction (same width, no rounding)
        for b in budget.groups:
            if a.channels == b.channels and ratios[a.name] < ratios[b.name] and round_to == 1:
                assert keep[a.name] <= keep[b.name]
    if any(keep[g.name] < budget.counts(g.name)[-1] for g in budget.groups):
        bigger = {g.name: budget.count_for(g.name, alpha * 1.05 * max(ratios[g.name], 1e-6)) for g in budget.groups}
        assert bigger == keep or budget.ratio(bigger) > target  # alpha is (nearly) the largest that fits


def test_clamp_starves_the_last_groups_and_scaling_does_not():
    """Asking to keep everything: the clamp gives the early groups all and the late ones the lower bound."""
    budget = Budget(_GRAPH, "macs", 0.5)
    clamped = {}
    for g in budget.groups:
        clamped[g.name] = min(budget.count_for(g.name, 1.0), budget.max_count(g.name, clamped))
    first, last = budget.groups[0], budget.groups[-1]
    assert clamped[first.name] == first.channels and clamped[last.name] == budget.lowest[last.name]
    _, scaled = budget.scaled({g.name: 1.0 for g in budget.groups})
    assert scaled == budget.uniform()[1]  # the same shape everywhere: the uniform policy
    assert scaled[last.name] > clamped[last.name]


def test_budget_rejects_nonsense():
    for kwargs in ({"target": 0}, {"target": 1.5}, {"target": float("nan")}, {"target": 0.5, "lbound": 0},
                   {"target": 0.5, "round_to": 0}):
        with pytest.raises(AmcError):
            Budget(_GRAPH, "macs", **kwargs)
