"""``lowbit validate DIR --baseline SRC``: what quantization cost, against PyTorch."""

from __future__ import annotations

import argparse
import sys

from lowbit.cli import common
from lowbit.eval.validate import format_report, validate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="out", help="model directory (from lowbit convert)")
    p.add_argument("--baseline", required=True, help="the float checkpoint it was converted from")
    p.add_argument(
        "--text", dest="text_files", metavar="TEXT", action="append", help="evaluation text "
        "file (repeatable; default: the English license texts in /usr/share/common-licenses)"
    )  # fmt: skip
    p.add_argument("--tolerances", help="TOML tolerances file (default: weight table only)")
    p.add_argument("--context", type=common.context_int, default=512, help="window length (512)")
    p.add_argument(
        "--tokens", dest="max_tokens", metavar="TOKENS", type=common.positive_int, default=1024,
        help="tokens evaluated (1024)",
    )  # fmt: skip
    p.add_argument(
        "--weights-only", dest="model_level", action="store_false",
        help="skip the model-level comparison",
    )  # fmt: skip
    common.add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    common.model_dir(args.model_dir)
    report = common.call(validate, args)
    common.emit(args, report.as_dict(), lambda: format_report(report))
    for v in report.violations:
        print(f"lowbit validate: tolerance exceeded: {v}", file=sys.stderr)
    return common.EXIT_OK if report.ok else common.EXIT_CHECK_FAILED
