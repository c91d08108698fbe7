"""Latency as a cost model: a per-layer lookup table measured on the target, interpolated over kept channels.

Every conv and linear call of a traced model is a layer *signature* (kind, kernel, stride, padding,
dilation, conv groups, input size, dense channel counts). For each signature the table times a standalone
copy of the layer (random weights, batch ``batch``, ``torch.inference_mode``, median of ``repeats`` runs
after ``warmup`` runs, milliseconds) on a grid of kept input x output channel counts (``grid`` fractions of
the dense counts; depthwise layers: a 1-d grid) and predicts any other count by bilinear interpolation.
A layer with no input or output channel left costs 0. What the layers leave out of the dense model's
end-to-end time (BatchNorm, activations, additions, pooling, per-op dispatch) is measured once per
architecture and added as a constant overhead, so that predicted *ratios* stay honest at small sizes.

Tables are cached as JSON in ``cache_dir`` (one file per device: processor, torch version, device, threads
and batch in the file name's hash), so the layers of a model are measured once per machine. The model's
latency estimate is the overhead plus the sum over its conv/linear calls (``benchmarks/latency.py`` measures
how far the estimate is from end-to-end timings of compact models).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from filelock import FileLock
from torch import nn

from .errors import AmcWarning
from .forward_context import eval_mode
from .io import atomic_write_text
from .structure import DependencyGraph, Keep, Layer

TIMED = ("conv", "grouped", "depthwise", "linear")  # the layer kinds the table times
GRID = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
Timer = Callable[[nn.Module, torch.Tensor], float]  # milliseconds of one forward pass


def median_ms(module: nn.Module, x: torch.Tensor, warmup: int = 3, repeats: int = 15) -> float:
    """Median wall time in milliseconds of ``module(x)`` under ``torch.inference_mode`` (CUDA synchronised)."""
    cuda = x.is_cuda
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            module(x)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def signature(layer: Layer) -> str:
    """What a layer's latency depends on, except its kept channel counts."""
    m = layer.module
    if isinstance(m, nn.Conv2d):
        mode = "dw" if layer.kind.name == "depthwise" else f"g{m.groups}"
        return (f"conv{mode}|k{tuple(m.kernel_size)}|s{tuple(m.stride)}|p{tuple(m.padding)}|d{tuple(m.dilation)}"
                f"|b{int(m.bias is not None)}|in{layer.in_hw}|out{layer.out_hw}|{m.in_channels}x{m.out_channels}")
    return f"linear|b{int(m.bias is not None)}|pos{layer.out_hw}|{m.in_features}x{m.out_features}"


def architecture_key(graph: DependencyGraph) -> str:
    """A hash of the input shape and every layer's name and signature: which model an overhead belongs to."""
    text = repr(graph.input_shape) + "".join(
        f"{la.name}:{la.kind.name}:{signature(la) if la.kind.name in TIMED else ''};" for la in graph.layers)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _grid_counts(dense: int, step: int, grid: Sequence[float]) -> list[int]:
    counts = {max(step, step * round(f * dense / step)) for f in grid}
    return sorted(c for c in counts if c <= dense)


def _standalone(layer: Layer, c_in: int, c_out: int, batch: int, device: str) -> tuple[nn.Module, torch.Tensor]:
    m = layer.module
    if isinstance(m, nn.Conv2d):
        groups = c_in if layer.kind.name == "depthwise" else m.groups
        module = nn.Conv2d(c_in, c_out, m.kernel_size, m.stride, m.padding, m.dilation, groups, m.bias is not None)
        x = torch.randn(batch, c_in, *layer.in_hw)
    else:
        module = nn.Linear(c_in, c_out, m.bias is not None)
        h, w = layer.out_hw
        x = torch.randn(batch, c_in) if (h, w) == (1, 1) else torch.randn(batch, h, w, c_in)
    return module.to(device).eval(), x.to(device)


