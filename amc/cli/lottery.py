"""``amc lottery``: lottery tickets -- iterative magnitude pruning with rewinding, and its controls (resumable)."""
from __future__ import annotations

import argparse
import copy
import shutil
from pathlib import Path

import torch
import yaml

from ..config import replace, to_dict
from ..data import normalization
from ..io import atomic_write_text, read_checkpoint, save_model
from ..lottery import CONTROLS, LotteryConfig, check_config, check_run, lottery_ticket
from ..models import build_model
from ..unstructured import SCOPES, prunable_layers
from .args import print_table, section
from .common import (add_training_run_flags, check_device, checkpoint_or_fresh, training_run_configs, write_run_file,
                     splits_for)

D = LotteryConfig()
RUN_FILE = "run.yaml"
OWN_FLAGS = ("prune_fraction", "scope", "keep_dense", "rewind_step", "controls")  # fixed once a run started


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lottery", help="lottery tickets: train, prune, rewind the survivors, train again (and controls)",
        description="Iterative magnitude pruning (Frankle & Carbin 2019; rewinding: Frankle et al. 2020). Round 0 "
        "trains the model (random weights seeded with --seed, or --checkpoint); each of --rounds rounds then removes "
        "--prune-fraction of the remaining conv/linear weights by magnitude, resets the survivors to their values at "
        "optimizer step --rewind-step of round 0 (0 = initialisation), the pruned ones to zero, and trains again "
        "(--epochs epochs, fresh optimizer, full cosine schedule). Units: sparsity = fraction of the prunable weights "
        "REMOVED (after round r: 1 - (1 - P)^r); steps = optimizer steps (batches of --batch-size). Controls at every "
        "round's sparsity: reinit (the ticket's mask, fresh random initialisation) and random_mask (a random mask "
        "with the same per-layer counts, the ticket's rewound values). Writes OUT/rounds.csv (one row per round and "
        "variant: sparsity, test top-1, ...), per training OUT/round<r>/<variant>/metrics.csv, and OUT/model.pt "
        "(the last ticket). A killed run continues with --resume (--rounds may be raised then).")
    add_training_run_flags(p)
    g = p.add_argument_group("lottery options")
    g.add_argument("--rounds", type=int, help=f"pruning rounds after the dense round 0 (default {D.rounds})")
    g.add_argument("--prune-fraction", type=float, help="fraction of the REMAINING prunable weights removed per "
                   f"round, in (0, 1) (default {D.prune_fraction})")
    g.add_argument("--scope", choices=SCOPES, help="global: one magnitude threshold over all prunable layers; layer: "
                   f"the fraction in every layer (default {D.scope})")
    g.add_argument("--keep-dense", nargs="*", metavar="PATTERN", help="glob patterns of conv/linear layers never "
                   "pruned and not counted in the sparsity (e.g. conv1 linear)")
    g.add_argument("--rewind-step", type=int, help="optimizer step of round 0 whose values the survivors are reset "
                   f"to; 0 = the initialisation (default {D.rewind_step})")
    g.add_argument("--controls", nargs="*", choices=CONTROLS, help="controls trained at every round's sparsity "
                   "(default none)")
    p.add_argument("--out", default="results/lottery", help="output folder (default results/lottery)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (only --rounds, --device and "
                   "--threads may be given with it)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=run)


def _lottery_config(args: argparse.Namespace) -> LotteryConfig:
    train = section(args, "train")
    if args.seed is not None:
        train = replace(train, seed=args.seed)
    return replace(D, rounds=args.rounds, prune_fraction=args.prune_fraction, scope=args.scope,
                   keep_dense=tuple(args.keep_dense) if args.keep_dense is not None else None,
                   rewind_step=args.rewind_step, controls=tuple(args.controls) if args.controls is not None else None,
                   seed=args.seed, train=train)


def _clear(out: Path) -> None:
    """Remove what an earlier lottery run wrote in ``out`` (for --overwrite); other files stay."""
    for name in ("lottery.json", "rewind.pt", "rounds.csv", "model.pt", RUN_FILE):
        (out / name).unlink(missing_ok=True)
    for folder in out.glob("round*"):
        if folder.is_dir() and folder.name[5:].isdigit():
            shutil.rmtree(folder)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    saved = out / RUN_FILE
    model_cfg, data_cfg, cfg, stored = training_run_configs(args, out, RUN_FILE, "lottery", LotteryConfig, OWN_FLAGS,
                                                            lambda a, _: _lottery_config(a), resumable=("--rounds",))
    if args.resume:
        cfg = replace(cfg, rounds=args.rounds)  # more rounds may be asked of a stored run
    check_config(cfg)
    device = check_device(args.device)
    torch.manual_seed(cfg.seed)
    model, spec, extras = checkpoint_or_fresh(args, model_cfg, data_cfg)
    # the reinit control's fresh initialisation: PyTorch's default one of the architecture (None for a compact
    # channel-pruned checkpoint, whose shapes the registry does not build)
    fresh = None if extras.get("channel_manifest") else (lambda: build_model(spec))
    prunable_layers(model, cfg.keep_dense)  # a --keep-dense typo fails here, before any data is read
    data = splits_for(data_cfg, spec, ("train", "search", "test"))
    check_run(model, data["train"], cfg)  # before any file is written
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume:
        if args.overwrite and out.is_dir():
            _clear(out)
        out.mkdir(parents=True, exist_ok=True)
        write_run_file(saved, model_cfg, data_cfg, "lottery", cfg)
    elif args.rounds is not None:
        stored["lottery"]["rounds"] = cfg.rounds
        atomic_write_text(yaml.safe_dump(stored, sort_keys=False), saved)
    quiet = args.quiet

    def log(line: str) -> None:
        if not quiet or "epoch" not in line:
            print(line, flush=True)

    table = lottery_ticket(model, data["train"], normalization(data_cfg), cfg, out, test_set=data["test"],
                           val_set=data["search"], fresh_init=fresh, resume=args.resume,
                           device=device, log=log)
    last = table[table.variant == "ticket"].iloc[-1]
    weights = read_checkpoint(out / f"round{int(last['round'])}" / "ticket" / "weights.pt")
    final = copy.deepcopy(model).cpu()
    final.load_state_dict(weights["state_dict"])
    save_model(out / "model.pt", final, spec, masks=weights["masks"], lottery=to_dict(cfg),
               round=int(last["round"]), sparsity=float(last["sparsity"]))
    rows = [{"round": int(r["round"]), "variant": r["variant"], "sparsity": f"{r['sparsity']:.4f}",
             "test_top1": f"{r['test_top1']:.4f}"} for _, r in table.iterrows()]
    print_table(rows, ["round", "variant", "sparsity", "test_top1"])
    print(f"table: {out / 'rounds.csv'}  last ticket: {out / 'model.pt'}")
    return 0
