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

    @property
    def exact(self) -> bool:
        """A reconstruction equal to the original (``snr_db`` is then infinite)."""
        return self.max_abs == 0.0

    def as_dict(self) -> dict[str, float | bool]:
        return {**asdict(self), "exact": self.exact}


# Elements compared per step: float64 copies of whole embedding matrices would
# cost gigabytes; chunks of this size keep the extra memory near 50 MB.
CHUNK = 1 << 21


def weight_error(x: np.ndarray, x_hat: np.ndarray) -> WeightError:
    """Compare two same-shaped arrays, accumulating in float64 chunk by chunk."""
    a_all = np.asarray(x).reshape(-1)
    b_all = np.asarray(x_hat).reshape(-1)
    if np.shape(x) != np.shape(x_hat):
        raise ValueError(f"shapes differ: {np.shape(x)} vs {np.shape(x_hat)}")
    sig = noise = dot = b2 = max_abs = 0.0
    for start in range(0, a_all.size, CHUNK):
        a = a_all[start : start + CHUNK].astype(np.float64)
        b = b_all[start : start + CHUNK].astype(np.float64)
        diff = a - b
        sig += float(a @ a)
        noise += float(diff @ diff)
        dot += float(a @ b)
        b2 += float(b @ b)
        max_abs = max(max_abs, float(np.abs(diff).max()))
    denom = float(np.sqrt(sig) * np.sqrt(b2))
    return WeightError(
        rel_error=float(np.sqrt(noise / sig)) if sig > 0 else float(noise > 0),
        # No noise: infinite; noise on a zero signal (a zero vector changed): -inf.
        snr_db=(
            float(10.0 * np.log10(sig / noise))
            if noise > 0 and sig > 0
            else float("inf")
            if noise == 0
            else float("-inf")
        ),
        max_abs=max_abs,
        cosine=dot / denom if denom > 0 else 1.0,
        mse=noise / max(1, a_all.size),
    )
