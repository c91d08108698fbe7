"""``amc apply``: turn a policy file into a saved, compact (and optionally fine-tuned) model."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from .cli import data_config, open_from_args, print_table
from .data import load_splits
from .errors import AmcError
from .evaluation import evaluate
from .flops import flops_of, measure
from .graph import PruningGraph
from .models import save_model
from .policy import Policy
from .pruner import ChannelPruner, PruneSettings


def export_onnx(model: torch.nn.Module, input_shape, path: str) -> str:
    """Export to ONNX; when onnxruntime is installed, check its outputs against torch's."""
    x = torch.randn(2, *input_shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's constant-folding notes
            # dynamo=False: the TorchScript exporter needs only the onnx package (no onnxscript)
            torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    except Exception as exc:
        raise AmcError(f"ONNX export failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        return "exported (onnxruntime not installed: outputs not checked)"
    got = ort.InferenceSession(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        diff = float((torch.from_numpy(got) - model(x)).abs().max())
    if diff > 1e-3:
        raise AmcError(f"ONNX Runtime outputs differ from torch by {diff:.2e}")
    return f"exported; ONNX Runtime matches torch (max |diff| {diff:.1e})"


def apply_policy(args: argparse.Namespace) -> int:
    policy = Policy.load(args.policy)
    if not args.model:
        args.model = policy.model["name"]
    if not args.input_shape:
        args.input_shape = policy.input_shape
    model, spec, _ = open_from_args(args)
    graph = PruningGraph(model, spec.input_shape, policy.model.get("exclude", ()))
    counts = policy.counts(graph)
    settings_saved = policy.metrics.get("prune_settings", {})
    criterion = args.criterion or settings_saved.get("criterion", "l1")
    data = None
    if args.dataset:
        data = load_splits(data_config(args, spec.num_classes), ("train", "test"))
    calibration = None
    if data is not None:
        gen = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(data["train"]), generator=gen)[:1000]
        calibration = data_config(args).normalization(data["train"].images[pick])
    settings = PruneSettings(criterion=criterion, reconstruct=calibration is not None and not args.no_reconstruct,
                             bn_batches=args.bn_batches if calibration is not None else 0)
    pruner = ChannelPruner(model, graph, settings, calibration)
    by_name = {g.name: g for g in graph.groups}
    kept = {by_name[d.name].space: torch.tensor(d.kept_indices) for d in policy.groups
            if d.kept_indices is not None and d.kept_channels < d.channels}
    started = time.perf_counter()
    result = pruner.prune(counts, kept or None)
    compact = result.model
    dense_m, compact_m = measure(model, spec.input_shape), measure(compact, spec.input_shape)
    if compact_m["flops"] != flops_of(graph, counts):
        raise AmcError(f"internal error: compact model has {compact_m['flops']} FLOPs, accounting says "
                       f"{flops_of(graph, counts)}")
    rows = [{"model": "dense", "flops": dense_m["flops"], "params": dense_m["params"]},
            {"model": "compact", "flops": compact_m["flops"], "params": compact_m["params"]}]
    if data is not None:
        norm = data_config(args).normalization
        test_x, test_y = norm(data["test"].images).to(args.device), data["test"].labels.to(args.device)
        rows[0]["test_top1"] = evaluate(model.to(args.device), test_x, test_y)["top1"]
        rows[1]["test_top1"] = evaluate(compact.to(args.device), test_x, test_y)["top1"]
        if args.finetune_epochs > 0:
            from .training import TrainConfig, train  # noqa: PLC0415

            out_dir = Path(args.out).with_suffix("").as_posix() + "_finetune"
            cfg = TrainConfig(args.finetune_epochs, args.lr, 5e-4, 0.9, args.batch_size, True, 0)
            train(compact, spec, data["train"], data["test"], norm, cfg, out_dir, device=args.device)
            rows.append({"model": "compact+finetune", "flops": compact_m["flops"], "params": compact_m["params"],
                         "test_top1": evaluate(compact, test_x, test_y)["top1"]})
    elif args.finetune_epochs > 0:
        raise AmcError("--finetune-epochs needs data (--dataset and --data-dir)")
    for r in rows:
        r["flops_ratio"] = f"{r['flops'] / dense_m['flops']:.4f}"
        r["params_ratio"] = f"{r['params'] / dense_m['params']:.4f}"
        if "test_top1" in r:
            r["test_top1"] = f"{r['test_top1']:.4f}"
    print_table(rows, ["model", "flops", "params", "flops_ratio", "params_ratio", "test_top1"])
    save_model(args.out, compact.cpu(), spec, policy=policy.to_dict(),
               apply_report={"rows": rows, "seconds": time.perf_counter() - started, "command": " ".join(sys.argv)})
    print(f"compact model: {args.out} (load with amc.models.open_model(None, '{args.out}'))")
    if args.onnx:
        print(f"ONNX {args.onnx}: {export_onnx(compact.cpu().eval(), spec.input_shape, args.onnx)}")
    print(json.dumps({"timings": {k: round(v, 3) for k, v in result.timings.items()}}))
    return 0
