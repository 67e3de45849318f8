"""``lowbit validate DIR --baseline SRC``: what quantization cost, against PyTorch."""

from __future__ import annotations

import argparse
import sys

from lowbit.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    add_output_flags,
    context_int,
    emit,
    model_dir,
    positive_int,
)
from lowbit.eval.validate import format_report, validate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="model directory (from lowbit convert)")
    p.add_argument("--baseline", required=True, help="the float checkpoint it was converted from")
    p.add_argument(
        "--text", action="append", help="evaluation text file (repeatable; default: the "
        "English license texts in /usr/share/common-licenses)"
    )  # fmt: skip
    p.add_argument("--tolerances", help="TOML tolerances file (default: weight table only)")
    p.add_argument("--context", type=context_int, default=512, help="window length (512)")
    p.add_argument("--tokens", type=positive_int, default=1024, help="tokens evaluated (1024)")
    p.add_argument("--weights-only", action="store_true", help="skip the model-level comparison")
    add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    model_dir(args.out)
    report = validate(
        args.out,
        args.baseline,
        text_files=args.text,
        tolerances=args.tolerances,
        context=args.context,
        max_tokens=args.tokens,
        model_level=not args.weights_only,
    )
    emit(args, report.as_dict(), lambda: format_report(report))
    for v in report.violations:
        print(f"lowbit validate: tolerance exceeded: {v}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED
