"""``amc train``: train a model from scratch or fine-tune a checkpoint (resumable)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

from ..config import DataConfig, ModelConfig, TrainConfig, from_dict, replace, to_dict, validate
from ..errors import AmcError
from ..io import atomic_write_text
from ..models import build_model
from ..training import train
from .args import DISTILL_FLAGS, add_flags, add_model_arg, section
from .common import check_device, check_output, fresh_spec, open_from_args, splits_for


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from scratch or fine-tune a checkpoint")
    add_model_arg(p)
    add_flags(p, "model", "data", "train", "run", skip=("--exclude", "--episodes", "--top-k", "--workers", *DISTILL_FLAGS))
    p.add_argument("--out", default="results/train", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    saved = out / "train_config.yaml"
    if args.resume:
        if not saved.is_file():
            raise AmcError(f"nothing to resume in {out} (no train_config.yaml)")
        stored = yaml.safe_load(saved.read_text())
        model_cfg = from_dict(ModelConfig, stored["model"], str(saved))
        data_cfg = from_dict(DataConfig, stored["data"], str(saved))
        cfg = from_dict(TrainConfig, stored["train"], str(saved))
    else:
        model_cfg, data_cfg = section(args, "model"), section(args, "data")
        cfg = replace(section(args, "train"), seed=args.seed)
        check_output(out, inputs=(model_cfg.checkpoint,), overwrite=args.overwrite, folder=True)
    for c in (model_cfg, data_cfg, cfg):
        validate(c)
    device = check_device(args.device)
    if model_cfg.checkpoint:
        model, spec, _ = open_from_args(args, model_cfg)
    else:
        if not model_cfg.name:
            raise AmcError("give a model name to train from scratch, or --checkpoint to fine-tune")
        spec = fresh_spec(model_cfg, data_cfg)
        model = build_model(spec)
    data = splits_for(data_cfg, spec, ("train", "test"))
    if not args.resume:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump({"model": to_dict(model_cfg), "data": to_dict(data_cfg), "train": to_dict(cfg)},
                                         sort_keys=False), saved)
    torch.manual_seed(cfg.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    from ..data import normalization  # noqa: PLC0415
    history = train(model, spec, data["train"], data["test"], normalization(data_cfg), cfg, out, resume=args.resume,
                    device=device, log=None if args.quiet else print,
                    bar=not args.quiet and sys.stderr.isatty())
    last = history.iloc[-1]
    print(f"trained {spec.name} for {cfg.epochs} epochs in {time.perf_counter() - started:.0f} s; "
          f"test top-1 {last.get('val_top1', float('nan')):.4f}")
    print(f"checkpoint: {out / 'model.pt'}  metrics: {out / 'metrics.csv'}")
    return 0
