"""The ``amc`` command line: ``amc --help`` lists the commands, each with its own ``--help``.

The composition root: each command module translates flags into config objects
(:mod:`amc.cli.args`) and calls the library. Errors in the user's input print one line
(``amc: error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import AmcError, AmcWarning
from . import (apply, demo, evaluate, export, inspect, lottery, prune, report, rigl, search, sensitivity, sweep,
               train, uniform)

COMMANDS = (train, evaluate, inspect, uniform, search, sweep, apply, export, prune, sensitivity, lottery, rigl, report,
            demo)


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line like every other error."""

    def error(self, message: str):
        self.exit(2, f"amc: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="amc", description="AutoML for Model Compression: search per-layer "
                                     "channel-pruning policies and prune CNNs for real. Preserve ratio = fraction "
                                     "of a group's channels kept; MACs = multiply-accumulates per example.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings as one line (others as Python shows them)."""
    if issubclass(category, AmcWarning):
        print(f"amc: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", AmcWarning)
            warnings.showwarning = _show_warning
            return args.func(args)
    except AmcError as exc:
        print(f"amc: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a vanished folder: the last complete files stay as they were
        where = f": {exc.filename}" if exc.filename else ""
        print(f"amc: error: {exc.strerror or exc}{where} (files written before it are complete)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = f"; continue with: amc search --resume {args.resume or args.out}" \
            if args.command == "search" and (getattr(args, "resume", None) or getattr(args, "out", None)) else ""
        print(f"amc: interrupted{resume}", file=sys.stderr)
        return 130
