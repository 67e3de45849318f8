"""The ``lowbit`` command line: one program, one subcommand per job.

Exit codes: 0 success, 1 a failed check, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from lowbit import demo

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")


def _cmd_demo(args: argparse.Namespace) -> int:
    report = demo.run(rows=args.rows, cols=args.cols, seed=args.seed, quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    return EXIT_OK


def _cmd_schemes(args: argparse.Namespace) -> int:
    from lowbit.schemes import SCHEMES

    rows = [
        {
            "name": s.name,
            "bits": s.bits,
            "methods": list(s.methods),
            "default_group_size": s.default_group_size,
            "summary": s.summary,
        }
        for s in SCHEMES.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not args.quiet:
        for r in rows:
            print(f"{r['name']:<8} {r['summary']}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit", description="Compact low-bit models from HuggingFace checkpoints."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}

    p = sub.add_parser("demo", help="the main job, end to end, on the default data")
    p.add_argument("--rows", type=positive_int, default=4096, help="rows of the demo matrix")
    p.add_argument("--cols", type=positive_int, default=4096, help="columns of the demo matrix")
    p.add_argument("--seed", type=int, default=0)
    _add_output_flags(p)
    commands["demo"] = _cmd_demo

    p = sub.add_parser("schemes", help="list the quantization schemes")
    _add_output_flags(p)
    commands["schemes"] = _cmd_schemes

    parser.set_defaults(_commands=commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._commands[args.command](args)
    except BrokenPipeError:
        # The reader went away (`lowbit demo | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stays open until exit)
        return EXIT_OK
    except (UserError, ValueError, TypeError, OSError) as e:
        print(f"lowbit {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
