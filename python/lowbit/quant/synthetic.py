"""Weight matrices that look like trained ones, for demos, tests and benchmarks."""

from __future__ import annotations

import numpy as np


def heavy_tailed_matrix(
    rows: int,
    cols: int,
    seed: int = 0,
    dof: float = 4.0,
    outlier_cols: int = 4,
    outlier_gain: float = 8.0,
    std: float = 0.02,
) -> np.ndarray:
    """A float32 ``[rows, cols]`` matrix with Student-t rows and a few outlier columns.

    Trained LLM weights are heavy-tailed (kurtosis well above a Gaussian's) and
    some input channels carry much larger weights than the rest; both make
    absmax scaling waste range, which is what clip search and HQQ recover.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_t(dof, size=(rows, cols)).astype(np.float32)
    w *= np.float32(std / np.sqrt(dof / (dof - 2.0)))
    if outlier_cols:
        cols_hit = rng.choice(cols, size=min(outlier_cols, cols), replace=False)
        w[:, cols_hit] *= np.float32(outlier_gain)
    return w
