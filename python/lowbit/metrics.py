"""Error measures between a weight matrix and its reconstruction."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class WeightError:
    """How far a reconstruction ``x̂`` is from ``x``.

    ``rel_error``: ‖x - x̂‖_F / ‖x‖_F. ``snr_db``: 10·log10(‖x‖² / ‖x - x̂‖²).
    ``max_abs``: max |x - x̂|. ``cosine``: cosine similarity of the flattened
    matrices. ``mse``: mean squared error.
    """

    rel_error: float
    snr_db: float
    max_abs: float
    cosine: float
    mse: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def weight_error(x: np.ndarray, x_hat: np.ndarray) -> WeightError:
    """Compare two same-shaped arrays in float64."""
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(x_hat, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {np.shape(x)} vs {np.shape(x_hat)}")
    diff = a - b
    sig = float(a @ a)
    noise = float(diff @ diff)
    denom = float(np.sqrt(sig) * np.sqrt(float(b @ b)))
    return WeightError(
        rel_error=float(np.sqrt(noise / sig)) if sig > 0 else float(noise > 0),
        snr_db=float(10.0 * np.log10(sig / noise)) if noise > 0 else float("inf"),
        max_abs=float(np.abs(diff).max()) if diff.size else 0.0,
        cosine=float(a @ b) / denom if denom > 0 else 1.0,
        mse=noise / max(1, a.size),
    )
