"""``lowbit inspect DIR``: check a model directory and report what is in it."""

from __future__ import annotations

import argparse
import sys

from lowbit.cli import common
from lowbit.formats.inspect_model import format_report, inspect_model
from lowbit.formats.manifest import ManifestError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="model directory")
    p.add_argument("--verify", action="store_true", help="also check every file's SHA-256")
    p.add_argument(
        "--context", type=common.context_int, help="context length for the memory estimate"
    )
    common.add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    common.model_dir(args.out)
    try:
        report = inspect_model(args.out, verify=args.verify, context=args.context)
    except ManifestError as e:
        print(f"lowbit inspect: {e}", file=sys.stderr)
        return common.EXIT_CHECK_FAILED
    common.emit(args, report.as_dict(), lambda: format_report(report))
    if not report.ok:
        for p in report.problems:
            print(f"lowbit inspect: {p}", file=sys.stderr)
        return common.EXIT_CHECK_FAILED
    return common.EXIT_OK
