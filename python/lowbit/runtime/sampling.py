"""Choosing the next token from logits: greedy, temperature, top-k, top-p.

Seeded with a NumPy Generator, so the same seed gives the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.util.errors import ArgumentError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # nucleus: smallest set whose probability reaches top_p

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ArgumentError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ArgumentError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ArgumentError(f"top_p must be in (0, 1], got {self.top_p}")


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """The next token id from one row of logits."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < z.size:
        # Keep the k largest; ties at the threshold stay in.
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        # The smallest prefix whose mass reaches top_p (at least one token).
        keep = int(np.searchsorted(cumulative, params.top_p)) + 1
        mask = np.zeros_like(p)
        mask[order[:keep]] = 1.0
        p = p * mask
        p /= p.sum()
    return int(rng.choice(p.size, p=p))
