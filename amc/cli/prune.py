"""``amc prune``: prune without a search -- weights by magnitude (masks) or channels by a criterion -- then
optionally fine-tune (one-shot, AGP or rounds) and save a dense checkpoint and/or a sparse file."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..api import uniform_policy
from ..apply import apply_policy, calibration_for
from ..calibration import CalibrationSet, Needs
from ..config import replace, validate
from ..cost import MacsCost
from ..data import normalization
from ..errors import AmcError
from ..evaluation import evaluate
from ..importance import criterion
from ..io import save_model
from ..policy import Policy
from ..prune import needs_calibration
from ..prune import fold_masks
from ..ratios import channels_for_ratio
from ..schedules import SCHEDULES, ChannelMasks, schedule_callbacks
from ..sparse_io import save_sparse, sparse_size_report
from ..structure import trace
from ..training import Progress, Trainer, Validate
from ..unstructured import SCOPES, copy_model, layer_sparsities, prune_unstructured
from .args import add_flags, add_model_arg, command_line, print_table, section
from .common import check_device, check_output, finetune_config, normalized, open_from_args, splits_for

def add_parser(sub) -> None:
    p = sub.add_parser(
        "prune", help="prune without a search: weights by magnitude or channels by a criterion, then fine-tune",
        description="Units: sparsity = fraction of a layer's weights REMOVED (0.9 keeps one weight in ten); "
        "preserve ratio = fraction of a channel group's channels KEPT (0.5 keeps half); target = fraction of the "
        "dense cost (MACs or params) kept. --granularity weight: magnitude masks with --sparsity S (--scope layer: "
        "S in every conv/linear; global: one threshold over all of them) or per-layer sparsities from a weight "
        "policy (amc sensitivity --granularity weight). --granularity channel: channels removed for real, the "
        "same preserve ratio --ratio R in every group, the uniform ratio meeting --target T, or a channel policy.")
    p.add_argument("policy", nargs="?", metavar="POLICY_OR_NOTHING",
                   help="policy JSON (weight or channel); omit it to give --sparsity, --ratio or --target")
    add_model_arg(p)
    p.add_argument("--granularity", choices=("weight", "channel"),
                   help="weight: magnitude masks; channel: physical channel removal (default: the policy's, else weight)")
    p.add_argument("--sparsity", type=float, help="fraction of weights removed, in [0, 1) (weight granularity)")
    p.add_argument("--scope", choices=SCOPES, default="layer",
                   help="layer: the same sparsity in every layer; global: one magnitude threshold (default layer)")
    p.add_argument("--keep-dense", nargs="*", default=[], metavar="PATTERN",
                   help="glob patterns of conv/linear layers left dense (e.g. conv1 fc)")
    p.add_argument("--ratio", type=float, help="preserve ratio (fraction of channels kept) of every group, in (0, 1] "
                   "(channel granularity)")
    add_flags(p, "model", "data", "calibration", "prune", skip=("--granularity",))
    add_flags(p, "env", skip=("--mode", "--rbound", "--metric", "--reward-scale", "--evaluator"))
    add_flags(p, "train", skip=("--epochs",))
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune for this many epochs (needs data)")
    p.add_argument("--schedule", choices=SCHEDULES, default="oneshot",
                   help="oneshot: prune, then fine-tune; agp: gradual (cubic) sparsity over the first 3/4 of the "
                   "steps; rounds: --rounds prune -> fine-tune rounds; same total epochs. Channels are masked while "
                   "they are pruned gradually and removed for real at the end")
    p.add_argument("--rounds", type=int, default=3, help="pruning rounds of --schedule rounds (default 3)")
    p.add_argument("--random-init", action="store_true", help="allow pruning a model without trained weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="pruned model checkpoint (.pt, amc.io.save_model; weight masks folded)")
    p.add_argument("--sparse-out", help="sparse file (bitmask + non-zero values; amc.load_sparse)")
    p.add_argument("--quantize", action="store_true", help="store the sparse file's values as int8 with a per-tensor scale")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def _positionals(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(policy, model name): a lone positional that is not a JSON file names the model."""
    policy, model = args.policy, args.model
    if policy and model is None and not (policy.endswith(".json") or Path(policy).is_file()):
        policy, model = None, policy
    return policy, model


