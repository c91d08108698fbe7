"""``amc apply``: turn a policy file into a saved, pruned (and optionally fine-tuned) model."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path



from ..apply import apply_policy, calibration_for
from ..config import replace, validate
from ..data import normalization
from ..errors import AmcError
from ..evaluation import evaluate
from ..io import export_onnx, export_torchscript, save_model
from ..policy import Policy
from ..prune import needs_calibration
from .args import add_flags, add_model_arg, command_line, print_table, section
from .common import check_device, check_output, finetune_config, normalized, open_from_args, splits_for


def add_parser(sub) -> None:
    p = sub.add_parser("apply", help="apply a policy file: build, recover, fine-tune and save the pruned model",
                       description="Rebuilds the model the policy was scored with: its kept channels, its recorded "
                       "recovery settings and calibration images (redrawn from its recorded data split, or from "
                       "--dataset/--data-dir). Prune flags override the recorded settings (the model then differs "
                       "from the scored one).")
    p.add_argument("policy", help="policy JSON written by amc search or amc uniform")
    add_model_arg(p)
    add_flags(p, "model", "data", "prune", skip=("--exclude", "--granularity"))
    add_flags(p, "train", skip=("--augment", "--epochs"))
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the pruned model for this many epochs")
    p.add_argument("--no-recovery", action="store_true", help="no reconstruction and no BatchNorm recalibration "
                   "(needs no data; not the model the search scored)")
    p.add_argument("--random-init", action="store_true", help="allow pruning a model without trained weights")
    p.add_argument("--force", action="store_true", help="apply to a model whose non-prunable layers differ")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="where to save the pruned model (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--onnx", help="also export ONNX to this file (checked with onnxruntime when installed)")
    p.add_argument("--torchscript", help="also save the compact model as TorchScript to this file (loaded back "
                   "and checked against torch)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    policy = Policy.load(args.policy)
    model_cfg = section(args, "model")
    model_cfg = replace(model_cfg, name=model_cfg.name or policy.model.get("name"),
                        num_classes=model_cfg.num_classes or policy.model.get("num_classes"),
                        input_shape=model_cfg.input_shape or tuple(policy.input_shape))
    inputs = (args.policy, model_cfg.checkpoint)
    check_output(args.out, inputs=inputs, overwrite=args.overwrite)
    check_output(args.onnx, inputs=inputs + (args.out,), overwrite=args.overwrite)
    check_output(args.torchscript, inputs=inputs + (args.out, args.onnx), overwrite=args.overwrite)
    finetune_dir = Path(args.out).with_suffix("").as_posix() + "_finetune"
    if args.finetune_epochs > 0:
        check_output(finetune_dir, inputs=inputs, overwrite=args.overwrite, folder=True)
    device = check_device(args.device)
    if not model_cfg.checkpoint and not args.random_init:
        raise AmcError("no --checkpoint: the model would have random weights (add --random-init if that is intended)")
    finetune = finetune_config(args)
    model, spec, _ = open_from_args(args, model_cfg)
    model.to(device)
    prune = validate(section(args, "prune", policy.prune))
    if args.no_recovery:
        prune = replace(prune, reconstruct=False, bn_batches=0)
    data = validate(section(args, "data", policy.data)) if (args.dataset or policy.data) else None
    if args.finetune_epochs > 0 and data is None:
        raise AmcError("--finetune-epochs needs data (--dataset and --data-dir)")
    calibration = None
    if needs_calibration(prune):
        if data is None:
            raise AmcError("the policy's recovery needs calibration images: give --dataset and --data-dir, "
                           "or --no-recovery")
        calibration = calibration_for(policy, data=data, device=device)
    started = time.perf_counter()
    applied = apply_policy(model, policy, calibration=calibration, prune=prune, force=args.force)
    compact = applied.model
    rows = [{"model": "dense", "macs": applied.costs["macs"][0], "params": applied.costs["params"][0]},
            {"model": "pruned", "macs": applied.costs["macs"][1], "params": applied.costs["params"][1]}]
    if data is not None:
        test = splits_for(data, spec, ("test",))["test"]
        test_x, test_y = normalized(data, test, device)
        rows[0]["test_top1"] = evaluate(model, test_x, test_y)["top1"]
        rows[1]["test_top1"] = evaluate(compact, test_x, test_y)["top1"]
        if args.finetune_epochs > 0:
            from ..training import train  # noqa: PLC0415

            train(compact, spec, splits_for(data, spec, ("train",))["train"], test, normalization(data), finetune,
                  finetune_dir, device=device, log=print, teacher=model if finetune.distill > 0 else None)
            rows.append({"model": "pruned+finetune", "macs": rows[1]["macs"], "params": rows[1]["params"],
                         "test_top1": evaluate(compact, test_x, test_y)["top1"]})
    for r in rows:
        r["macs_ratio"] = f"{r['macs'] / rows[0]['macs']:.4f}"
        r["params_ratio"] = f"{r['params'] / rows[0]['params']:.4f}"
        if "test_top1" in r:
            r["test_top1"] = f"{r['test_top1']:.4f}"
    print_table(rows, ["model", "macs", "params", "macs_ratio", "params_ratio", "test_top1"])
    save_model(args.out, compact.cpu(), spec, policy=policy.to_dict(),
               apply_report={"rows": rows, "seconds": time.perf_counter() - started, "command": command_line(),
                             "recovery": {"reconstruct": prune.reconstruct, "reconstruction": prune.reconstruction,
                                          "solve_precision": prune.solve_precision,
                                          "bn_batches": prune.recalibration_batches}})
    print(f"pruned model: {args.out} (load with amc.io.open_model(None, '{args.out}'))")
    if args.onnx:
        print(f"ONNX {args.onnx}: {export_onnx(compact.cpu().eval(), spec.input_shape, args.onnx)}")
    if args.torchscript:
        print(f"TorchScript {args.torchscript}: "
              f"{export_torchscript(compact.cpu().eval(), spec.input_shape, args.torchscript)}")
    print(json.dumps({"timings": {k: round(v, 3) for k, v in applied.timings.items()}}))
    return 0


