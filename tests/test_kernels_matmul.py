"""The fused dequantize-and-dot kernel (``QuantizedTensor.matmul``) against NumPy."""

from __future__ import annotations

import lowbit
import numpy as np
import pytest
from lowbit.quant.schemes import SCHEMES

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


# Both kernels of MatMul on every scheme: up to 16 tokens (8 for float
# weights) run the fused GEMV (codes decoded in registers, 4 tokens per pass),
# more the panel GEMM. Rows are odd (tiles of 4 rows and panels of 2 vectors
# leave remainders); cols leave a partial last block (8-bit blocks hold 16
# codes, 4-bit 32, 2-bit 64, 1-bit 128).
MATMUL_NS = [1, 2, 3, 5, 8, 17, 64, 130]
MATMUL_ROWS = 67
# (scheme, method, group_size, cols)
MATMUL_CASES = [
    ("int8", "rtn", None, 200),
    ("int8", "mse", 16, 48),
    ("int4", "rtn", 16, 80),
    ("int4", "rtn", 32, 96),
    ("int4", "rtn", 64, 192),
    ("int4", "rtn", None, 200),
    ("int4", "mse", 32, 96),
    ("ternary", "rtn", None, 200),
    ("ternary", "mse", 16, 80),
    ("f32", "rtn", None, 200),
    ("f16", "rtn", None, 200),
    ("bf16", "rtn", None, 48),
] + [
    case
    for bits in (8, 6, 5, 4, 3, 2, 1)
    for case in (
        (f"uint{bits}", "rtn", None, 200),
        (f"uint{bits}", "hqq", 16, 48),
        (f"uint{bits}", "rtn", 32, 96),
        (f"uint{bits}", "mse", None, 80),
    )
]


def _case_id(case: tuple[str, str, int | None, int]) -> str:
    scheme, method, gs, cols = case
    return f"{scheme}-{method}-g{gs or 'row'}-c{cols}"


def _matmul_bound(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """|error| allowed for float32 sums of ``cols`` products (float64 reference).

    Recursive float32 summation errs by at most about cols * eps * sum |x w|.
    The fused GEMV sums ``scale * code * x`` and subtracts ``scale * zero *
    sum(x)`` per group, whose terms can exceed ``|w x|``; measured errors of
    both kernels stay below 5% of this bound all the same.
    """
    cols = x.shape[1]
    eps = float(np.finfo(np.float32).eps)
    return cols * eps * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T)


@pytest.mark.parametrize("case", MATMUL_CASES, ids=_case_id)
def test_matmul_kernels_every_scheme(
    case: tuple[str, str, int | None, int], simd_target: str, rng: np.random.Generator
) -> None:
    scheme, method, gs, cols = case
    w = rng.standard_normal((MATMUL_ROWS, cols)).astype(np.float32)
    qt = lowbit.quantize(w, scheme, group_size=gs, method=method)
    wq = qt.dequantize().astype(np.float64)
    weight = qt.weight()
    for n in MATMUL_NS:
        x = rng.standard_normal((n, cols)).astype(np.float32)
        want = x.astype(np.float64) @ wq.T
        one, two = _on_one_and_two_threads(weight, x)
        assert one.shape == (n, MATMUL_ROWS)
        assert one.dtype == np.float32
        np.testing.assert_array_equal(one, two, err_msg=f"n={n}: threads changed the result")
        err = np.abs(one.astype(np.float64) - want)
        bound = _matmul_bound(x, wq)
        assert np.all(err <= bound), f"n={n}: worst error/bound {np.max(err / bound):.3g}"


def _on_one_and_two_threads(weight, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weight.matmul(x)`` with 1 kernel thread, then with 2."""
    before = lowbit.num_threads()
    try:
        lowbit.set_num_threads(1)
        one = weight.matmul(x)
        lowbit.set_num_threads(2)
        return one, weight.matmul(x)
    finally:
        lowbit.set_num_threads(before)


@pytest.mark.parametrize("scheme", ["int8", "int4", "uint4", "uint1", "f16"])
@pytest.mark.parametrize("n", [1, 4, 9, 130])
def test_matmul_thread_count_many_tasks(scheme: str, n: int, rng: np.random.Generator) -> None:
    # Enough rows that both kernels split them into several tasks.
    w = rng.standard_normal((1031, 208)).astype(np.float32)
    x = rng.standard_normal((n, 208)).astype(np.float32)
    weight = lowbit.quantize(w, scheme, group_size=16 if scheme == "int4" else None).weight()
    one, two = _on_one_and_two_threads(weight, x)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("case", MATMUL_CASES[::3], ids=_case_id)
def test_weight_row_is_dequantized_row(
    case: tuple[str, str, int | None, int], simd_target: str, rng: np.random.Generator
) -> None:
    scheme, method, gs, cols = case
    qt = lowbit.quantize(
        rng.standard_normal((9, cols)).astype(np.float32), scheme, group_size=gs, method=method
    )
    weight = qt.weight()
    want = qt.dequantize()
    for r in (0, 4, 8):
        np.testing.assert_array_equal(weight.row(r), want[r])
