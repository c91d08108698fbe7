"""``amc inspect``: the channel groups of a model, what is prunable and why not, and what each costs."""
from __future__ import annotations

import argparse
import json

from ..cost import Budget, MacsCost, ParamsCost
from ..structure import trace
from .args import add_flags, add_model_arg, print_table, section
from .common import open_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="table of channel groups: what can be pruned, and what it costs")
    add_model_arg(p)
    add_flags(p, "model")
    p.add_argument("--lbound", type=float, default=0.2, help="smallest preserve ratio (fraction of channels kept)")
    p.add_argument("--round-to", type=int, default=1, help="kept channel counts are multiples of this")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model_cfg = section(args, "model")
    model, spec, _ = open_from_args(args, model_cfg)
    graph = trace(model, spec.input_shape, model_cfg.exclude)
    macs, params = MacsCost(), ParamsCost()
    dense_m, dense_p = macs.cost(graph), params.cost(graph)
    rows = [{"#": g.index, "group": g.name, "channels": g.channels,
             "macs": int(dense_m - macs.cost(graph, {g.name: 0})), "params": int(dense_p - params.cost(graph, {g.name: 0})),
             "coupling": f"{len(g.producers)}p/{len(g.followers)}f/{len(g.consumers)}c",
             "status": (f"prunable, {g.blocks} equal blocks" if g.blocks > 1 else "prunable")
             if g.prunable else f"fixed: {g.reason}"} for g in graph.groups]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{spec.name}: input {tuple(spec.input_shape)}, {dense_m / 1e6:.2f} M MACs, {dense_p / 1e6:.4f} M params")
    print(f"MACs: {macs.definition}")
    print("macs/params: the part of the model's total that scales with the group's channels; "
          "coupling: producers/followers/consumers")
    print_table(rows, ["#", "group", "channels", "macs", "params", "coupling", "status"])
    if not graph.prunable:
        print("no prunable group")
        return 0
    floor = Budget(graph, macs, 1.0, round_to=args.round_to, lbound=args.lbound)
    low = floor.lowest
    print(f"{len(graph.prunable)} of {len(graph.groups)} groups prunable; at preserve ratio {args.lbound} "
          f"(round_to {args.round_to}) the model keeps {floor.floor:.3f} of its MACs and "
          f"{params.cost(graph, low) / dense_p:.3f} of its params (largest reachable reduction)")
    return 0
