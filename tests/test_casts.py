"""f32/f16/bf16 conversions: round to nearest even, as NumPy and ml_dtypes do."""

from __future__ import annotations

import lowbit
import ml_dtypes
import numpy as np
import pytest
from lowbit.quant.dtypes import cast


def _edge_values(rng: np.random.Generator) -> np.ndarray:
    """Random bit patterns over every exponent, plus exact float16/bfloat16 ties."""
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) < 65504)]
    halves = rng.integers(0, 0x7BFF, size=20_000).astype(np.uint16).view(np.float16)
    ties = halves.astype(np.float32) + np.spacing(halves).astype(np.float32) / 2
    return np.concatenate([x, ties, -ties, np.float32([0.0, -0.0, 6e-8, 3e-8, 65504.0])])


@pytest.mark.parametrize(("dtype", "name"), [(np.float16, "f16"), (ml_dtypes.bfloat16, "bf16")])
def test_cast_matches_numpy_bit_for_bit(dtype, name, rng, simd_target):
    x = _edge_values(rng)
    if name == "bf16":
        x = x[np.abs(x) < 3e38]
    got = cast(x, dtype)
    want = x.astype(dtype)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    back = cast(got, np.float32)
    np.testing.assert_array_equal(back, want.astype(np.float32))


def test_float_schemes_round_trip(rng):
    x = rng.standard_normal((8, 40)).astype(np.float32)
    for scheme, dtype in (("f32", np.float32), ("f16", np.float16), ("bf16", ml_dtypes.bfloat16)):
        qt = lowbit.quantize(x, scheme)
        assert qt.codes.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(qt.dequantize(), x.astype(dtype).astype(np.float32))
        assert qt.bits_per_weight == 8 * np.dtype(dtype).itemsize


@pytest.mark.parametrize(("dtype", "big"), [(np.float16, 70000.0), (ml_dtypes.bfloat16, 3.4e38)])
def test_cast_errors_report_the_first_place_across_chunks_and_threads(dtype, big, threads):
    x = np.ones(600_000, np.float32)  # more than one task of the pool
    x[550_000] = np.nan
    x[300_001] = big
    with pytest.raises(ValueError, match="emb: value at flat index 300001 overflows"):
        cast(x, dtype, "emb")
    x[300_001] = 1.0
    with pytest.raises(ValueError, match="emb: NaN or Inf at flat index 550000"):
        cast(x, dtype, "emb")
