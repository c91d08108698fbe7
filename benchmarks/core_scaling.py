"""How much two processes gain over one on this machine: memory-bound vs compute-bound work.

Explains the ceiling of ``--workers 2`` (``benchmarks/episode_speed.py``): scoring a 224-px MobileNet is
dominated by streaming activations through DRAM, a ResNet on CIFAR by arithmetic. Three kernels, each run by 1
process and then by 2 processes at once (1 torch thread each, ``--rounds`` times interleaved):

- ``copy``: ``dst.copy_(src)`` of a ``--mib`` MiB float32 tensor (memory bandwidth, beyond every cache);
- ``depthwise``: a 3x3 depthwise conv on 32 x 112 x 112 activations, batch 8 (MobileNet-V1's first block at 224 px);
- ``matmul``: a 512 x 512 matrix product, which lives in the cores' caches (compute).

Prints and saves (``--out``) per kernel the work per second of one process and of two together, and their ratio
(2.0 = perfect scaling), with the machine and library versions.

    python benchmarks/core_scaling.py --out results/benchmarks/episode-speed/core_scaling.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _kernel(name: str, mib: int):
    """A zero-argument function doing one unit of ``name``'s work."""
    if name == "copy":
        src = torch.ones(mib * 2**20 // 4)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    if name == "depthwise":
        conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False).eval()
        x = torch.randn(8, 32, 112, 112).contiguous(memory_format=torch.channels_last)
        conv = conv.to(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                conv(x)
        return run
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    return lambda: a @ b


def _units_per_second(name: str, mib: int, seconds: float, start, out) -> None:
    torch.set_num_threads(1)
    work = _kernel(name, mib)
    work()
    start.wait()
    began, done = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        work()
        done += 1
    out.put(done / (time.perf_counter() - began))


def measure(name: str, processes: int, mib: int, seconds: float) -> float:
    """Units of work per second summed over ``processes`` processes running ``name`` at once."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_units_per_second, args=(name, mib, seconds, start, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256, help="size of the copied tensor (MiB)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON record to write")
    args = p.parse_args(argv)
    from amc.io import atomic_write_text
    from amc.provenance import provenance

    results = {}
    for name in ("copy", "depthwise", "matmul"):
        one, two = [], []
        for _ in range(args.rounds):
            one.append(measure(name, 1, args.mib, args.seconds))
            two.append(measure(name, 2, args.mib, args.seconds))
        results[name] = {"one_process_per_s": statistics.median(one), "two_processes_per_s": statistics.median(two),
                         "two_vs_one": statistics.median(two) / statistics.median(one), "one_all": one, "two_all": two}
        print(f"{name:10s} 1 process {results[name]['one_process_per_s']:9.1f}/s  2 processes "
              f"{results[name]['two_processes_per_s']:9.1f}/s  ratio {results[name]['two_vs_one']:.2f}", flush=True)
    if args.out:
        record = {"benchmark": "core_scaling", "results": results, "mib": args.mib, "seconds": args.seconds,
                  "rounds": args.rounds, "cpu_count": os.cpu_count(),
                  **provenance(command=" ".join([Path(sys.executable).name, *sys.argv]))}
        atomic_write_text(json.dumps(record, indent=1) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
