"""lowbit: compact low-bit models from HuggingFace checkpoints, with proof that they still work."""

__version__ = "0.1.0"  # before the imports below: convert records it

import os

from lowbit import _core

# LOWBIT_TARGET=AVX2 (or SSE4, ...) runs every kernel on that SIMD target
# instead of the best one: to check, on one machine, that results and test
# limits hold on machines of another kind.
if os.environ.get("LOWBIT_TARGET"):
    _core.force_target(os.environ["LOWBIT_TARGET"])
from lowbit.convert import convert
from lowbit.hub import download
from lowbit.quantize import QuantizedTensor, quantize
from lowbit.runtime import Model, load
from lowbit.runtime import check_argument as _check_argument
from lowbit.schemes import schemes
from lowbit.upcycle import upcycle


def set_num_threads(n: int) -> None:
    """Threads the kernels use, from 1 to the number of cores (more is clamped)."""
    _core.set_num_threads(_check_argument(n, "n", 1, 2**31 - 1))


def num_threads() -> int:
    """Threads the kernels use now."""
    return _core.num_threads()


__all__ = [
    "Model",
    "QuantizedTensor",
    "__version__",
    "convert",
    "download",
    "load",
    "num_threads",
    "quantize",
    "schemes",
    "set_num_threads",
    "upcycle",
]
