"""The element types lowbit reads and writes: float32, float16 and bfloat16 (ml_dtypes)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from lowbit import _core
from lowbit.quant.schemes import SCHEMES
from lowbit.util.errors import ArgumentTypeError

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

# numpy dtype -> the core's element type
_CORE_TYPES = {
    np.dtype(np.float32): _core.DType.F32,
    np.dtype(np.float16): _core.DType.F16,
    BFLOAT16: _core.DType.BF16,
}


def named(name: str) -> np.dtype:
    """The numpy dtype of a name the schemes use (``bfloat16`` is ml_dtypes')."""
    return BFLOAT16 if name == "bfloat16" else np.dtype(name)


# float scheme -> the dtype its values are stored as
FLOAT_SCHEME_DTYPES = {
    s.name: named(s.float_dtype) for s in SCHEMES.values() if s.float_dtype is not None
}


def core_dtype(dtype: np.dtype, name: str) -> _core.DType:
    """The core's element type for ``dtype``; a TypeError names the tensor otherwise."""
    try:
        return _CORE_TYPES[np.dtype(dtype)]
    except KeyError:
        raise ArgumentTypeError(
            f"{name}: dtype {np.dtype(dtype).name} is not supported; "
            "expected float32, float16 or bfloat16"
        ) from None


def raw_view(x: np.ndarray) -> np.ndarray:
    """The array as the core receives it: float32 as is, 16-bit floats as uint16 bits."""
    return x if x.dtype == np.float32 else x.view(np.uint16)


def cast(x: np.ndarray, dtype: np.dtype, name: str = "tensor") -> np.ndarray:
    """Convert a float32/float16/bfloat16 array to ``dtype`` in the core.

    Rounds to nearest even; NaN, Inf and values beyond the target's range are
    errors naming the tensor rather than silent infinities.
    """
    src = np.ascontiguousarray(x)
    out = _core.cast(raw_view(src), core_dtype(src.dtype, name), core_dtype(dtype, name), name)
    return out.view(BFLOAT16) if np.dtype(dtype) == BFLOAT16 else out
