"""The ``amc`` command line: ``amc --help`` lists the subcommands, each with its own ``--help``.

Errors in the user's input print one line (``amc: error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .data import DataConfig, Normalization, load_splits
from .errors import AmcError

# ----------------------------------------------------------------------------- shared arguments


def add_model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("model", nargs="?", help="registry name (resnet20, vgg16, mobilenet_v2, ...), "
                       "torchvision:NAME or package.module:factory; optional with an amc checkpoint")
    else:
        p.add_argument("--model", help="registry name, torchvision:NAME or package.module:factory")
    p.add_argument("--checkpoint", help="state_dict / checkpoint file (a 'module.' prefix is stripped)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: from the checkpoint, else 10)")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="one input's shape")


def add_data_args(p: argparse.ArgumentParser, default: str | None = "synthetic") -> None:
    p.add_argument("--dataset", default=default, choices=["cifar10", "cifar100", "folder", "synthetic"],
                   help="dataset kind (folder: DATA_DIR/train/<class>/*.png and DATA_DIR/test/...)")
    p.add_argument("--data-dir", help="cifar-10-batches-py (or its parent), cifar-100-python, or an image folder")
    p.add_argument("--search-size", type=int, default=5000, help="training images held out as the search split")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/search split")
    p.add_argument("--mean", type=float, nargs=3, default=None, help="normalisation mean (RGB in [0, 1])")
    p.add_argument("--std", type=float, nargs=3, default=None, help="normalisation std")
    p.add_argument("--image-size", type=int, default=32, help="side length for folder datasets")


def data_config(args: argparse.Namespace, num_classes: int = 10) -> DataConfig:
    norm = Normalization(tuple(args.mean) if args.mean else Normalization().mean,
                         tuple(args.std) if args.std else Normalization().std)
    search = args.search_size
    if args.dataset == "synthetic":
        search = min(search, 500)
    return DataConfig(args.dataset, args.data_dir, search, args.split_seed, norm, image_size=args.image_size,
                      num_classes_hint=num_classes)


def open_from_args(args: argparse.Namespace):
    from .models import open_model  # noqa: PLC0415

    classes = args.num_classes or (100 if getattr(args, "dataset", None) == "cifar100" else None)
    shape = tuple(args.input_shape) if args.input_shape else None
    return open_model(args.model, args.checkpoint, classes, shape)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


# ----------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from .models import ModelSpec, build_model, default_input_shape  # noqa: PLC0415
    from .training import TrainConfig, train  # noqa: PLC0415

    out = Path(args.out)
    if args.resume:
        saved = json.loads((out / "train_args.json").read_text()) if (out / "train_args.json").is_file() else None
        if saved is None:
            raise AmcError(f"nothing to resume in {out} (no train_args.json)")
        args = argparse.Namespace(**{**saved, "resume": True})
    if args.checkpoint:
        model, spec, _ = open_from_args(args)
    else:
        if not args.model:
            raise AmcError("give a model name to train from scratch, or --checkpoint to fine-tune")
        classes = args.num_classes or (100 if args.dataset == "cifar100" else 10)
        spec = ModelSpec(args.model, classes, tuple(args.input_shape or default_input_shape(args.model)))
        model = build_model(spec)
    data = load_splits(data_config(args, spec.num_classes), ("train", "test"))
    cfg = TrainConfig(args.epochs, args.lr, args.weight_decay, 0.9, args.batch_size, not args.no_augment, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_args.json").write_text(json.dumps({k: v for k, v in vars(args).items() if k != "func"}, indent=2))
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    started = time.perf_counter()
    metrics = train(model, spec, data["train"], data["test"], data_config(args).normalization, cfg, out,
                    resume=args.resume, device=args.device, progress=not args.quiet)
    last = metrics.iloc[-1]
    print(f"trained {spec.name} for {cfg.epochs} epochs in {time.perf_counter() - started:.0f} s; "
          f"test top-1 {last.get('val_top1', float('nan')):.4f}")
    print(f"checkpoint: {out / 'model.pt'}  metrics: {out / 'metrics.csv'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate  # noqa: PLC0415
    from .flops import measure  # noqa: PLC0415

    model, spec, _ = open_from_args(args)
    cfg = data_config(args, spec.num_classes)
    split = load_splits(cfg, (args.split,))[args.split]
    model.to(args.device)
    metrics = evaluate(model, cfg.normalization(split.images).to(args.device), split.labels.to(args.device))
    counted = measure(model, spec.input_shape)
    result = {"model": spec.name, "split": args.split, **metrics, "flops": counted["flops"], "params": counted["params"]}
    if args.json:
        print(json.dumps(result))
    else:
        print_table([{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in result.items()}], list(result))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .flops import FLOPS_DEFINITION, flops_of, params_of  # noqa: PLC0415
    from .graph import PruningGraph  # noqa: PLC0415
    from .policy import uniform_counts  # noqa: PLC0415

    model, spec, _ = open_from_args(args)
    graph = PruningGraph(model, spec.input_shape, args.exclude or ())
    dense_f, dense_p = flops_of(graph), params_of(graph)
    rows = []
    for g in graph.groups:
        rows.append({"#": g.index, "group": g.name, "channels": g.channels,
                     "flops": dense_f - flops_of(graph, {g.space: 0}), "params": dense_p - params_of(graph, {g.space: 0}),
                     "coupling": f"{len(g.producers)}p/{len(g.followers)}f/{len(g.consumers)}c",
                     "status": (f"prunable, {g.blocks} equal blocks" if g.blocks > 1 else "prunable")
                     if g.prunable else f"fixed: {g.reason}"})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{spec.name}: input {tuple(spec.input_shape)}, {dense_f / 1e6:.2f} M FLOPs, {dense_p / 1e6:.4f} M params")
    print(f"FLOPs: {FLOPS_DEFINITION}")
    print("flops/params: the part of the model's total that scales with the group's channels; "
          "coupling: producers/followers/consumers")
    print_table(rows, ["#", "group", "channels", "flops", "params", "coupling", "status"])
    lowest = uniform_counts(graph, args.lbound, args.round_to, args.lbound)
    print(f"{len(graph.prunable_groups)} of {len(graph.groups)} groups prunable; at preserve ratio {args.lbound} "
          f"(round_to {args.round_to}) the model keeps {flops_of(graph, lowest) / dense_f:.3f} of its FLOPs and "
          f"{params_of(graph, lowest) / dense_p:.3f} of its params (largest reachable reduction)")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .apply import apply_policy  # noqa: PLC0415

    return apply_policy(args)


def cmd_search(args: argparse.Namespace) -> int:
    from agents.search import run_search_cli  # noqa: PLC0415

    return run_search_cli(args)


def cmd_report(args: argparse.Namespace) -> int:
    from agents.report import write_report  # noqa: PLC0415

    paths = write_report(args.run)
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agents.demo import run_demo  # noqa: PLC0415

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amc", description="AutoML for Model Compression: search per-layer "
                                     "channel-pruning policies and prune CNNs for real.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from scratch or fine-tune a checkpoint")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine decay)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="results/train", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy and loss on a split")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "search", "test"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("inspect", help="table of channel groups: what can be pruned, and what it costs")
    add_model_args(p)
    p.add_argument("--exclude", nargs="*", help="glob patterns of layers whose groups stay unpruned")
    p.add_argument("--lbound", type=float, default=0.2, help="lowest preserve ratio")
    p.add_argument("--round-to", type=int, default=1, help="channel counts rounded to a multiple of this")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("apply", help="apply a policy file: build, recover, fine-tune and save the compact model")
    p.add_argument("policy", help="policy JSON written by amc search or amc uniform")
    add_model_args(p)
    add_data_args(p, default=None)
    p.add_argument("--out", required=True, help="where to save the compact model (.pt)")
    p.add_argument("--criterion", default=None, help="channel criterion (default: the policy's, else l1)")
    p.add_argument("--no-reconstruct", action="store_true", help="skip least-squares reconstruction")
    p.add_argument("--bn-batches", type=int, default=10, help="BatchNorm recalibration batches (0: off)")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--onnx", help="also export ONNX to this file (checked with onnxruntime when installed)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("uniform", help="write the uniform-ratio policy that meets a FLOPs target")
    add_model_args(p)
    p.add_argument("--target", type=float, required=True, help="FLOPs to keep, as a ratio of the dense model's")
    p.add_argument("--lbound", type=float, default=0.2)
    p.add_argument("--round-to", type=int, default=1)
    p.add_argument("--exclude", nargs="*")
    p.add_argument("--out", required=True, help="policy JSON to write")
    p.set_defaults(func=cmd_uniform)

    from agents.search import add_search_args  # noqa: PLC0415

    p = sub.add_parser("search", help="AMC search for a per-layer preserve-ratio policy (resumable)")
    add_search_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("report", help="regenerate plots and summary.md of a search run from its files")
    p.add_argument("run", help="results/<run> folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="short AMC search on an embedded synthetic task (no downloads)")
    p.add_argument("--out", default="results/demo")
    p.add_argument("--episodes", type=int, default=40)
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_uniform(args: argparse.Namespace) -> int:
    from .flops import flops_of  # noqa: PLC0415
    from .graph import PruningGraph  # noqa: PLC0415
    from .policy import make_policy, uniform_for_flops  # noqa: PLC0415

    model, spec, _ = open_from_args(args)
    graph = PruningGraph(model, spec.input_shape, args.exclude or ())
    ratio, counts = uniform_for_flops(graph, args.target, args.round_to, args.lbound)
    flops_ratio = flops_of(graph, counts) / flops_of(graph)
    policy = make_policy(graph, spec.to_dict(), counts, {s: ratio for s in counts},
                         metrics={"flops_ratio": flops_ratio, "target": args.target, "method": "uniform"},
                         command=" ".join(sys.argv))
    policy.save(args.out)
    print(f"uniform preserve ratio {ratio:.4f} keeps {flops_ratio:.4f} of the FLOPs; policy: {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except AmcError as exc:
        print(f"amc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("amc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
