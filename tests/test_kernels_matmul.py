"""The fused dequantize-and-dot kernel (``QuantizedTensor.matmul``) against NumPy."""

from __future__ import annotations

import lowbit
import numpy as np
import pytest
from lowbit.schemes import SCHEMES

SHAPES = [(1, 5, None), (7, 33, None), (13, 96, 32), (64, 257, None), (40, 384, 128)]


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize(("rows", "cols", "gs"), SHAPES)
@pytest.mark.parametrize("n", [1, 3, 17])
def test_matmul_equals_dequantized_weights_times_x(
    scheme, rows, cols, gs, n, simd_target, threads, rng
):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    qt = lowbit.quantize(w, scheme, group_size=gs)
    want = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
    got = qt.matmul(x)
    assert got.shape == (n, rows)
    assert got.dtype == np.float32
    # float32 sums of `cols` products: error bound ~ cols * eps * sum |w x|.
    bound = cols * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(qt.dequantize()).T)
    assert np.all(np.abs(got - want) <= bound + 1e-30)


def test_matmul_vector_and_thread_independence(rng):
    w = rng.standard_normal((300, 512)).astype(np.float32)
    x = rng.standard_normal(512).astype(np.float32)
    qt = lowbit.quantize(w, "int4")
    lowbit.set_num_threads(1)
    one = qt.matmul(x)
    lowbit.set_num_threads(2)
    two = qt.matmul(x)
    assert one.shape == (300,)
    np.testing.assert_array_equal(one, two)


def test_matmul_bad_input(rng):
    qt = lowbit.quantize(rng.standard_normal((8, 64)).astype(np.float32), "int8")
    with pytest.raises(ValueError, match="does not fit"):
        qt.matmul(np.zeros((2, 63), np.float32))
    with pytest.raises(TypeError, match="float32"):
        qt.matmul(np.zeros((2, 64), np.float64))
