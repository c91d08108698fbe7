"""The latency cost model: table interpolation, caching per device, and budgets met under it."""
import json
import warnings

import pandas as pd
import pytest
import torch

from amc.cli import main
from amc.cost import Budget
from amc.errors import AmcError
from amc.latency import LatencyCost, LatencyTable, signature
from amc.models import ModelSpec, build_model
from amc.structure import trace


def bilinear_timer(module, x):
    """A deterministic 'timer': 1 us per input x output channel pair (per input channel for depthwise)."""
    if isinstance(module, torch.nn.Conv2d) and module.groups == module.in_channels > 1:
        return 0.001 * module.in_channels
    c_in, c_out = (module.in_channels, module.out_channels) if isinstance(module, torch.nn.Conv2d) else \
        (module.in_features, module.out_features)
    return 0.001 * c_in * c_out


def refusing_timer(module, x):
    raise AssertionError("measured although the table was cached")


@pytest.fixture(scope="module")
def graph():
    return trace(build_model(ModelSpec("resnet8", 10, (3, 16, 16))), (3, 16, 16))


def test_prediction_interpolates_between_measured_counts_and_is_zero_without_channels(graph):
    table = LatencyTable.for_graph(graph, timer=bilinear_timer)
    layer = graph.layer["layer2.0.conv2"]  # 32 -> 32 channels: grid points at multiples of 4
    assert table.predict(layer, 32, 32) == pytest.approx(0.001 * 32 * 32)
    assert table.predict(layer, 13, 27) == pytest.approx(0.001 * 13 * 27)  # between grid points: bilinear is exact
    assert table.predict(layer, 2, 3) == pytest.approx(0.001 * 2 * 3)  # below the first grid point: through 0
    assert table.predict(layer, 0, 32) == 0 and table.predict(layer, 32, 0) == 0
    cost = LatencyCost(table)
    keep = {graph.prunable[0].name: 4}
    assert cost.cost(graph, keep) < cost.cost(graph)


def test_tables_are_cached_per_device_and_a_torn_file_is_measured_again(graph, tmp_path):
    first = LatencyTable.for_graph(graph, cache_dir=tmp_path, timer=bilinear_timer)
    again = LatencyTable.for_graph(graph, cache_dir=tmp_path, timer=refusing_timer)  # no layer measured twice
    assert again.entries == first.entries and signature(graph.layer["layer1.0.conv1"]) in again.entries
    with pytest.raises(AssertionError, match="measured although"):
        LatencyTable.for_graph(graph, cache_dir=tmp_path, batch=8, timer=refusing_timer)  # another batch size
    (path,) = (tmp_path / "latency").glob("*.json")
    path.write_text(path.read_text()[:100])
    assert LatencyTable.for_graph(graph, cache_dir=tmp_path, timer=bilinear_timer).entries == first.entries
    assert json.loads(path.read_text())["entries"] == first.entries


def test_budget_under_latency_is_met_by_uniform_and_by_the_clamp(graph):
    cost = LatencyCost(LatencyTable.for_graph(graph, timer=bilinear_timer))
    budget = Budget(graph, cost, 0.5)
    ratio, keep = budget.uniform()
    assert budget.ratio(keep) <= 0.5 and ratio < 1
    decided = {}
    for g in budget.groups:  # AMC's clamp with every action asking for everything
        decided[g.name] = budget.max_count(g.name, decided)
    assert budget.ratio(decided) <= 0.5 + 1e-9


