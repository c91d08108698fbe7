"""``amc sensitivity``: score each channel group (or layer) pruned alone on the search split; CSV, PNG and,
with ``--target`` and ``--tolerance``, an allocated policy."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..calibration import CalibrationSet
from ..config import replace, validate
from ..data import normalization
from ..errors import AmcError
from ..evaluation import evaluate
from ..io import atomic_write_text
from ..sensitivity import allocate, plot_sensitivity, sensitivity
from .args import add_flags, add_model_arg, command_line, section
from .common import check_device, check_output, normalized, open_from_args, splits_for

DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sensitivity", help="score each channel group or layer pruned alone (search split); optional policy",
        description="Prunes one channel group (--granularity channel: level = fraction of its channels REMOVED, "
        "preserve ratio = 1 - level, criterion scores, no reconstruction) or one conv/linear layer (--granularity "
        "weight: level = sparsity = fraction of its weights REMOVED, by magnitude) at a time and measures top-1 on "
        "the SEARCH split (part of the training holdout; never the test set). Writes sensitivity.csv (one row per "
        "name and level) and sensitivity.png to --out; with --target T (fraction of the dense MACs (or --cost "
        "params) kept for channels, of the parameters for weights) and --tolerance X (largest top-1 drop, a "
        "fraction, of one name pruned alone) also policy.json, for amc apply (channel) or amc prune (weight).")
    add_model_arg(p)
    p.add_argument("--granularity", choices=("channel", "weight"), default="channel",
                   help="channel groups (physical removal) or layer weights (magnitude masks) (default channel)")
    p.add_argument("--levels", type=float, nargs="+", default=list(DEFAULT_LEVELS),
                   help="fractions removed in [0, 1): of a group's channels or of a layer's weights "
                   "(default 0.1 ... 0.9)")
    p.add_argument("--tolerance", type=float, help="largest acceptable top-1 drop (fraction, e.g. 0.02) per name")
    p.add_argument("--max-level", type=float, help="largest level the policy may give any name (default: the "
                   "largest of --levels)")
    p.add_argument("--keep-dense", nargs="*", default=[], metavar="PATTERN",
                   help="glob patterns of conv/linear layers not analysed and left dense (weight granularity)")
    add_flags(p, "model", "data", "calibration", "prune", skip=("--granularity",))
    add_flags(p, "env", skip=("--mode", "--rbound", "--metric", "--reward-scale", "--lbound", "--round-to", "--evaluator"))
    p.add_argument("--random-init", action="store_true", help="allow analysing a model without trained weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output folder (sensitivity.csv, sensitivity.png, policy.json)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model_cfg = validate(section(args, "model"), "model")
    data = validate(section(args, "data"), "data")
    prune = validate(section(args, "prune"), "prune")
    calib_cfg = validate(section(args, "calibration"), "calibration")
    env = validate(section(args, "env"), "env")
    if env.cost == "latency":
        raise AmcError("--cost latency (a table measured on this machine) is for amc search, amc sweep and amc "
                       "uniform; amc sensitivity budgets macs or params")
    if (args.target is None) != (args.tolerance is None):
        raise AmcError("an allocated policy needs both --target and --tolerance")
    if args.tolerance is not None and not args.tolerance >= 0:
        raise AmcError(f"--tolerance {args.tolerance}: expected a top-1 drop >= 0")
    if args.granularity == "weight" and args.cost not in (None, "params"):
        raise AmcError("weight policies are budgeted in parameters; --cost does not apply")
    if args.granularity == "channel" and args.keep_dense:
        raise AmcError("--keep-dense applies to --granularity weight; use --exclude for channel groups")
    out = Path(args.out)
    check_output(out, inputs=(model_cfg.checkpoint,), overwrite=args.overwrite, folder=True)
    device = check_device(args.device)
    if not model_cfg.checkpoint and not args.random_init:
        raise AmcError("no --checkpoint: the model would have random weights (add --random-init if that is intended)")
    model, spec, _ = open_from_args(args, model_cfg)
    model.to(device)
    search = splits_for(data, spec, ("search",))["search"]
    x, y = normalized(data, search, device)

    def score(m) -> float:
        return evaluate(m, x, y)["top1"]

    calibration = None
    if args.granularity == "channel" and prune.criterion in ("apoz", "mean_activation", "taylor"):
        train = splits_for(data, spec, ("train",))["train"]
        calibration = CalibrationSet.draw(train, normalization(data), calib_cfg, device)
    curves = sensitivity(model, spec.input_shape, score, args.levels, args.granularity, criterion=prune.criterion,
                         calibration=calibration, exclude=model_cfg.exclude, keep_dense=args.keep_dense)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(curves.to_csv(index=False), out / "sensitivity.csv")
    plot_sensitivity(curves, out / "sensitivity.png", title=f"{spec.name} {args.granularity} sensitivity "
                     f"(search-split top-1)")
    print(f"dense search-split top-1 {curves['baseline_score'].iloc[0]:.4f}; {curves['name'].nunique()} "
          f"{'groups' if args.granularity == 'channel' else 'layers'} x {len(set(args.levels))} levels: "
          f"{out / 'sensitivity.csv'}, {out / 'sensitivity.png'}")
    if args.target is not None:
        policy = allocate(curves, args.target, args.tolerance, model=model, example_input=spec.input_shape,
                          cost=(env.cost if args.granularity == "channel" else None), exclude=model_cfg.exclude,
                          keep_dense=args.keep_dense, max_level=args.max_level, model_spec=spec.to_dict(),
                          prune=replace(prune, granularity="channel"))
        policy.calibration, policy.data = calib_cfg, data
        policy.provenance["command"] = command_line()
        policy.save(out / "policy.json")
        name = policy.cost["name"]
        print(f"policy: {out / 'policy.json'} keeps {policy.metrics[f'{name}_ratio']:.4f} of the {name}; "
              f"multiplier {policy.metrics['multiplier']:.3f} "
              f"({'within' if policy.metrics['tolerance_respected'] else 'beyond'} the tolerance)")
    return 0