class LatencyTable:
    """Measured layer latencies (milliseconds per batch) by signature, with interpolation.

    ``entries``: signature -> ``{"c_in": [...], "c_out": [...], "ms": [[...]]}`` (rows: c_in). Build one
    with :meth:`for_graph`; :meth:`predict` answers for any kept counts.
    """

    def __init__(self, entries: dict | None = None, device: str = "", overheads: dict | None = None):
        self.entries: dict[str, dict] = dict(entries or {})
        self.overheads: dict[str, float] = dict(overheads or {})  # architecture -> ms outside conv/linear layers
        self.device = device  # where the timings were taken (:meth:`device_key`)
        self._memo: dict[int, tuple] = {}  # id -> (graph or layer, its key): no rehashing on the hot path

    @staticmethod
    def device_key(device: str = "cpu", threads: int | None = None, batch: int = 1) -> str:
        """Where timings are valid: processor, torch version, device, thread count and batch size."""
        threads = threads or torch.get_num_threads()
        name = torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name()
        return f"{name}|torch {torch.__version__}|{device}|threads {threads}|batch {batch}"

    @classmethod
    def for_graph(cls, graph: DependencyGraph, *, device: str = "cpu", batch: int = 1, grid: Sequence[float] = GRID,
                  cache_dir: str | Path | None = None, timer: Timer | None = None,
                  model: nn.Module | None = None) -> "LatencyTable":
        """The table for every conv/linear of ``graph``: read from ``cache_dir`` where measured before on this
        device, measured (and added to the cache) otherwise. ``timer``: how to time a module on an input
        (default :func:`median_ms`; tests pass a deterministic one). ``model``: the traced model; when given,
        its end-to-end time minus its layers' is kept as the architecture's :meth:`overhead`."""
        key = cls.device_key(device, batch=batch)
        path = lock = None
        table = cls(device=key)
        if cache_dir is not None:
            folder = Path(cache_dir).expanduser() / "latency"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
            lock = FileLock(str(path) + ".lock")
        with lock if lock is not None else contextlib.nullcontext():
            if path is not None and path.is_file():
                try:
                    stored = json.loads(path.read_text())
                    if stored.get("device") == key:
                        table.entries.update(stored["entries"])
                        table.overheads.update(stored.get("overheads", {}))
                except (OSError, ValueError, KeyError):
                    pass  # a torn or foreign file: measured again and rewritten
            missing = {signature(la): la for la in graph.layers if la.kind.name in TIMED}
            missing = {s: la for s, la in missing.items() if s not in table.entries}
            arch = architecture_key(graph)
            new_overhead = model is not None and arch not in table.overheads
            if (missing or new_overhead) and timer is None:
                warn_if_busy(device)
            for sig, layer in missing.items():
                table.entries[sig] = table._measure(layer, device, batch, grid, timer or median_ms)
            if new_overhead:
                x = torch.randn(batch, *graph.input_shape, device=device)
                layers = sum(table.predict(la, *la.kind.dense_widths(la.module)) for la in graph.layers
                             if la.kind.name in TIMED)
                with eval_mode(model):
                    table.overheads[arch] = max(0.0, (timer or median_ms)(model, x) - layers)
            if (missing or new_overhead) and path is not None:
                atomic_write_text(json.dumps({"device": key, "entries": table.entries,
                                              "overheads": table.overheads}) + "\n", path)
        return table

    def overhead(self, graph: DependencyGraph) -> float:
        """Milliseconds of the architecture's end-to-end time outside its conv/linear layers (0 if not measured)."""
        key = self._memo.get(id(graph))
        if key is None or key[0] is not graph:  # budgets ask thousands of times per search: hash each graph once
            key = self._memo[id(graph)] = (graph, architecture_key(graph))
        return self.overheads.get(key[1], 0.0)

    def _signature(self, layer: Layer) -> str:
        memo = self._memo.get(id(layer))
        if memo is None or memo[0] is not layer:
            memo = self._memo[id(layer)] = (layer, signature(layer))
        return memo[1]

    @staticmethod
    def _measure(layer: Layer, device: str, batch: int, grid: Sequence[float], timer: Timer) -> dict:
        m = layer.module
        if isinstance(m, nn.Conv2d):
            step = 1 if layer.kind.name == "depthwise" else m.groups
            c_in = _grid_counts(m.in_channels, step, grid)
            c_out = c_in if layer.kind.name == "depthwise" else _grid_counts(m.out_channels, step, grid)
        else:
            c_in, c_out = _grid_counts(m.in_features, 1, grid), _grid_counts(m.out_features, 1, grid)
        if layer.kind.name == "depthwise":
            ms = [[timer(*_standalone(layer, c, c, batch, device))] for c in c_in]
            return {"c_in": c_in, "c_out": [0], "ms": ms}
        ms = [[timer(*_standalone(layer, ci, co, batch, device)) for co in c_out] for ci in c_in]
        return {"c_in": c_in, "c_out": c_out, "ms": ms}

    def predict(self, layer: Layer, c_in: int, c_out: int) -> float:
        """Milliseconds of ``layer`` with ``c_in`` input and ``c_out`` output channels (0 if either is 0)."""
        if c_in <= 0 or c_out <= 0:
            return 0.0
        entry = self.entries[self._signature(layer)]
        xs, ms = entry["c_in"], entry["ms"]
        if entry["c_out"] == [0]:  # depthwise: one dimension
            return _interpolate(xs, [row[0] for row in ms], c_in)
        ys = entry["c_out"]
        per_in = [_interpolate(ys, row, c_out) for row in ms]
        return _interpolate(xs, per_in, c_in)