def test_search_with_resource_latency_meets_the_target_in_every_episode(tmp_path):
    """The search reads the cached table (made here with a deterministic timer, so the test times nothing)."""
    model = build_model(ModelSpec("resnet8", 10, (3, 16, 16)))

    def timer(module, x):
        return 20.0 if module is model else bilinear_timer(module, x)

    LatencyTable.for_graph(trace(model, (3, 16, 16)), cache_dir=tmp_path / "cache", timer=timer, model=model)
    (table_file,) = (tmp_path / "cache" / "latency").glob("*.json")
    prepared = table_file.read_bytes()
    argv = ["search", "--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset", "synthetic", "--holdout",
            "100", "--search-images", "50", "--calibration-images", "40", "--bn-batches", "1", "--episodes", "4",
            "--agent", "random", "--quiet", "--resource", "latency", "--target", "0.8", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    episodes = pd.read_csv(tmp_path / "run" / "episodes.csv")
    assert (episodes.latency_ratio <= 0.8 + 1e-9).all() and (episodes.macs_ratio < 1).all()
    assert json.loads((tmp_path / "run" / "best_policy.json").read_text())["cost"]["name"] == "latency"
    assert table_file.read_bytes() == prepared  # the prepared table was used: nothing was measured


def test_accuracy_mode_refuses_a_latency_cost(tmp_path, capsys):
    code = main(["search", "--model", "resnet8", "--input-shape", "3", "16", "16", "--dataset", "synthetic",
                 "--mode", "accuracy", "--cost", "latency", "--episodes", "2", "--agent", "random",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")])
    assert code == 2 and "needs a count" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "latency").exists()  # refused before any table was measured
    with pytest.raises(AmcError, match="needs a table"):
        Budget(trace(build_model(ModelSpec("resnet8", 10, (3, 16, 16))), (3, 16, 16)), "latency", 0.5)


def test_the_rest_of_the_dense_time_is_a_cached_constant_overhead(graph, tmp_path):
    model = build_model(ModelSpec("resnet8", 10, (3, 16, 16)))

    def timer(module, x):  # the whole model takes 20 ms, its layers what bilinear_timer says
        return 20.0 if module is model else bilinear_timer(module, x)

    table = LatencyTable.for_graph(graph, cache_dir=tmp_path, timer=timer, model=model)
    cost = LatencyCost(table)
    assert cost.cost(graph) == pytest.approx(20.0)  # dense estimate = dense measurement
    layers_only = cost.cost(graph) - table.overhead(graph)
    assert 0 < layers_only < 20.0
    keep = {g.name: max(1, g.channels // 2) for g in graph.prunable}
    assert cost.cost(graph, keep) == pytest.approx(table.overhead(graph) + sum(
        cost.layer_cost(graph, layer, keep) for layer in graph.layers))
    again = LatencyTable.for_graph(graph, cache_dir=tmp_path, timer=refusing_timer, model=model)
    assert again.overhead(graph) == table.overhead(graph)


def test_uniform_command_meets_a_latency_target_with_a_cached_table(tmp_path):
    model = build_model(ModelSpec("resnet8", 10, (3, 16, 16)))
    LatencyTable.for_graph(trace(model, (3, 16, 16)), cache_dir=tmp_path / "cache", model=model,
                           timer=lambda m, x: 20.0 if m is model else bilinear_timer(m, x))
    out = tmp_path / "p.json"
    assert main(["uniform", "resnet8", "--input-shape", "3", "16", "16", "--cost", "latency", "--target", "0.85",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    policy = json.loads(out.read_text())
    assert policy["cost"]["name"] == "latency" and policy["metrics"]["latency_ratio"] <= 0.85
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 1
    # the table is cached per thread count: --threads picks the one a search with those threads measured
    default = torch.get_num_threads()
    other = 1 if default != 1 else 2
    try:
        torch.set_num_threads(other)
        LatencyTable.for_graph(trace(model, (3, 16, 16)), cache_dir=tmp_path / "cache", model=model,
                               timer=lambda m, x: 20.0 if m is model else bilinear_timer(m, x))
        torch.set_num_threads(default)
        assert main(["uniform", "resnet8", "--input-shape", "3", "16", "16", "--cost", "latency", "--target", "0.85",
                     "--cache-dir", str(tmp_path / "cache"), "--threads", str(other), "--out", str(out),
                     "--overwrite"]) == 0
        assert torch.get_num_threads() == other
        assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 2  # served, not measured a third time
    finally:
        torch.set_num_threads(default)


def test_measuring_on_a_busy_machine_warns(monkeypatch):
    """More runnable work than cores inflates CPU timings: the user is told before the table is cached."""
    import os

    from amc.errors import AmcWarning
    from amc.latency import warn_if_busy

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 1.5, 0.0, 0.0))
    with pytest.warns(AmcWarning, match=f"load average {cores + 1.5:.1f} on {cores} cores"):
        warn_if_busy("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_busy("cuda:0")  # GPU timings are not shared with other processes' CPU work
        monkeypatch.setattr(os, "getloadavg", lambda: (cores - 0.5, 0.0, 0.0))
        warn_if_busy("cpu")
