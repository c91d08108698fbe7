"""How fast the search split is scored: batches of 500 images vs batches sized by activation memory,
with and without BatchNorm folding, side by side.

Random weights and random images are enough for timing (``--images`` of them, one input's shape from
the model's default or ``--input-shape``). Each repeat runs every variant once, in an order that
rotates between repeats; the table gives medians over ``--repeats`` of wall seconds, user and system
CPU seconds and minor page faults (``resource.getrusage(RUSAGE_SELF)`` deltas). A folded variant's
time includes the folding (as :meth:`amc_envs.PruningTask.score` pays it per episode). The scores of
all variants are checked equal (top-1/top-5 exactly, the loss up to float rounding).

``--malloc no-mmap`` applies :func:`amc.memory.keep_freed_memory` (glibc's ``M_MMAP_MAX`` 0 and
``M_TRIM_THRESHOLD`` 2 GiB for the whole process: large tensors then come from the heap, which keeps
what it grew to), as ``amc search`` does, measured in its own process.

    python benchmarks/scoring_speed.py --model resnet20 --images 500 --repeats 3 --threads 1
    python benchmarks/scoring_speed.py --model mobilenet_v1_imagenet --images 100 --repeats 2 --threads 1 \\
        --record /tmp/mobilenet-scoring.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from amc.evaluation import MIB, eval_batch_size, evaluate, fold_batchnorm, largest_activation_bytes
from amc.io import atomic_write_text
from amc.models import ModelSpec, build_model
from amc.models.registry import default_input_shape
from amc.memory import keep_freed_memory
from amc.provenance import provenance

def machine() -> dict:
    """Library versions and platform plus the CPU facts timings depend on."""
    info = provenance()
    return {**info["versions"], "platform": info["machine"], "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def measure(fn) -> dict:
    """Wall, user and system seconds and minor page faults of ``fn()``; its result under ``result``."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = fn()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
            "minflt": after.ru_minflt - before.ru_minflt, "result": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="registry name (resnet20, resnet56, mobilenet_v2, "
                        "mobilenet_v1_imagenet, ...)")
    parser.add_argument("--input-shape", type=int, nargs=3, help="one input's C H W (default: the model's)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--images", type=int, default=500, help="random images scored per variant")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per variant (median reported)")
    parser.add_argument("--batch", type=int, default=500, help="the fixed batch to compare against (images)")
    parser.add_argument("--eval-batch-mib", type=float, nargs="+", default=[4.0],
                        help="activation budgets (MiB) of the memory-sized variants")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="contiguous memory format (default: channels-last, as the search scores)")
    parser.add_argument("--malloc", choices=("default", "no-mmap"), default="default",
                        help="glibc settings for this whole process (see above)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    malloc = {"keep_freed_memory": keep_freed_memory()} if args.malloc == "no-mmap" else {}
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shape = tuple(args.input_shape or default_input_shape(args.model))
    model = build_model(ModelSpec(args.model, args.num_classes, shape)).eval()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    images = torch.randn(args.images, *shape).contiguous(memory_format=fmt)
    labels = torch.randint(0, args.num_classes, (args.images,))
    per_image = largest_activation_bytes(model, shape)
    batches = {f"batch {args.batch}": args.batch,
               **{f"{mib:g} MiB": eval_batch_size(model, shape, mib * MIB) for mib in args.eval_batch_mib}}
    variants = {}
    for label, batch in batches.items():
        variants[label] = (lambda b=batch: evaluate(model, images, labels, b), batch, False)
        variants[f"{label} + fold"] = (lambda b=batch: evaluate(fold_batchnorm(model), images, labels, b), batch, True)
    names = list(variants)
    for name in names:  # warm-up: oneDNN primitives, first touch of the heap
        variants[name][0]()
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(measure(variants[name][0]))
    rows = []
    for name in names:
        got = runs[name]
        rows.append({"variant": name, "batch": variants[name][1], "fold": variants[name][2],
                     "largest_activation_mib": min(variants[name][1], args.images) * per_image / MIB,
                     **{k: statistics.median(m[k] for m in got) for k in ("wall_s", "user_s", "sys_s", "minflt")},
                     "all_wall_s": [m["wall_s"] for m in got], "score": got[0]["result"]})
    first = rows[0]["score"]
    same = all(row["score"]["top1"] == first["top1"] and row["score"]["top5"] == first["top5"]
               and abs(row["score"]["loss"] - first["loss"]) <= 1e-5 * max(1.0, abs(first["loss"])) for row in rows)
    print(f"{args.model} {shape}, {args.images} random images, {args.repeats} repeats, threads "
          f"{torch.get_num_threads()}, channels_last {args.channels_last}, malloc {args.malloc} {malloc or ''}")
    print(f"largest activation per image {per_image / MIB:.3f} MiB; scores equal across variants: {same}")
    print(f"{'variant':<22}{'batch':>7}{'act MiB':>9}{'wall s':>9}{'user s':>9}{'sys s':>9}{'minflt':>11}")
    for row in rows:
        print(f"{row['variant']:<22}{row['batch']:>7}{row['largest_activation_mib']:>9.1f}{row['wall_s']:>9.3f}"
              f"{row['user_s']:>9.3f}{row['sys_s']:>9.3f}{row['minflt']:>11.0f}")
    if args.record:
        record = {"benchmark": "scoring_speed", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                  "model": args.model, "input_shape": list(shape), "images": args.images, "repeats": args.repeats,
                  "channels_last": args.channels_last, "malloc": args.malloc, "mallopt_returns": malloc,
                  "largest_activation_bytes_per_image": per_image, "scores_equal": same, "machine": machine(),
                  "rows": rows, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(json.dumps(record, indent=2) + "\n", args.record)
        print(f"record: {args.record}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
