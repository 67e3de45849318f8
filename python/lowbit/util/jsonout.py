"""Strict JSON for every machine-readable output (``--json``, report files).

Python's ``json`` writes ``Infinity`` and ``NaN``, which JSON parsers of other
languages reject. A non-finite number becomes ``null``, and its dict gets a
``<key>_nonfinite`` field saying which value it was ("inf", "-inf", "nan"),
so the reason is not lost; where a value has a better explanation its writer
says so itself (a weight copied exactly has ``snr_db: null`` and
``exact: true``). ``allow_nan=False`` then guarantees the output is strict.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any


def _numpy_types() -> tuple[type, ...]:
    """NumPy's scalar and array types, or none while NumPy is not loaded (then
    no value can be one): ``lowbit --help`` does not pay NumPy's import."""
    np = sys.modules.get("numpy")
    return (np.generic, np.ndarray) if np is not None else ()


def _nonfinite(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def strict(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (see the module doc)
    and NumPy scalars and arrays made Python numbers and lists."""
    arrays = _numpy_types()
    if isinstance(value, arrays):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            v = v.tolist() if isinstance(v, arrays) else v
            if isinstance(v, float) and not math.isfinite(v):
                out[f"{k}_nonfinite"] = _nonfinite(v)
            out[k] = strict(v)
        return out
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``value``: never ``Infinity`` or ``NaN``."""
    return json.dumps(strict(value), indent=indent, allow_nan=False)
