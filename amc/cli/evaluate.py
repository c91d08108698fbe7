"""``amc evaluate``: accuracy and cost of a model on one split."""
from __future__ import annotations

import argparse
import json

import torch

from ..cost import macs, params
from ..evaluation import evaluate
from .args import add_flags, add_model_arg, print_table, section
from ..config import validate
from .common import check_device, normalized, open_from_args, splits_for


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy, loss, MACs and params on a split")
    add_model_arg(p)
    add_flags(p, "model", "data", skip=("--exclude",))
    p.add_argument("--split", default="test", choices=["train", "holdout", "search", "holdout_rest", "test"],
                   help="holdout_rest: the held-out images after the search split (default test)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = validate(section(args, "data"))
    device = check_device(args.device)
    model, spec, _ = open_from_args(args)
    split = splits_for(data, spec, (args.split,))[args.split]
    model.to(device)
    metrics = evaluate(model, *normalized(data, split, device))
    x = torch.zeros(1, *spec.input_shape)
    result = {"model": spec.name, "split": args.split, **metrics, "macs": macs(model, x), "params": params(model)}
    if args.json:
        print(json.dumps(result))
    else:
        print_table([{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in result.items()}], list(result))
    return 0
