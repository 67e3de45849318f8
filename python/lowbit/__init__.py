"""lowbit: compact low-bit models from HuggingFace checkpoints, with proof that they still work.

The public names below are imported on first use (PEP 562), so ``import
lowbit``, ``lowbit --help`` and the pytest plugin load none of numpy, the C++
core or the conversion code until something asks for them.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from lowbit._version import __version__

if TYPE_CHECKING:
    from lowbit.eval.calibration import convert_calibrated as convert
    from lowbit.exports import export
    from lowbit.moe.upcycle import upcycle
    from lowbit.quant.quantize import QuantizedTensor, quantize
    from lowbit.quant.schemes import schemes
    from lowbit.runtime.model import Model, load
    from lowbit.sources.hub import download
    from lowbit.util.errors import LowbitError

# public name -> the module that defines it (and its name there, when it differs)
_PUBLIC: dict[str, str | tuple[str, str]] = {
    "LowbitError": "lowbit.util.errors",
    "Model": "lowbit.runtime.model",
    "QuantizedTensor": "lowbit.quant.quantize",
    # convert with the calibration statistics its recipe needs (q4's whqq)
    "convert": ("lowbit.eval.calibration", "convert_calibrated"),
    "download": "lowbit.sources.hub",
    "export": ("lowbit.exports", "export"),
    "load": "lowbit.runtime.model",
    "quantize": "lowbit.quant.quantize",
    "schemes": "lowbit.quant.schemes",
    "upcycle": "lowbit.moe.upcycle",
}

# LOWBIT_TARGET=AVX2 (or SSE4, ...) runs every kernel on that SIMD target
# instead of the best one: to check, on one machine, that results and test
# limits hold on machines of another kind. Read here, before any kernel runs.
if os.environ.get("LOWBIT_TARGET"):
    from lowbit import _core

    _core.force_target(os.environ["LOWBIT_TARGET"])


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        where = _PUBLIC[name]
        module, attr = where if isinstance(where, tuple) else (where, name)
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def set_num_threads(n: int) -> None:
    """Threads the kernels use, from 1 to the number of cores (more is clamped)."""
    from lowbit import _core
    from lowbit.util.errors import check_argument

    _core.set_num_threads(check_argument(n, "n", 1, 2**31 - 1))


def num_threads() -> int:
    """Threads the kernels use now."""
    from lowbit import _core

    return _core.num_threads()


__all__ = [
    "LowbitError",
    "Model",
    "QuantizedTensor",
    "__version__",
    "convert",
    "download",
    "export",
    "load",
    "num_threads",
    "quantize",
    "schemes",
    "set_num_threads",
    "upcycle",
]