def _check(args: argparse.Namespace, granularity: str, policy: Policy | None) -> None:
    if args.rounds < 1:
        raise AmcError(f"--rounds must be >= 1, got {args.rounds}")
    if args.schedule != "oneshot" and args.finetune_epochs == 0:
        raise AmcError(f"--schedule {args.schedule} prunes during fine-tuning: give --finetune-epochs")
    if not args.out and not args.sparse_out:
        raise AmcError("nothing to write: give --out and/or --sparse-out")
    if args.sparsity is not None and not (math.isfinite(args.sparsity) and 0 <= args.sparsity < 1):
        raise AmcError(f"--sparsity {args.sparsity}: expected a fraction of weights removed in [0, 1)")
    if args.ratio is not None and not (math.isfinite(args.ratio) and 0 < args.ratio <= 1):
        raise AmcError(f"--ratio {args.ratio}: expected a preserve ratio (fraction of channels kept) in (0, 1]")
    if granularity == "weight":
        if args.ratio is not None or args.target is not None:
            raise AmcError("--ratio and --target choose channels; with --granularity weight give --sparsity")
        if (args.sparsity is None) == (policy is None):
            raise AmcError("give exactly one of --sparsity S and a weight policy")
        if policy is not None and args.scope == "global":
            raise AmcError("a weight policy sets per-layer sparsities; --scope global does not apply")
    else:
        if args.sparsity is not None or args.keep_dense or args.scope != "layer":
            raise AmcError("--sparsity, --scope and --keep-dense prune weights; with --granularity channel give "
                           "--ratio, --target or a channel policy (and --exclude to keep groups)")
        if sum(x is not None for x in (args.ratio, args.target, policy)) != 1:
            raise AmcError("give exactly one of --ratio R, --target T and a channel policy")


def run(args: argparse.Namespace) -> int:
    policy_path, model_name = _positionals(args)
    policy = Policy.load(policy_path) if policy_path else None
    granularity = args.granularity or (policy.granularity if policy else "weight")
    if policy is not None and policy.granularity != granularity:
        raise AmcError(f"{policy_path} is a {policy.granularity} policy, not a {granularity} one")
    _check(args, granularity, policy)
    model_cfg = replace(section(args, "model"), name=model_name)
    if policy is not None:
        model_cfg = replace(model_cfg, name=model_cfg.name or policy.model.get("name"),
                            num_classes=model_cfg.num_classes or policy.model.get("num_classes"),
                            input_shape=model_cfg.input_shape or (tuple(policy.input_shape) or None))
    inputs = (policy_path, model_cfg.checkpoint)
    check_output(args.out, inputs=inputs, overwrite=args.overwrite)
    check_output(args.sparse_out, inputs=inputs + (args.out,), overwrite=args.overwrite)
    if args.out and args.sparse_out and Path(args.out).resolve() == Path(args.sparse_out).resolve():
        raise AmcError("--out and --sparse-out name the same file")
    device = check_device(args.device)
    if not model_cfg.checkpoint and not args.random_init:
        raise AmcError("no --checkpoint: the model would have random weights (add --random-init if that is intended)")
    prune_cfg = validate(section(args, "prune", policy.prune if policy else None), "prune")
    env = validate(section(args, "env"), "env")
    if env.cost == "latency":
        raise AmcError("--cost latency (a table measured on this machine) is for amc search, amc sweep and amc "
                       "uniform; amc prune budgets macs or params")
    calib_cfg = validate(section(args, "calibration", policy.calibration if policy else None), "calibration")
    data = validate(section(args, "data", policy.data if policy else None), "data") \
        if (args.dataset or (policy and policy.data)) else None
    finetune = finetune_config(args)
    if args.finetune_epochs > 0 and data is None:
        raise AmcError("--finetune-epochs needs data (--dataset and --data-dir)")
    model, spec, _ = open_from_args(args, model_cfg)
    model.to(device)
    test = splits_for(data, spec, ("test",))["test"] if data is not None else None
    teacher = copy_model(model) if finetune.distill > 0 else None  # the dense model, before any pruning
    if granularity == "weight":
        pruned, history, extra = _weights(args, model, spec, policy, data, finetune, device, test, teacher)
    else:
        pruned, history, extra = _channels(args, model, spec, policy, data, finetune, device, test, model_cfg,
                                           prune_cfg, env, calib_cfg, teacher)
    rows = [_row("dense", model, test, data, device), _row("pruned" + ("+finetune" if history else ""), pruned, test,
                                                            data, device)]
    print_table(rows, ["model", "params", "nonzero_weights", "sparsity", "test_top1"])
    report = {"rows": rows, "command": command_line(), "granularity": granularity, "history": history, **extra}
    if args.out:
        folded = fold_masks(copy_model(pruned)).cpu()
        save_model(args.out, folded, spec, prune_report=report, **({"policy": extra["policy"]} if "policy" in extra else {}))
        print(f"pruned model: {args.out} (load with amc.io.open_model(None, '{args.out}'))")
    if args.sparse_out:
        save_sparse(pruned, args.sparse_out, quantize=args.quantize, spec=spec)
        size = sparse_size_report(pruned, args.sparse_out)
        print(f"sparse file: {args.sparse_out}: {size['sparse_bytes']} bytes, dense state_dict {size['dense_bytes']} "
              f"bytes ({size['ratio']:.3f} of it; load with amc.load_sparse or amc.open_sparse)")
    return 0


def _row(name, model, test, data, device) -> dict:
    zeros = layer_sparsities(model)
    sizes = {n: m.weight_orig.numel() if hasattr(m, "weight_orig") else m.weight.numel()
             for n, m in model.named_modules() if n in zeros}
    total = sum(sizes.values())
    removed = sum(zeros[n] * sizes[n] for n in sizes)
    row = {"model": name, "params": sum(p.numel() for p in model.parameters()),
           "nonzero_weights": int(round(total - removed)), "sparsity": f"{removed / max(total, 1):.4f}"}
    if test is not None:
        x, y = normalized(data, test, device)
        row["test_top1"] = f"{evaluate(model, x, y)['top1']:.4f}"
    return row


