"""Bad input: a clear ValueError/TypeError naming the tensor, never a crash."""

from __future__ import annotations

import lowbit
import ml_dtypes
import numpy as np
import pytest
from lowbit import _core
from lowbit.quant.quantize import core_params
from lowbit.quant.schemes import SCHEMES


def test_non_2d_arrays():
    with pytest.raises(ValueError, match=r"w\.q: expected a 2-D matrix, got shape \(16,\)"):
        lowbit.quantize(np.ones(16, np.float32), "int8", name="w.q")
    with pytest.raises(ValueError, match="2-D"):
        lowbit.quantize(np.ones((2, 2, 16), np.float32), "int8")


@pytest.mark.parametrize(
    "dtype", [np.float64, np.int8, np.int32, np.uint16, ml_dtypes.float8_e4m3fn]
)
def test_unsupported_dtypes(dtype):
    with pytest.raises(TypeError, match=r"layer\.0: dtype .* is not supported; expected float32"):
        lowbit.quantize(np.ones((2, 16), dtype), "int4", name="layer.0")


def test_not_an_array():
    with pytest.raises(TypeError, match="expected a numpy array, got list"):
        lowbit.quantize([[1.0] * 16], "int8")


def test_empty_matrix():
    with pytest.raises(ValueError, match="empty"):
        lowbit.quantize(np.ones((0, 16), np.float32), "int8")


def test_non_contiguous_is_copied_with_a_warning():
    x = np.asfortranarray(np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32))
    with pytest.warns(
        UserWarning, match="w: array is not C-contiguous; quantizing a contiguous copy"
    ):
        qt = lowbit.quantize(x, "int4", name="w")
    np.testing.assert_array_equal(qt.codes, lowbit.quantize(np.ascontiguousarray(x), "int4").codes)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("scheme", ["int8", "int4", "uint4", "ternary", "f16", "bf16"])
def test_nan_and_inf_are_errors_naming_the_place(dtype, bad, scheme):
    x = np.ones((40, 64), np.float32)
    x[37, 50] = bad
    x[39, 3] = bad  # a later one: the first is reported
    where = "flat index 2418" if scheme in ("f16", "bf16") else "row 37, column 50"
    with pytest.raises(ValueError, match=rf"model\.w: NaN or Inf at {where}"):
        lowbit.quantize(x.astype(dtype), scheme, name="model.w")


def test_group_size_that_does_not_divide_says_what_fits():
    x = np.ones((2, 96), np.float32)
    with pytest.raises(
        ValueError, match=r"group size 64 does not fit rows of 96 .* fit: 16, 32, 48, 96"
    ):
        lowbit.quantize(x, "int4", group_size=64)
    with pytest.raises(ValueError, match="fit: none"):
        lowbit.quantize(np.ones((2, 100), np.float32), "int4", group_size=32)
    with pytest.raises(ValueError, match="positive int or None"):
        lowbit.quantize(x, "int4", group_size=0)


def test_unknown_scheme_and_method():
    x = np.ones((2, 32), np.float32)
    with pytest.raises(ValueError, match="unknown scheme 'int3'; known schemes: int8, int4"):
        lowbit.quantize(x, "int3")
    with pytest.raises(ValueError, match="unknown method 'awq'"):
        lowbit.quantize(x, "int4", method="awq")
    with pytest.raises(ValueError, match="method 'hqq' does not apply to int4; it takes rtn, mse"):
        lowbit.quantize(x, "int4", method="hqq")


def test_group_scale_overflowing_float16():
    x = np.full((1, 32), 1e7, np.float32)
    x[0, 0] = -1e7
    with pytest.raises(ValueError, match="overflows float16; use per-row scales"):
        lowbit.quantize(x, "int8", group_size=32)
    lowbit.quantize(x, "int8", group_size=None)  # float32 row scales are fine


def test_f16_cast_overflow():
    with pytest.raises(ValueError, match="overflows the output type"):
        lowbit.quantize(np.full((1, 4), 70000.0, np.float32), "f16")


def test_core_rejects_inconsistent_arguments():
    """The binding checks what the Python layer already checks: no crash either way."""
    s = SCHEMES["int4"]
    p = core_params(s, 32, "rtn")
    x = np.ones((4, 64), np.float32)
    codes, scales, _ = _core.quantize(x, _core.DType.F32, p, "w")
    with pytest.raises(ValueError, match=r"codes have shape \(4, 32\), expected \(5, 32\)"):
        _core.dequantize(codes, scales, None, 5, 64, p, "w")
    with pytest.raises(
        ValueError, match=r"out must be a writeable float32 array of shape \(4, 64\)"
    ):
        _core.dequantize(codes, scales, None, 4, 64, p, "w", np.empty((4, 63), np.float32))
    with pytest.raises(ValueError, match="scales have shape"):
        _core.dequantize(codes, scales[:, :1].copy(), None, 4, 64, p, "w")
    with pytest.raises(TypeError, match="w scales: expected 2-byte elements, got 4"):
        _core.dequantize(codes, scales.astype(np.float32), None, 4, 64, p, "w")
    with pytest.raises(ValueError, match="not C-contiguous"):
        _core.quantize(np.asfortranarray(np.ones((4, 64), np.float32)), _core.DType.F32, p, "w")
    with pytest.raises(TypeError, match="expected 2-byte elements"):
        _core.quantize(x, _core.DType.F16, p, "w")
    p.group_size = 24
    with pytest.raises(ValueError, match="multiple of 16"):
        _core.quantize(x, _core.DType.F32, p, "w")
    asym = core_params(SCHEMES["uint4"], None, "rtn")
    c, sc, _z = _core.quantize(x, _core.DType.F32, asym, "w")
    with pytest.raises(ValueError, match="zero points are missing"):
        _core.dequantize(c, sc, None, 4, 64, asym, "w")
    bad = core_params(SCHEMES["int4"], None, "hqq")
    with pytest.raises(ValueError, match="hqq needs a scheme with zero points"):
        _core.quantize(x, _core.DType.F32, bad, "w")
    bad = core_params(SCHEMES["int4"], None, "rtn")
    bad.qmax = 20
    with pytest.raises(ValueError, match="does not fit in 4 bits"):
        _core.quantize(x, _core.DType.F32, bad, "w")
    with pytest.raises(ValueError, match="unknown or unavailable SIMD target"):
        _core.force_target("NEON_BF16")
