"""Coverage of the dependency-graph engine on torchvision's classification architectures.

    python benchmarks/coverage.py [--models resnet18 convnext_tiny ...] [--size 224] [--target 0.5]
                                  [--no-torch-pruning] [--out results/benchmarks/coverage/torchvision.json]

For each architecture (random weights, one image of 3 x size x size): channel groups prunable / total,
the MACs and parameters a uniform policy at ``target`` of the dense MACs keeps (``amc.uniform_policy`` then
``amc.apply_policy`` without recovery), whether the compact model's output shape equals the dense one and
whether ``FlopCounterMode`` / 2 equals amc's MACs accounting, dense and compact. When Torch-Pruning is
installed the same figures are measured for it (magnitude pruner, uniform ratio bisected to the same
MACs target, classifier ignored). Writes a JSON record (figures, command, versions, machine) and prints
a table. Needs torchvision; exits with a message (status 2) when it is missing.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import amc
from amc.config import PruneConfig
from amc.cost import macs, params
from amc.io import atomic_write_text
from amc.provenance import provenance

ARCHITECTURES = {  # name -> torchvision builder keyword arguments (random weights)
    "resnet18": {}, "resnet50": {}, "mobilenet_v2": {}, "mobilenet_v3_small": {}, "mobilenet_v3_large": {},
    "efficientnet_b0": {}, "densenet121": {}, "shufflenet_v2_x1_0": {}, "squeezenet1_0": {},
    "regnet_y_400mf": {}, "convnext_tiny": {}, "vgg11_bn": {}, "googlenet": {"aux_logits": False, "init_weights": True},
}
NO_RECOVERY = PruneConfig(reconstruct=False, bn_batches=0)


def flop_macs(model: nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode's total / 2 for one example."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2


def amc_figures(model: nn.Module, x: torch.Tensor, target: float) -> dict:
    """Groups, kept MACs/params of a uniform policy and the accounting checks for amc."""
    graph = amc.trace(model, tuple(x.shape[1:]))
    out = {"groups_prunable": len(graph.prunable), "groups_total": len(graph.groups),
           "dense_macs": amc.cost.MacsCost().cost(graph), "dense_params": amc.cost.ParamsCost().cost(graph)}
    out["dense_flop_counter_equal"] = flop_macs(model, x) == out["dense_macs"]
    reasons: dict[str, int] = {}
    for g in graph.groups:
        if g.reason:
            key = g.reason.split("'")[0].strip() or g.reason
            reasons[key] = reasons.get(key, 0) + 1
    out["pinned_reasons"] = reasons
    policy = amc.uniform_policy(model, x, target, graph=graph)
    small = amc.apply_policy(model, policy, prune=NO_RECOVERY, graph=graph).model.eval()
    with torch.no_grad():
        out["output_shape_equal"] = tuple(small(x).shape) == tuple(model(x).shape)
    keep = policy.keep(graph)
    out["compact_macs"], out["compact_params"] = macs(small, x), params(small)
    out["compact_flop_counter_equal"] = flop_macs(small, x) == amc.cost.MacsCost().cost(graph, keep) == out["compact_macs"]
    out["macs_kept"] = out["compact_macs"] / out["dense_macs"]
    out["params_kept"] = out["compact_params"] / out["dense_params"]
    return out


def torch_pruning_figures(model: nn.Module, x: torch.Tensor, target: float, classifier: nn.Module | None) -> dict:
    """The same figures from Torch-Pruning's magnitude pruner at a uniform ratio bisected to ``target`` MACs."""
    import torch_pruning as tp

    ignored = [classifier] if classifier is not None else []
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]))
    dense_macs = flop_macs(model, x)

    def prune(ratio: float) -> nn.Module:
        m = copy.deepcopy(model)
        ignore = [dict(m.named_modules())[n] for n, mod in model.named_modules() if any(mod is i for i in ignored)]
        kwargs = dict(importance=tp.importance.MagnitudeImportance(p=1), ignored_layers=ignore)
        try:
            pruner = tp.pruner.MagnitudePruner(m, x, pruning_ratio=ratio, **kwargs)
        except TypeError:  # Torch-Pruning < 1.3 calls it ch_sparsity
            pruner = tp.pruner.MagnitudePruner(m, x, ch_sparsity=ratio, **kwargs)
        pruner.step()
        return m.eval()

    lo, hi, best = 0.0, 0.95, None
    for _ in range(8):
        mid = (lo + hi) / 2
        small = prune(mid)
        if flop_macs(small, x) <= target * dense_macs:
            hi, best = mid, small
        else:
            lo = mid
    small = best if best is not None else prune(hi)
    with torch.no_grad():
        same = tuple(small(x).shape) == tuple(model(x).shape)
    return {"groups_prunable": len(groups), "pruning_ratio": hi, "macs_kept": flop_macs(small, x) / dense_macs,
            "params_kept": params(small) / params(model), "output_shape_equal": same}


