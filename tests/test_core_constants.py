"""The layout and search constants the Python side uses are the core's, in the reference's types."""

import numpy as np
from lowbit import _core
from lowbit.quant import reference
from lowbit.quant.schemes import BLOCK_BYTES


def test_block_bytes_comes_from_the_core():
    assert BLOCK_BYTES == _core.BLOCK_BYTES
    assert type(BLOCK_BYTES) is int
    assert BLOCK_BYTES == 16  # the stored layout, fixed by the format


def test_hqq_constants_come_from_the_core_as_float32():
    for name in ("HQQ_LP_NORM", "HQQ_BETA", "HQQ_KAPPA"):
        value = getattr(reference, name)
        assert type(value) is np.float32, name
        assert value == np.float32(getattr(_core, name)), name
    assert reference.HQQ_ITERS == _core.HQQ_ITERS
    assert type(reference.HQQ_ITERS) is int
    # HQQ's published defaults (Badri & Shaji, 2023).
    published = (np.float32(0.7), np.float32(10.0), np.float32(1.01), 20)
    used = (reference.HQQ_LP_NORM, reference.HQQ_BETA, reference.HQQ_KAPPA, reference.HQQ_ITERS)
    assert used == published


def test_mse_grids_come_from_the_core_as_float32():
    for name in ("MSE_RATIOS", "MSE_RATIOS_MEANABS"):
        grid = getattr(reference, name)
        core = getattr(_core, name)
        assert isinstance(grid, tuple), name
        assert all(type(r) is np.float32 for r in grid), name
        assert grid == tuple(np.float32(r) for r in core), name
    # The grids themselves (src/quant/quant_params.h: MseRatio): 1 down to
    # 0.525, and 0.5 to 1.5 around a mean, each rounded once to float32.
    grid = tuple(np.float32(1.0 - 0.025 * i) for i in range(20))
    grid_meanabs = tuple(np.float32(0.5 + 0.05 * i) for i in range(21))
    used = (reference.MSE_RATIOS, reference.MSE_RATIOS_MEANABS)
    assert used == (grid, grid_meanabs)
