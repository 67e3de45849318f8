"""``lowbit schemes``: the quantization schemes, one line each."""

from __future__ import annotations

import argparse

from lowbit.cli import common
from lowbit.quant.schemes import SCHEMES


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_output_flags(p)


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
    common.emit(args, rows, lambda: "\n".join(f"{r['name']:<8} {r['summary']}" for r in rows))
    return common.EXIT_OK
