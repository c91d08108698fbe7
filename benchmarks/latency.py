"""Latency on this CPU: how well the per-layer table predicts compact models, and real speed-ups per runtime.

    python benchmarks/latency.py --out results/benchmarks/latency [--models resnet20 resnet56 mobilenet_v2]
                                 [--threads 1] [--policies 20] [--repeats 30]

Run it alone on the machine (it times things). Random weights (latency does not depend on them), CIFAR
input 3x32x32, ``--threads`` torch threads, medians of ``--repeats`` timed runs after 5 warm-up runs,
compact models built with ``amc.apply_policy`` without recovery.

- part ``prediction``: the latency table (:mod:`amc.latency`, batch 1) predicts the latency of uniform
  policies at MACs targets 0.3..0.9 and of ``--policies`` random policies (preserve ratios uniform in
  [0.2, 1] per group); each prediction is compared with the compact model's end-to-end median latency
  (dense and compact measured alternately). Reported: the error of the predicted latency *ratio* (what
  budgets use) and of the milliseconds, and the rank correlation -> ``prediction.{csv,md}``;
- part ``speedup``: dense vs the uniform 50%-MACs compact model with ``round_to`` 1, 8 and 16, at batch 1
  and 64, in torch eager (contiguous and channels-last), TorchScript (``torch.jit.trace``), ``torch.compile``
  and ONNX Runtime (when installed); speed-up = dense / compact time per runtime, beside the MACs ratio
  -> ``speedup.{csv,md}``.

``record.json``: machine, versions, command, settings, seconds.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SHAPE = (3, 32, 32)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def compact(model, graph, keep):
    from amc import apply_policy
    from amc.config import PruneConfig
    from amc.policy import Policy
    policy = Policy.build(graph, keep, model={"name": "bench"})
    return apply_policy(model, policy, prune=PruneConfig(reconstruct=False, bn_batches=0), graph=graph).model.eval()


def timed(fn, x, repeats: int) -> float:
    """Median milliseconds of ``fn(x)`` after 5 warm-up calls."""
    with torch.inference_mode():
        for _ in range(5):
            fn(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def part_prediction(name: str, args) -> list[dict]:
    from amc.cost import Budget, MacsCost
    from amc.latency import LatencyCost, LatencyTable
    from amc.models import ModelSpec, build_model
    from amc.structure import trace

    torch.manual_seed(0)
    model = build_model(ModelSpec(name)).eval()
    graph = trace(model, SHAPE)
    began = time.time()
    table = LatencyTable.for_graph(graph, cache_dir=args.cache_dir, model=model)
    built = time.time() - began
    cost = LatencyCost(table)
    rng = random.Random(0)
    policies = [(f"uniform {t:.1f} MACs", Budget(graph, "macs", t).uniform()[1]) for t in TARGETS]
    for i in range(args.policies):
        policies.append((f"random {i}", {g.name: max(1, round(rng.uniform(0.2, 1.0) * g.channels))
                                         for g in graph.prunable}))
    x = torch.randn(1, *SHAPE)
    dense_pred = cost.cost(graph)
    rows = []
    for label, keep in policies:
        small = compact(model, graph, keep)
        dense_ms, small_ms = [], []
        for _ in range(3):  # alternate, then take the median of the medians
            dense_ms.append(timed(model, x, args.repeats))
            small_ms.append(timed(small, x, args.repeats))
        d, s = statistics.median(dense_ms), statistics.median(small_ms)
        pred = cost.cost(graph, keep)
        rows.append({"model": name, "policy": label, "macs_ratio": MacsCost().cost(graph, keep) / MacsCost().cost(graph),
                     "predicted_ms": pred, "measured_ms": s, "dense_predicted_ms": dense_pred, "dense_measured_ms": d,
                     "predicted_ratio": pred / dense_pred, "measured_ratio": s / d, "table_seconds": built})
        log(f"{name} {label}: predicted ratio {pred / dense_pred:.3f}, measured {s / d:.3f}")
    return rows


def runtimes(model, x):
    """(name, callable) per runtime that works here for ``model`` on inputs shaped like ``x``."""
    out = [("eager", model)]
    cl = __import__("copy").deepcopy(model).to(memory_format=torch.channels_last)
    out.append(("eager channels-last", lambda t: cl(t.contiguous(memory_format=torch.channels_last))))
    try:
        with torch.inference_mode():
            traced = torch.jit.freeze(torch.jit.trace(model, x))
        out.append(("torchscript (trace+freeze)", traced))
    except Exception as exc:  # noqa: BLE001  (a runtime that fails is recorded as absent)
        log(f"torchscript failed: {exc}")
    try:
        compiled = torch.compile(model)
        with torch.inference_mode():
            compiled(x)
        out.append(("torch.compile", compiled))
    except Exception as exc:  # noqa: BLE001
        log(f"torch.compile failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    try:
        import onnxruntime as ort
        buf = io.BytesIO()
        torch.onnx.export(model, x, buf, input_names=["x"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        out.append(("onnxruntime", lambda t: session.run(None, {"x": t.numpy()})))
    except Exception as exc:  # noqa: BLE001
        log(f"onnxruntime unavailable: {exc}")
    return out


def part_speedup(name: str, args) -> list[dict]:
    from amc.cost import Budget, MacsCost
    from amc.errors import AmcError
    from amc.models import ModelSpec, build_model
    from amc.structure import trace

    torch.manual_seed(0)
    model = build_model(ModelSpec(name)).eval()
    graph = trace(model, SHAPE)
    rows = []
    for round_to in (1, 8, 16):
        try:
            keep = Budget(graph, "macs", 0.5, round_to=round_to).uniform()[1]
        except AmcError as exc:  # e.g. 16-channel groups cannot be halved in multiples of 16
            log(f"{name} round_to {round_to}: {exc}")
            rows.append({"model": name, "round_to": round_to, "runtime": "(unreachable)", "note": str(exc)})
            continue
        small = compact(model, graph, keep)
        macs_ratio = MacsCost().cost(graph, keep) / MacsCost().cost(graph)
        for batch in (1, 64):
            x = torch.randn(batch, *SHAPE)
            dense_rt, small_rt = dict(runtimes(model, x)), dict(runtimes(small, x))
            for runtime in dense_rt:
                if runtime not in small_rt:
                    continue
                d, s = [], []
                for _ in range(3):
                    d.append(timed(dense_rt[runtime], x, args.repeats))
                    s.append(timed(small_rt[runtime], x, args.repeats))
                dm, sm = statistics.median(d), statistics.median(s)
                rows.append({"model": name, "round_to": round_to, "batch": batch, "runtime": runtime,
                             "macs_ratio": macs_ratio, "dense_ms": dm, "compact_ms": sm, "speedup": dm / sm,
                             "images_per_s_dense": batch / dm * 1000, "images_per_s_compact": batch / sm * 1000})
                log(f"{name} round_to {round_to} batch {batch} {runtime}: {dm:.2f} -> {sm:.2f} ms ({dm / sm:.2f}x)")
    return rows


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from amc.io import atomic_write_text
    from amc.provenance import provenance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "mobilenet_v2"])
    p.add_argument("--part", choices=("prediction", "speedup", "all"), default="all")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--policies", type=int, default=20, help="random policies per model (part prediction)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per measurement")
    p.add_argument("--cache-dir", default=None, help="latency table cache (default: a fresh temporary folder, so "
                   "the table is measured in this run)")
    p.add_argument("--out", default=str(ROOT / "results/benchmarks/latency"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tmp = tempfile.TemporaryDirectory()
    args.cache_dir = args.cache_dir or tmp.name
    record = {"settings": {k: v for k, v in vars(args).items() if k != "cache_dir"}, "shape": list(SHAPE)}
    if args.part in ("prediction", "all"):
        df = pd.DataFrame([r for m in args.models for r in part_prediction(m, args)])
        atomic_write_text(df.to_csv(index=False), out / "prediction.csv")
        lines = ["Latency table (batch 1, {} thread(s)) vs end-to-end medians of compact models; error of the "
                 "predicted ratio to dense in points, of the milliseconds in %.".format(args.threads), "",
                 "| model | policies | table built (s) | dense predicted / measured ms | ratio error, mean abs (max) | "
                 "ms error, mean abs % | Spearman (predicted, measured) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, part in df.groupby("model", sort=False):
            ratio_err = (part.predicted_ratio - part.measured_ratio).abs() * 100
            ms_err = ((part.predicted_ms - part.measured_ms) / part.measured_ms).abs() * 100
            rho = part.predicted_ratio.rank().corr(part.measured_ratio.rank())
            lines.append(f"| {name} | {len(part)} | {part.table_seconds.iloc[0]:.1f} | "
                         f"{part.dense_predicted_ms.iloc[0]:.3f} / {part.dense_measured_ms.median():.3f} | "
                         f"{ratio_err.mean():.1f} ({ratio_err.max():.1f}) | {ms_err.mean():.1f} | {rho:.3f} |")
        atomic_write_text("\n".join(lines) + "\n", out / "prediction.md")
        print("\n".join(lines))
    if args.part in ("speedup", "all"):
        df = pd.DataFrame([r for m in args.models for r in part_speedup(m, args)])
        atomic_write_text(df.to_csv(index=False), out / "speedup.csv")
        lines = [f"Uniform 50%-MACs compact vs dense, {args.threads} thread(s), medians; speed-up = dense / compact "
                 "time.", "", "| model | round_to | MACs ratio | batch | runtime | dense ms | compact ms | speed-up | "
                 "speed-up / (1 / MACs ratio) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for _, r in df.iterrows():
            if r.runtime == "(unreachable)":
                lines.append(f"| {r.model} | {r.round_to} | - | - | 50% MACs unreachable: {r.note} | | | | |")
                continue
            lines.append(f"| {r.model} | {r.round_to} | {r.macs_ratio:.3f} | {int(r.batch)} | {r.runtime} | {r.dense_ms:.2f} | "
                         f"{r.compact_ms:.2f} | {r.speedup:.2f}x | {r.speedup * r.macs_ratio:.2f} |")
        atomic_write_text("\n".join(lines) + "\n", out / "speedup.md")
        print("\n".join(lines))
    info = provenance(command=" ".join([Path(sys.executable).name, *sys.argv]))
    record.update(seconds=time.time() - started, **info)
    atomic_write_text(json.dumps(record, indent=2, default=str) + "\n", out / "record.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
