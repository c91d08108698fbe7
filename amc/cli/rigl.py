"""``amc rigl``: sparse training at a fixed sparsity -- RigL, SET or static masks with ERK layer sparsities (resumable)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..config import ModelConfig, replace, to_dict
from ..data import normalization
from ..errors import AmcError
from ..io import save_model
from ..rigl import INITIAL_MASKS, METHODS, SparseConfig, check_config, sparse_train
from ..unstructured import prunable_layers
from .args import section
from .common import (add_training_run_flags, check_device, checkpoint_or_fresh, training_run_configs, write_run_file,
                     splits_for)

D = SparseConfig()
RUN_FILE = "run.yaml"
OWN_FLAGS = ("method", "sparsity", "keep_dense", "initial_mask", "update_every", "drop_fraction", "end_fraction")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "rigl", help="sparse training at a fixed sparsity: RigL (drop small weights, grow by gradient), SET, static",
        description="Sparse training (Evci et al. 2020) from random weights (seeded with --seed) or a pretrained dense "
        "--checkpoint. Units: sparsity = fraction of the prunable conv/linear weights REMOVED, spread over the layers "
        "by Erdős–Rényi-Kernel (ERK) and kept exactly through training (0 = dense training in the same loop); steps "
        "= optimizer steps (batches of --batch-size). Every --update-every steps until --end-fraction of all steps, "
        "each layer replaces f(t) = A (1 + cos(pi t / T_end)) / 2 of its active weights (A = --drop-fraction): the "
        "smallest by magnitude are dropped and as many positions are grown where the dense gradient is largest "
        "(rigl) or at random (set), starting at zero; static keeps the initial masks. Writes OUT/metrics.csv (per "
        "epoch: sparsity, test top-1), OUT/updates.csv (per mask update), OUT/model.pt (with its masks) and OUT/last.pt "
        "(continue with --resume).")
    add_training_run_flags(p)
    g = p.add_argument_group("sparse training options")
    g.add_argument("--method", choices=METHODS, help=f"how masks change (default {D.method})")
    g.add_argument("--sparsity", type=float, help=f"fraction of the prunable weights removed, in [0, 1) (default "
                   f"{D.sparsity}; 0 = dense)")
    g.add_argument("--keep-dense", nargs="*", metavar="PATTERN", help="glob patterns of conv/linear layers left dense "
                   "and not counted in the sparsity (e.g. conv1 linear)")
    g.add_argument("--initial-mask", choices=INITIAL_MASKS, help="random positions, or the largest weights "
                   "(default: magnitude with --checkpoint, random without)")
    g.add_argument("--update-every", type=int, help=f"optimizer steps between mask updates, ΔT (default {D.update_every})")
    g.add_argument("--drop-fraction", type=float, help="fraction of each layer's active weights replaced at the first "
                   f"update, decayed by a cosine, in [0, 1] (default {D.drop_fraction})")
    g.add_argument("--end-fraction", type=float, help="no mask updates from this fraction of all training steps on, "
                   f"in [0, 1] (default {D.end_fraction})")
    p.add_argument("--out", default="results/rigl", help="output folder (default results/rigl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch (only "
                   "--device and --threads may be given with it)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace, model_cfg: ModelConfig) -> SparseConfig:
    train = section(args, "train")
    if args.seed is not None:
        train = replace(train, seed=args.seed)
    initial = args.initial_mask or ("magnitude" if model_cfg.checkpoint else "random")
    return replace(D, method=args.method, sparsity=args.sparsity, initial_mask=initial,
                   keep_dense=tuple(args.keep_dense) if args.keep_dense is not None else None,
                   update_every=args.update_every, drop_fraction=args.drop_fraction, end_fraction=args.end_fraction,
                   seed=args.seed, train=train)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model_cfg, data_cfg, cfg, _ = training_run_configs(args, out, RUN_FILE, "sparse", SparseConfig, OWN_FLAGS, _config)
    check_config(cfg)
    device = check_device(args.device)
    torch.manual_seed(cfg.seed)
    model, spec, _ = checkpoint_or_fresh(args, model_cfg, data_cfg)
    if any(hasattr(m, "weight_orig") for m in model.modules()):
        raise AmcError("the model has torch.nn.utils.prune masks; fold them first (amc.prune.fold_masks)")
    prunable_layers(model, cfg.keep_dense)  # a --keep-dense typo fails here, before any data is read
    data = splits_for(data_cfg, spec, ("train", "test"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume:
        out.mkdir(parents=True, exist_ok=True)
        write_run_file(out / RUN_FILE, model_cfg, data_cfg, "sparse", cfg)
    started = time.perf_counter()
    result = sparse_train(model, data["train"], normalization(data_cfg), cfg, out, test_set=data["test"],
                          resume=args.resume, device=device, log=None if args.quiet else print,
                          bar=not args.quiet and sys.stderr.isatty())
    save_model(out / "model.pt", model.cpu(), spec, masks=result.masks, sparse_config=to_dict(cfg),
               layer_sparsities=result.sparsities, history=result.history.to_dict("records"))
    last = result.history.iloc[-1]
    print(f"{cfg.method} at sparsity {last['sparsity']:.4f} ({len(result.updates)} mask updates), {cfg.train.epochs} "
          f"epochs in {time.perf_counter() - started:.0f} s; test top-1 {last['test_top1']:.4f}")
    print(f"checkpoint: {out / 'model.pt'}  metrics: {out / 'metrics.csv'}  updates: {out / 'updates.csv'}")
    return 0
