"""What every command shares: exit codes, argument types, the output flags and
the one place that prints a result for humans, for ``--json`` or not at all."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbit.util import jsonout
from lowbit.util.errors import LowbitError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class UserError(LowbitError):
    """Bad input from the user: printed without a traceback, exit code 2."""


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def context_int(text: str) -> int:
    """argparse type: a context length, 1 to lowbit.runtime.model.MAX_CONTEXT."""
    value = positive_int(text)
    from lowbit.runtime.model import MAX_CONTEXT

    if value > MAX_CONTEXT:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_CONTEXT} positions, got {text}")
    return value


def add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")


def quiet(args: argparse.Namespace) -> bool:
    """Whether human-readable output (progress, text) is off: --quiet or --json."""
    return bool(args.quiet or args.json)


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str | None]) -> None:
    """Print ``data`` as strict JSON under --json, else ``human()`` unless --quiet.

    ``human`` is called only when its text is printed; None prints nothing.
    """
    if args.json:
        print(jsonout.dumps(data))
    elif not args.quiet:
        text = human()
        if text is not None:
            print(text)


def call(fn: Callable[..., Any], args: argparse.Namespace, **given: Any) -> Any:
    """``fn`` called with every parsed argument that is named as one of its
    parameters, and with ``given``. Each flag's ``dest`` is the API's name for
    it, so a command cannot forward a flag under the wrong name or forget one."""
    params = inspect.signature(fn).parameters
    parsed = {k: v for k, v in vars(args).items() if k in params and k not in given}
    return fn(**parsed, **given)


def model_dir(path: str | Path) -> Path:
    """``path`` as a model directory that exists, else a UserError."""
    if not Path(path).is_dir():
        raise UserError(f"{path}: no such model directory")
    return Path(path)


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """The model directory and the flags of every command that runs a model."""
    from lowbit.runtime.model import KV_CACHE_TYPES

    p.add_argument("out", help="model directory (from lowbit convert)")
    p.add_argument("-t", "--threads", type=positive_int, help="threads (default: all cores)")
    default = KV_CACHE_TYPES[0]
    p.add_argument(
        "--kv-cache", default=default, choices=list(KV_CACHE_TYPES), help=f"default: {default}"
    )


def set_threads(threads: int | None) -> None:
    """``-t``: kernel threads, clamped to the cores there are (None: leave as is)."""
    if threads:
        from lowbit import _core

        _core.set_num_threads(min(threads, _core.max_threads()))