def warn_if_busy(device: str = "cpu") -> None:
    """Warn (:class:`AmcWarning`) when CPU timings are about to be taken on a busy machine: with more runnable
    work than cores (the 1-minute load average), other processes take turns with the timed one and the
    table's figures are inflated unevenly (a whole-model time taken during a busy moment can make every
    budget look unreachable). Timings are cached, so a table measured this way stays until its cache file
    is deleted."""
    if not device.startswith("cpu") or not hasattr(os, "getloadavg"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0]
    if load > cores:
        warnings.warn(f"measuring latencies while the machine is busy (load average {load:.1f} on {cores} cores): "
                      "the table may be inflated; measure it on an idle machine (delete the cache's latency/ "
                      "folder to measure again)", AmcWarning, stacklevel=3)


def _interpolate(xs: Sequence[float], values: Sequence[float], x: float) -> float:
    """Piecewise-linear interpolation through (xs, values); linear through the origin below the first point,
    extrapolated along the last segment above the last."""
    if len(xs) == 1 or x <= xs[0]:
        return values[0] * x / xs[0]
    for i in range(1, len(xs)):
        if x <= xs[i] or i == len(xs) - 1:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return values[i - 1] + t * (values[i] - values[i - 1])
    return values[-1]


class LatencyCost:
    """Cost model: predicted milliseconds per batch of the model's conv and linear layers (see the module).

    Not exact: a measured compact model is not expected to equal the estimate; :meth:`measure` times the
    whole model end to end (median, milliseconds per batch of ``batch``).
    """

    name = "latency"
    exact = False

    def __init__(self, table: LatencyTable, batch: int = 1, device: str = "cpu"):
        self.table, self.batch, self.device = table, batch, device
        self.definition = (f"latency = predicted milliseconds per batch of {batch}: the Conv2d and Linear layers "
                           f"from a per-layer table measured on {table.device}, plus the rest of the dense model's "
                           f"measured time as a constant")

    def layer_cost(self, graph: DependencyGraph, layer: Layer, keep: Keep | None = None) -> float:
        if layer.kind.name not in TIMED:
            return 0.0
        return self.table.predict(layer, graph.width(layer.in_layout, keep), graph.width(layer.out_layout, keep))

    def cost(self, graph: DependencyGraph, keep: Keep | None = None) -> float:
        """The architecture's overhead plus the predicted time of its conv/linear layers at ``keep``."""
        return self.table.overhead(graph) + sum(self.layer_cost(graph, layer, keep) for layer in graph.layers)

    def measure(self, model: nn.Module, input_shape: Sequence[int]) -> float:
        device = next(model.parameters()).device
        with eval_mode(model):
            return median_ms(model, torch.randn(self.batch, *input_shape, device=device))
