"""The C++ kernels against the NumPy reference, bit for bit, for round-to-nearest."""

from __future__ import annotations

import lowbit
import ml_dtypes
import numpy as np
import pytest
from lowbit.quant import reference
from lowbit.quant.schemes import SCHEMES

INT_SCHEMES = [s for s in SCHEMES.values() if not s.is_float]
DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]

# (rows, cols, group_size): odd row lengths and tails shorter than any vector
# per row; several groups per row and partial last blocks when grouped.
SHAPES = [
    (1, 1, None),
    (3, 5, None),
    (2, 17, None),
    (5, 33, None),
    (4, 100, None),
    (3, 129, None),
    (7, 257, None),
    (3, 16, 16),
    (5, 48, 16),
    (4, 96, 32),
    (3, 160, 32),
    (2, 192, 64),
    (3, 384, 128),
    (8, 4096, None),  # a real row length: long sums, many blocks
]


def _matrix(rng: np.random.Generator, rows: int, cols: int, dtype: type) -> np.ndarray:
    x = rng.standard_t(4, size=(rows, cols)).astype(np.float32) * np.float32(0.05)
    if rows > 2:
        x[1] = 0.0  # an all-zero row: scale 0, codes 0
        x[2, : max(1, cols // 2)] = np.float32(0.25)  # a constant run
    return x.astype(dtype)


def _check_equal(s, x, qt, gs):
    codes, scales, zeros = reference.quantize(s, x, gs, "rtn")
    np.testing.assert_array_equal(qt.codes, codes)
    np.testing.assert_array_equal(qt.scales.astype(np.float32), scales)
    if s.asymmetric:
        np.testing.assert_array_equal(qt.zeros.astype(np.float32), zeros)
    else:
        assert qt.zeros is None
    deq_ref = reference.dequantize(s, codes, scales, zeros, x.shape[1], gs)
    np.testing.assert_array_equal(qt.dequantize(), deq_ref)
    out = np.full(x.shape, np.nan, np.float32)
    assert qt.dequantize(out=out) is out
    np.testing.assert_array_equal(out, deq_ref)


@pytest.mark.parametrize("scheme", [s.name for s in INT_SCHEMES])
@pytest.mark.parametrize(("rows", "cols", "gs"), SHAPES)
def test_rtn_matches_reference_on_every_target(scheme, rows, cols, gs, simd_target, threads, rng):
    s = SCHEMES[scheme]
    x = _matrix(rng, rows, cols, np.float32)
    _check_equal(s, x, lowbit.quantize(x, scheme, group_size=gs), gs)


@pytest.mark.parametrize("scheme", [s.name for s in INT_SCHEMES])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize(("rows", "cols", "gs"), [(3, 129, None), (5, 96, 32), (2, 384, 128)])
def test_rtn_reads_16_bit_inputs_directly(scheme, dtype, rows, cols, gs, rng):
    s = SCHEMES[scheme]
    x = _matrix(rng, rows, cols, dtype)
    _check_equal(s, x, lowbit.quantize(x, scheme, group_size=gs), gs)


@pytest.mark.parametrize("scheme", [s.name for s in INT_SCHEMES])
def test_tiny_and_large_magnitudes(scheme, rng):
    """float16 group scales near their subnormal range and per-row float32 scales."""
    s = SCHEMES[scheme]
    for magnitude in (1e-7, 1e-4, 30.0):
        x = rng.standard_normal((4, 64)).astype(np.float32) * np.float32(magnitude)
        for gs in (None, 32):
            _check_equal(s, x, lowbit.quantize(x, scheme, group_size=gs), gs)


@pytest.mark.parametrize("scheme", [s.name for s in INT_SCHEMES if s.rule != "meanabs"])
@pytest.mark.parametrize("gs", [None, 32])
def test_rtn_error_at_most_half_a_step(scheme, gs, rng):
    """|x - x̂| <= scale/2, plus the float16 rounding of scale and zero point.

    The stored scale is within a relative 2**-11 of the exact one, so the
    clamped extremes of a group and the rounded zero point move a code by at
    most (qmax + |zero| + 1) * 2**-11 steps; the bound doubles that.
    ``signedmax`` puts the extreme on qmin, so values of the other sign may
    reach qmax + 1 steps and clamp to qmax: up to one step there.
    """
    s = SCHEMES[scheme]
    x = _matrix(rng, 64, 256, np.float32)
    qt = lowbit.quantize(x, scheme, group_size=gs)
    g = x.shape[1] if gs is None else gs
    scale = np.abs(np.repeat(qt.scales.astype(np.float32), g, axis=1))
    zero = 0.0 if qt.zeros is None else np.repeat(np.abs(qt.zeros.astype(np.float32)), g, axis=1)
    slack = 2.0**-10 * (max(abs(s.qmin), s.qmax) + zero + 1)
    err = np.abs(x - qt.dequantize())
    step = np.full(x.shape, 0.5)
    if s.rule == "signedmax":
        step[np.abs(x) > scale * (s.qmax + 0.5)] = 1.0
    assert np.all(err <= scale * (step + slack))


def test_ternary_error_is_half_a_step_inside_the_range(rng):
    x = _matrix(rng, 32, 256, np.float32)
    qt = lowbit.quantize(x, "ternary")
    s = np.broadcast_to(qt.scales.astype(np.float32), x.shape)
    err = np.abs(x - qt.dequantize())
    inside = np.abs(x) <= 1.5 * s
    # Rounding of x * (1/s) and of (q * s) adds at most a few float32 ulps.
    assert np.all(err[inside] <= s[inside] * np.float32(0.5 + 2**-20))
    outside = ~inside
    np.testing.assert_allclose(err[outside], (np.abs(x) - s)[outside], rtol=1e-6)


def test_all_zero_group_has_zero_scale_and_codes():
    x = np.zeros((2, 64), np.float32)
    for name in ("int8", "int4", "uint4", "ternary", "uint1"):
        qt = lowbit.quantize(x, name, group_size=32)
        assert np.all(qt.scales == 0)
        assert np.all(qt.dequantize() == 0)
        if qt.zeros is not None:
            assert np.all(qt.zeros == 0)


def test_results_do_not_depend_on_thread_count(rng):
    # Enough rows for many tasks per call (about 64 Ki weights per task).
    x = rng.standard_normal((2048, 256)).astype(np.float32)
    before = lowbit.num_threads()
    try:
        outs = []
        for n in (1, 2):
            lowbit.set_num_threads(n)
            for scheme, method in (("int4", "mse"), ("uint4", "hqq"), ("int8", "rtn")):
                qt = lowbit.quantize(x, scheme, group_size=32, method=method)
                outs.append((n, scheme, qt.codes, qt.scales, qt.dequantize()))
        half = len(outs) // 2
        for a, b in zip(outs[:half], outs[half:], strict=True):
            for u, v in zip(a[2:], b[2:], strict=True):
                np.testing.assert_array_equal(u, v)
    finally:
        lowbit.set_num_threads(before)


def test_int4_packing_layout():
    """Low nibbles hold the first 16 codes of a 32-code block, high nibbles the next 16."""
    s = SCHEMES["int4"]
    q = np.arange(-8, 8, dtype=np.int32)
    x = np.concatenate([q, q[::-1]]).astype(np.float32)[None, :]  # absmax 8 -> scale 8/7
    qt = lowbit.quantize(x, "int4", group_size=32)
    codes = reference.unpack(s, qt.codes, 32)[0]
    stored = qt.codes[0]
    np.testing.assert_array_equal(stored & 0xF, codes[:16])
    np.testing.assert_array_equal(stored >> 4, codes[16:])


@pytest.mark.parametrize(
    ("scheme", "gs", "cols", "expected"),
    [
        ("int4", 32, 4096, 4.5),
        ("int8", None, 4096, 8 + 32 / 4096),
        ("uint4", None, 4096, 4 + 64 / 4096),
        ("uint2", 64, 4096, 2 + 32 / 64),
        ("ternary", None, 4096, 2 + 32 / 4096),
    ],
)
def test_bits_per_weight(scheme, gs, cols, expected):
    x = np.ones((8, cols), np.float32)
    assert lowbit.quantize(x, scheme, group_size=gs).bits_per_weight == pytest.approx(expected)


@pytest.mark.parametrize("scheme", [s.name for s in SCHEMES.values()])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize(("rows", "cols", "gs"), [(3, 129, None), (5, 96, 32)])
def test_relative_error_matches_the_dequantized_matrix(
    scheme, dtype, rows, cols, gs, simd_target, rng
):
    x = _matrix(rng, rows, cols, dtype)
    qt = lowbit.quantize(x, scheme, group_size=gs)
    ref = x.astype(np.float64)
    expected = np.linalg.norm(ref - qt.dequantize()) / np.linalg.norm(ref)
    # float32 sums within a row: agreement to float32 rounding, not bit for bit.
    assert qt.relative_error(x) == pytest.approx(expected, rel=1e-5, abs=1e-9)
