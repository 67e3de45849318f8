"""mse and hqq, and their weighted variants wmse and whqq: agreement with the
NumPy reference, and what they buy over rtn (and weighting over none)."""

from __future__ import annotations

import lowbit
import numpy as np
import pytest
from lowbit.quant import reference
from lowbit.quant.schemes import CALIBRATED_METHODS, SCHEMES, STATISTICS_METHODS
from lowbit.quant.synthetic import heavy_tailed_matrix

CASES = [
    (scheme, gs, method)
    for scheme, gs in [
        ("int4", 32),
        ("int4", None),
        ("uint8", None),
        ("uint4", 32),
        ("uint4", None),
        ("uint2", 64),
        ("uint1", None),
        ("ternary", None),
    ]
    for method in SCHEMES[scheme].methods
    if method != "rtn" and method not in STATISTICS_METHODS
]
WEIGHTED = [
    (scheme, gs, method)
    for scheme, gs, base in CASES
    for method, searched in CALIBRATED_METHODS.items()
    if searched == base
]


def _importance(cols: int, seed: int = 5) -> np.ndarray:
    """Per-column weights spread as real E[x^2] are (max/mean around 100)."""
    return np.random.default_rng(seed).lognormal(0.0, 1.5, cols).astype(np.float32)


def _sse(x: np.ndarray, x_hat: np.ndarray) -> float:
    return float(((x.astype(np.float64) - x_hat) ** 2).sum())


@pytest.mark.parametrize(("scheme", "gs", "method"), CASES)
def test_search_agrees_with_reference(scheme, gs, method, simd_target):
    """Same squared error as the reference to 1e-5.

    Sums of squared errors are accumulated in a different order by each SIMD
    width, so a near-tie between two candidates may go either way; the error
    they reach is the same to float32 summation accuracy.
    """
    s = SCHEMES[scheme]
    x = heavy_tailed_matrix(96, 256, seed=7)
    qt = lowbit.quantize(x, scheme, group_size=gs, method=method)
    codes, scales, zeros = reference.quantize(s, x, gs, method)
    ref = reference.dequantize(s, codes, scales, zeros, x.shape[1], gs)
    assert _sse(x, qt.dequantize()) == pytest.approx(_sse(x, ref), rel=1e-5)
    # The kernel's own codes reconstruct exactly what its parameters say.
    own = reference.dequantize(
        s,
        qt.codes,
        qt.scales.astype(np.float32),
        None if qt.zeros is None else qt.zeros.astype(np.float32),
        x.shape[1],
        gs,
    )
    np.testing.assert_array_equal(qt.dequantize(), own)


# (scheme, group size, method, most squared error allowed relative to rtn).
# Measured on heavy_tailed_matrix(512, 1024, seed=3): int4/32 mse 0.84,
# uint4/32 mse 0.96 and hqq 0.89, uint4/row mse 0.63 and hqq 0.92, uint2/64 mse
# 0.49 and hqq 0.59, uint1/row mse 0.27 and hqq 0.02, ternary mse 0.84.
MARGINS = [
    ("int4", 32, "mse", 0.96),  # rtn already uses all 16 levels (signed extreme on -8)
    ("int4", None, "mse", 0.70),
    ("uint4", 32, "mse", 0.99),
    ("uint4", 32, "hqq", 0.93),
    ("uint4", None, "mse", 0.75),
    ("uint4", None, "hqq", 0.97),
    ("uint2", 64, "mse", 0.60),
    ("uint2", 64, "hqq", 0.70),
    ("uint1", None, "mse", 0.40),
    ("uint1", None, "hqq", 0.10),
    ("ternary", None, "mse", 0.90),
]


@pytest.mark.parametrize(("scheme", "gs", "method", "ratio"), MARGINS)
def test_search_beats_rtn_on_heavy_tailed_weights(scheme, gs, method, ratio):
    x = heavy_tailed_matrix(512, 1024, seed=3)
    rtn = _sse(x, lowbit.quantize(x, scheme, group_size=gs, method="rtn").dequantize())
    better = _sse(x, lowbit.quantize(x, scheme, group_size=gs, method=method).dequantize())
    assert better <= ratio * rtn


@pytest.mark.parametrize(("scheme", "gs", "method"), CASES)
def test_search_never_worse_than_rtn_per_group(scheme, gs, method):
    """Both methods start from rtn and keep a candidate only when it lowers the error."""
    x = heavy_tailed_matrix(64, 256, seed=11)
    g = x.shape[1] if gs is None else gs
    rtn = lowbit.quantize(x, scheme, group_size=gs).dequantize()
    found = lowbit.quantize(x, scheme, group_size=gs, method=method).dequantize()
    per_group = lambda y: ((x - y).astype(np.float64) ** 2).reshape(64, -1, g).sum(-1)  # noqa: E731
    assert np.all(per_group(found) <= per_group(rtn) * (1 + 1e-5) + 1e-12)


@pytest.mark.parametrize(("scheme", "gs", "method"), WEIGHTED)
def test_weighted_search_agrees_with_reference(scheme, gs, method, simd_target):
    """Same weighted squared error as the reference to 1e-5 (near-ties may go
    either way by summation order, as for the unweighted searches); on this
    matrix the codes agree bit for bit."""
    s = SCHEMES[scheme]
    x = heavy_tailed_matrix(96, 256, seed=7)
    w = _importance(256)
    qt = lowbit.quantize(x, scheme, group_size=gs, method=method, importance=w)
    codes, scales, zeros = reference.quantize(s, x, gs, method, w)
    ref = reference.dequantize(s, codes, scales, zeros, x.shape[1], gs)
    wsse = lambda y: float((w * (x.astype(np.float64) - y) ** 2).sum())  # noqa: E731
    assert wsse(qt.dequantize()) == pytest.approx(wsse(ref), rel=1e-5)
    np.testing.assert_array_equal(qt.codes, codes)


@pytest.mark.parametrize(("scheme", "gs", "method"), WEIGHTED)
def test_unit_importance_is_the_unweighted_search(scheme, gs, method, simd_target):
    """Weights of 1 give the unweighted search's result bit for bit."""
    x = heavy_tailed_matrix(64, 256, seed=2)
    ones = np.ones(256, np.float32)
    a = lowbit.quantize(x, scheme, group_size=gs, method=method, importance=ones)
    b = lowbit.quantize(x, scheme, group_size=gs, method=CALIBRATED_METHODS[method])
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scales, b.scales)
    if b.zeros is not None:
        np.testing.assert_array_equal(a.zeros, b.zeros)
