"""``lowbit bench DIR``: prompt processing and generation speed, as llama-bench reports them."""

from __future__ import annotations

import argparse

from lowbit.cli import common
from lowbit.runtime.bench import format_bench, run_bench


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_runtime_flags(p)
    p.add_argument("-p", type=int, default=512, help="prompt tokens (default: 512)")
    p.add_argument("-n", type=int, default=128, help="generated tokens (default: 128)")
    p.add_argument("-r", "--repetitions", type=common.positive_int, default=5, help="default: 5")
    common.add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    common.set_threads(args.threads)
    common.model_dir(args.out)
    result = run_bench(args.out, args.p, args.n, args.repetitions, args.kv_cache)
    common.emit(args, result.as_dict(), lambda: format_bench(result))
    return common.EXIT_OK
