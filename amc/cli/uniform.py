"""``amc uniform``: write the uniform-ratio policy that meets a cost target."""
from __future__ import annotations

import argparse

import torch

from ..api import uniform_policy
from ..latency import LatencyCost, LatencyTable
from ..structure import trace
from ..config import validate
from ..errors import AmcError
from .args import add_flags, add_model_arg, command_line, section
from .common import check_output, open_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("uniform", help="write the uniform-ratio policy that meets a MACs or params target")
    add_model_arg(p)
    add_flags(p, "model", "prune", "calibration", "data", skip=("--granularity",))
    add_flags(p, "env", skip=("--mode", "--rbound", "--metric", "--reward-scale", "--evaluator"), required=("--target",))
    p.add_argument("--out", required=True, help="policy JSON to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--threads", type=int, help="torch CPU threads for --cost latency (default: torch's): a latency "
                   "table is measured and cached per thread count, so give a search's --threads to share its table")
    p.add_argument("--cache-dir", default="~/.cache/amc", help="where --cost latency keeps its measured per-layer "
                   "table (default ~/.cache/amc; 'none': measure afresh)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model_cfg, env = section(args, "model"), section(args, "env")
    for name in ("env", "prune", "calibration", "data"):
        validate(section(args, name), name)
    check_output(args.out, inputs=(model_cfg.checkpoint,), overwrite=args.overwrite)
    if args.threads is not None:
        if args.threads < 1:
            raise AmcError(f"--threads must be a whole number >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    model, spec, _ = open_from_args(args, model_cfg)
    graph = trace(model, spec.input_shape, model_cfg.exclude)
    cache = None if args.cache_dir == "none" else args.cache_dir
    cost = LatencyCost(LatencyTable.for_graph(graph, cache_dir=cache, model=model)) if env.cost == "latency" else env.cost
    policy = uniform_policy(model, spec.input_shape, env.target, cost, round_to=env.round_to, lbound=env.lbound,
                            exclude=model_cfg.exclude, prune=section(args, "prune"), model_spec=spec.to_dict(),
                            graph=graph)
    policy.calibration = section(args, "calibration")
    policy.data = section(args, "data") if args.dataset else None
    policy.provenance["command"] = command_line()
    policy.save(args.out)
    name = policy.cost["name"]
    print(f"uniform preserve ratio {policy.metrics['uniform_ratio']:.4f} keeps {policy.metrics[f'{name}_ratio']:.4f} "
          f"of the {name}; policy: {args.out}")
    return 0
