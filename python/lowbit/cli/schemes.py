"""``lowbit schemes``: the quantization schemes, one line each."""

from __future__ import annotations

import argparse

from lowbit.cli.common import EXIT_OK, add_output_flags, emit
from lowbit.quant.schemes import SCHEMES


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_output_flags(p)


def run(args: argparse.Namespace) -> int:
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
    emit(args, rows, lambda: "\n".join(f"{r['name']:<8} {r['summary']}" for r in rows))
    return EXIT_OK
