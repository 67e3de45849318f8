"""``lowbit download REPO_ID``: a model repository from the HuggingFace Hub."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lowbit.cli import common
from lowbit.sources.hub import DownloadError, download


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo_id", help="e.g. Qwen/Qwen2.5-0.5B-Instruct")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument(
        "--include", action="append", metavar="GLOB", help="only files matching GLOB (repeatable)"
    )
    p.add_argument(
        "--exclude", action="append", metavar="GLOB", help="skip files matching GLOB (repeatable)"
    )
    p.add_argument("--local-dir", type=Path, help="write plain files here, not into the cache")
    p.add_argument("--cache-dir", type=Path, help="the HuggingFace cache to use")
    p.add_argument(
        "--offline", action="store_true", help="use only files already downloaded (no network)"
    )
    common.add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    try:
        result = common.call(download, args, progress=not common.quiet(args))
    except DownloadError as e:
        print(f"lowbit download: error: {e}", file=sys.stderr)
        return common.EXIT_BAD_INPUT if e.bad_input else common.EXIT_CHECK_FAILED
    # The path alone on stdout, as `hf download` prints it, for scripts.
    common.emit(args, result.as_dict(), lambda: str(result.path))
    return common.EXIT_OK
