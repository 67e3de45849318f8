"""``lowbit bench DIR``: prompt processing and generation speed, as llama-bench reports them."""

from __future__ import annotations

import argparse

from lowbit.cli.common import (
    EXIT_OK,
    add_output_flags,
    add_runtime_flags,
    emit,
    model_dir,
    positive_int,
    set_threads,
)
from lowbit.runtime.bench import format_bench, run_bench


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_runtime_flags(p)
    p.add_argument("-p", type=int, default=512, help="prompt tokens (default: 512)")
    p.add_argument("-n", type=int, default=128, help="generated tokens (default: 128)")
    p.add_argument("-r", "--repetitions", type=positive_int, default=5, help="default: 5")
    add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    model_dir(args.out)
    result = run_bench(args.out, args.p, args.n, args.repetitions, args.kv_cache)
    emit(args, result.as_dict(), lambda: format_bench(result))
    return EXIT_OK