def _fit(model, callbacks, data, spec, finetune, device, test, teacher) -> list[dict]:
    train = splits_for(data, spec, ("train",))["train"]
    norm = normalization(data)
    state = Trainer(finetune, [Validate(test, norm), *callbacks, Progress(print)], teacher).fit(model, train, norm,
                                                                                              device=device)
    return [dict(r) for r in state.history]


def _weights(args, model, spec, policy, data, finetune, device, test, teacher):
    sparsities = policy.sparsities if policy else None
    final = args.sparsity if args.sparsity is not None else 0.0
    extra: dict = {"scope": args.scope, "keep_dense": list(args.keep_dense), "schedule": args.schedule}
    if policy is not None:
        extra["policy"] = policy.to_dict()
    if args.finetune_epochs == 0:
        return prune_unstructured(model, final, scope=args.scope, keep_dense=args.keep_dense,
                                  sparsities=sparsities), [], extra
    train_len = len(splits_for(data, spec, ("train",))["train"])
    work, callbacks = schedule_callbacks(model, args.schedule, final, epochs=finetune.epochs,
                                         steps_per_epoch=math.ceil(train_len / finetune.batch_size),
                                         rounds=args.rounds, scope=args.scope, keep_dense=args.keep_dense,
                                         sparsities=sparsities)
    history = _fit(work, callbacks, data, spec, finetune, device, test, teacher)
    return work, history, {**extra, "schedule_events": callbacks[0].events if args.schedule != "oneshot" else []}


def _channels(args, model, spec, policy, data, finetune, device, test, model_cfg, prune_cfg, env, calib_cfg, teacher):
    if policy is None:
        model_spec = spec.to_dict()
        if args.ratio is not None:
            graph = trace(model, spec.input_shape, model_cfg.exclude)
            keep = {g.name: channels_for_ratio(args.ratio, g.channels, g.count_step(env.round_to)) for g in graph.prunable}
            costs = MacsCost()
            policy = Policy.build(graph, keep, model={**model_spec, "exclude": list(model_cfg.exclude)},
                                  requested={g: args.ratio for g in keep}, prune=prune_cfg,
                                  cost={"name": costs.name, "definition": costs.definition},
                                  metrics={"method": "uniform_ratio", "ratio": args.ratio,
                                           "macs_ratio": costs.cost(graph, keep) / costs.cost(graph)})
        else:
            policy = uniform_policy(model, spec.input_shape, env.target, env.cost, round_to=env.round_to,
                                    lbound=env.lbound, exclude=model_cfg.exclude, prune=prune_cfg, model_spec=model_spec)
        policy.calibration, policy.data = calib_cfg, data
        policy.provenance["command"] = command_line()
    uses_data = needs_calibration(prune_cfg) if args.schedule == "oneshot" else \
        bool(criterion(prune_cfg.criterion).needs & (Needs.ACTIVATIONS | Needs.GRADIENTS))
    calibration: CalibrationSet | None = None
    if uses_data:
        if data is None:
            raise AmcError(f"criterion {prune_cfg.criterion}, reconstruction and BatchNorm recalibration need "
                           "calibration images: give --dataset (and --data-dir), or --no-reconstruct --bn-batches 0")
        policy.calibration = calib_cfg
        calibration = calibration_for(policy, data=data, device=device)
    policy.prune = prune_cfg  # what the saved model embeds must rebuild it: the recovery used, flags included
    extra = {"schedule": args.schedule}
    if args.schedule == "oneshot":
        applied = apply_policy(model, policy, calibration=calibration, prune=prune_cfg)
        pruned = applied.model
        history = _fit(pruned, [], data, spec, finetune, device, test, teacher) if args.finetune_epochs > 0 else []
        extra["costs"] = {k: list(v) for k, v in applied.costs.items()}
    else:  # gradual: channels masked during fine-tuning, removed for real at the end
        graph = trace(model, policy.input_shape, policy.model.get("exclude", ()))
        pruning = ChannelMasks(graph, policy.keep(graph), criterion=prune_cfg.criterion, calibration=calibration,
                               points_per_image=prune_cfg.points_per_image, seed=prune_cfg.seed)
        train_len = len(splits_for(data, spec, ("train",))["train"])
        work, callbacks = schedule_callbacks(model, args.schedule, epochs=finetune.epochs, pruning=pruning,
                                             steps_per_epoch=math.ceil(train_len / finetune.batch_size),
                                             rounds=args.rounds)
        history = _fit(work, callbacks, data, spec, finetune, device, test, teacher)
        pruned = pruning.compact(work)
        for d in policy.groups:  # the channels the schedule chose, so the policy rebuilds this structure
            if d.name in pruning.kept:
                d.kept_indices = pruning.kept[d.name].tolist()
        policy.metrics = {**policy.metrics, "schedule": args.schedule, "criterion": prune_cfg.criterion}
        extra["schedule_events"] = callbacks[0].events
    return pruned, history, {"policy": policy.to_dict(), **extra}
