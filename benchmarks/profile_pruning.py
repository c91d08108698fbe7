"""Where one pruning of a policy spends its CPU time: a torch profile of ``PruningEngine.prune_keep``.

Builds the engine the policy was scored with (its recorded recovery and calibration images; ``--solve-precision``
overrides one setting), gathers the
dense targets and warms up outside the profile, then profiles ``--repeats`` prunings on 1 thread and prints
torch's table of operators by self CPU time.

    python benchmarks/profile_pruning.py results/benchmarks/resnet20-50macs-seqls/ddpg_clamp-seed0/best_policy.json \\
        --checkpoint results/benchmarks/resnet20-jpeg-finetune/run/model.pt --data-dir /tmp/cifar
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from amc import Policy, calibration_for
from amc.config import replace
from amc.errors import AmcError
from amc.prune.engine import PruningEngine
from amc.structure import trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_methods import Evaluator  # noqa: E402  (the same model and data loading as the comparison)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("policy")
    p.add_argument("--checkpoint", required=True, help="the dense model the policy was made for")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--repeats", type=int, default=3, help="profiled prunings")
    p.add_argument("--rows", type=int, default=20, help="operators shown")
    p.add_argument("--solve-precision", choices=("float32", "float64"),
                   help="sequential least squares' normal equations instead of the policy's recorded ones")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.rows < 1:
        raise SystemExit(f"profile_pruning: --repeats and --rows must be at least 1, got {args.repeats}, {args.rows}")
    torch.set_num_threads(1)
    try:
        policy = Policy.load(args.policy)
        evaluator = Evaluator(args.checkpoint, args.data_dir, policy.model.get("name"))
        calibration = calibration_for(policy, data=evaluator.data(policy), train=evaluator.splits(policy)["train"])
    except AmcError as exc:
        raise SystemExit(f"profile_pruning: {exc}") from None
    graph = trace(evaluator.model, policy.input_shape, policy.model.get("exclude", ()))
    prune = replace(policy.prune, solve_precision=args.solve_precision or policy.prune.solve_precision)
    engine = PruningEngine(evaluator.model, graph, prune, calibration)
    keep = policy.keep(graph)
    engine.prune_keep(keep, policy.kept())  # dense targets and first-call costs outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.repeats):
            engine.prune_keep(keep, policy.kept())
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