def classifier_of(model: nn.Module) -> nn.Module | None:
    """The last Linear (or last conv, SqueezeNet) module: the layer Torch-Pruning must not prune."""
    last = None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = m
    return last


def run(name: str, kwargs: dict, size: int, target: float, with_tp: bool) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    row: dict = {"model": name}
    start = time.perf_counter()
    try:
        row["amc"] = amc_figures(model, x, target)
    except Exception as exc:  # a crash is a finding: record it and go on
        row["amc"] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=3)}
    row["amc_seconds"] = time.perf_counter() - start
    if with_tp:
        start = time.perf_counter()
        try:
            row["torch_pruning"] = torch_pruning_figures(model, x, target, classifier_of(model))
        except Exception as exc:
            row["torch_pruning"] = {"error": f"{type(exc).__name__}: {exc}"}
        row["torch_pruning_seconds"] = time.perf_counter() - start
    return row


def table(rows: list[dict]) -> str:
    head = f"{'model':20s} {'groups':>9s} {'MACs kept':>9s} {'params kept':>11s} {'shape':>5s} {'flops=':>6s} | " \
           f"{'TP groups':>9s} {'TP MACs':>8s} {'TP params':>9s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        a, t = r["amc"], r.get("torch_pruning", {})
        if "error" in a:
            left = f"{'error: ' + a['error'][:50]:>45s}"
        else:
            left = (f"{a['groups_prunable']:>4d}/{a['groups_total']:<4d} {a['macs_kept']:>9.3f} {a['params_kept']:>11.3f} "
                    f"{'ok' if a['output_shape_equal'] else 'NO':>5s} "
                    f"{'ok' if a['dense_flop_counter_equal'] and a['compact_flop_counter_equal'] else 'NO':>6s}")
        if not t:
            right = "(not run)"
        elif "error" in t:
            right = "error: " + t["error"][:40]
        else:
            right = f"{t['groups_prunable']:>9d} {t['macs_kept']:>8.3f} {t['params_kept']:>9.3f}"
        lines.append(f"{r['model']:20s} {left} | {right}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--target", type=float, default=0.5, help="fraction of the dense MACs to keep")
    ap.add_argument("--no-torch-pruning", action="store_true", help="skip Torch-Pruning even if installed")
    ap.add_argument("--out", default="results/benchmarks/coverage/torchvision.json")
    args = ap.parse_args(argv)
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        print(f"coverage.py: torchvision is needed for the architectures and does not import here "
              f"({type(exc).__name__}: {exc}); install a torchvision matching torch {torch.__version__}",
              file=sys.stderr)
        return 2
    try:
        import torch_pruning  # noqa: F401
        with_tp = not args.no_torch_pruning
    except Exception:
        with_tp = False
    rows = []
    for name in args.models:
        rows.append(run(name, ARCHITECTURES[name], args.size, args.target, with_tp))
        print(f"{name}: done in {rows[-1]['amc_seconds']:.1f} s", file=sys.stderr)
    import torchvision
    versions = {"torchvision": torchvision.__version__,
                "torch_pruning": __import__("torch_pruning").__version__ if with_tp else None}
    command = " ".join([Path(sys.executable).name, *sys.argv])
    record = {"benchmark": "coverage", "input_shape": [3, args.size, args.size], "macs_target": args.target,
              "torch_pruning": with_tp, "results": rows, "provenance": {**provenance(command=command), **versions}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(record, indent=2, default=str) + "\n", out)
    print(table(rows))
    print(f"record: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
