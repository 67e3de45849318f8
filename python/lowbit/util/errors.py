"""The one error type for bad input, and the helpers that word its messages.

Every reader and every public entry point raises a ``LowbitError`` (or a
subclass) when its input is wrong: a file that cannot be parsed, a field out
of range, an argument that makes no sense. The message names the file, and
inside it the field or tensor, so that a user can find and fix it. The CLI
prints such an error as one line and exits 2; any other exception is a bug in
lowbit and keeps its traceback.

``LowbitError`` derives from ``ValueError`` so that callers written against
the earlier per-module errors (all ``ValueError``s) keep working.
"""

from __future__ import annotations

import math
import os
from typing import Any


class LowbitError(ValueError):
    """Bad input: the message names the file and field, or the argument."""


class ArgumentError(LowbitError):
    """An argument of a public function or a CLI flag out of its range."""


def where(path: str | os.PathLike[str] | None, field: str | None = None) -> str:
    """``path``, ``path: field`` or ``field``: the prefix of an error message."""
    parts = [str(p) for p in (path, field) if p is not None and str(p) != ""]
    return ": ".join(parts) if parts else "input"


def check_int(
    value: Any,
    *,
    path: str | os.PathLike[str] | None,
    field: str,
    lo: int = 0,
    hi: int = 2**40,
) -> int:
    """``value`` as an int in [lo, hi], or a LowbitError naming ``path`` and ``field``.

    JSON gives floats for ``1e8`` and booleans for ``true``; both are refused
    (a boolean is an int in Python, and ``1e308`` would overflow later).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LowbitError(f"{where(path, field)}: expected an integer, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise LowbitError(f"{where(path, field)}: expected an integer, got {value!r}")
        value = int(value)
    if not lo <= value <= hi:
        raise LowbitError(f"{where(path, field)}: {value} is outside [{lo}, {hi}]")
    return value


def check_float(
    value: Any,
    *,
    path: str | os.PathLike[str] | None,
    field: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
) -> float:
    """``value`` as a finite float in [lo, hi] (or (lo, hi]), else a LowbitError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LowbitError(f"{where(path, field)}: expected a number, got {value!r}")
    value = float(value)
    below = value <= lo if lo_open else value < lo
    if not math.isfinite(value) or below or value > hi:
        bracket = "(" if lo_open else "["
        raise LowbitError(f"{where(path, field)}: {value!r} is outside {bracket}{lo}, {hi}]")
    return value


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type (a ``TypeError`` too, as Python's own)."""


def check_argument(value: object, field: str, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi], else an ArgumentError naming ``field``.

    Checked in Python so that the C++ core never sees it out of range: its own
    error would be a plain ValueError.
    """
    try:
        return check_int(value, path=None, field=field, lo=lo, hi=hi)
    except LowbitError as e:
        raise ArgumentError(str(e)) from None
