"""``amc export``: a policy for Torch-Pruning, NNI or pandas; ``amc import-ratios``: a ratio dictionary as a policy."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import AmcError
from ..export import FORMATS, nni_config_list, policy_from_ratios, policy_table, torch_pruning_script
from ..io import atomic_write_text
from ..policy import Policy
from .args import add_flags, add_model_arg, command_line, section
from .common import check_output, open_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a policy as a Torch-Pruning script, an NNI config_list or a CSV table")
    p.add_argument("policy", help="policy JSON (amc search / uniform / sensitivity)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="torch-pruning: a .py file with PRUNING_RATIOS (module -> fraction of output channels "
                        "removed) and prune(model, example_inputs); nni: JSON config_list (op_names, sparse_ratio); "
                        "csv: one row per group (or per layer of a weight policy)")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run_export)

    q = sub.add_parser("import-ratios", help="a policy from a JSON ratio dictionary {group or layer name: ratio}")
    q.add_argument("ratios", help="JSON file: {name: preserve ratio} (or fractions removed with --pruning-ratios)")
    add_model_arg(q)
    add_flags(q, "model", "prune", skip=("--granularity",))
    q.add_argument("--pruning-ratios", action="store_true",
                   help="the values are fractions of channels removed, kept counts rounded down as Torch-Pruning "
                        "does (int(channels * (1 - ratio))); default: fractions kept, rounded to the nearest count")
    q.add_argument("--out", required=True, help="policy JSON to write")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    q.set_defaults(func=run_import)


def run_export(args: argparse.Namespace) -> int:
    check_output(args.out, inputs=(args.policy,), overwrite=args.overwrite)
    policy = Policy.load(args.policy)
    if args.format == "torch-pruning":
        module = Path(args.out).stem
        if not module.isidentifier():
            raise AmcError(f"--out {args.out}: the script's name must be a Python module name (e.g. tp_prune.py)")
        text = torch_pruning_script(policy, module)
    elif args.format == "nni":
        text = json.dumps(nni_config_list(policy), indent=2) + "\n"
    else:
        text = policy_table(policy).to_csv(index=False)
    atomic_write_text(text, args.out)
    print(f"{args.format} export of {args.policy}: {args.out}")
    return 0


def _read_ratios(path: str, removed: bool) -> dict[str, float]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AmcError(f"ratio file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AmcError(f"{path} is not a JSON ratio dictionary: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise AmcError(f"{path} must hold a non-empty JSON object {{name: ratio}}")
    out = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 1:
            raise AmcError(f"{path}: ratio of '{name}' must be a number in [0, 1], got {value!r}")
        out[name] = 1 - value if removed else value
    return out


def run_import(args: argparse.Namespace) -> int:
    model_cfg = section(args, "model")
    check_output(args.out, inputs=(args.ratios, model_cfg.checkpoint), overwrite=args.overwrite)
    ratios = _read_ratios(args.ratios, args.pruning_ratios)
    model, spec, _ = open_from_args(args, model_cfg)
    policy = policy_from_ratios(model, spec.input_shape, ratios, rounding="floor" if args.pruning_ratios else "nearest",
                                exclude=model_cfg.exclude,
                                model_spec=spec.to_dict(), prune=section(args, "prune"))
    policy.provenance["command"] = command_line()
    policy.save(args.out)
    lost = sum(d.kept_channels < d.channels for d in policy.groups)
    print(f"policy from {len(ratios)} ratios ({lost} of {len(policy.groups)} groups lose channels): {args.out}")
    return 0
