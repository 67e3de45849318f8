"""Rotary embedding frequencies as HuggingFace computes them, from config.json.

The runtime gets, per layer, the ``head_dim / 2`` inverse frequencies and the
factor that scales cos and sin; the angle of position p is ``p * inv_freq``.
Supported rope types: ``default``, ``linear`` and ``llama3``. Others (dynamic
NTK, YaRN, LongRoPE) are a clear error rather than silently different logits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lowbit.util.errors import LowbitError

SUPPORTED = ("default", "linear", "llama3")


class RopeError(LowbitError):
    """config.json asks for a rope type the runtime does not implement."""


def rope_parameters(config: dict[str, Any], layer_type: str | None = None) -> dict[str, Any]:
    """The rope parameters of one layer type, from either config.json style.

    transformers 5 writes ``rope_parameters`` (one dict, or one per layer type
    as Gemma 3 does); older files have ``rope_theta`` and ``rope_scaling``
    (and Gemma 3's ``rope_local_base_freq`` for sliding layers).
    """
    params = config.get("rope_parameters")
    if isinstance(params, dict) and layer_type in params and isinstance(params[layer_type], dict):
        return dict(params[layer_type])
    if isinstance(params, dict) and "rope_theta" in params:
        return dict(params)
    out: dict[str, Any] = dict(config.get("rope_scaling") or {})
    theta = config.get("rope_theta") or 10000.0
    if layer_type == "sliding_attention" and config.get("rope_local_base_freq") is not None:
        theta = config["rope_local_base_freq"]
        out = {}
    out["rope_theta"] = theta
    out.setdefault("rope_type", out.get("type", "default"))
    return out


def inv_freq(
    params: dict[str, Any], head_dim: int, where: str = "config.json"
) -> tuple[np.ndarray, float]:
    """(inverse frequencies float32 [head_dim / 2], cos/sin scaling factor)."""
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in SUPPORTED:
        raise RopeError(
            f"{where}: rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED)}"
        )
    theta = float(params.get("rope_theta") or 10000.0)
    dim = int((params.get("partial_rotary_factor") or 1.0) * head_dim)
    if dim != head_dim:
        raise RopeError(f"{where}: partial rotary embeddings are not supported")
    # As transformers: exponents in float32, base ** exponent rounded to
    # float32. The power is taken in float64 and rounded once, so that the
    # frequencies are the same on every machine (a float32 power differs in
    # its last bit between SIMD implementations; transformers' is within that).
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    power = np.power(np.float64(theta), exponents.astype(np.float64))
    freq = (1.0 / power).astype(np.float32)
    if rope_type == "linear":
        freq = (freq / np.float32(params["factor"])).astype(np.float32)
    elif rope_type == "llama3":
        freq = _llama3(freq, params)
    return np.ascontiguousarray(freq, dtype=np.float32), 1.0


def _llama3(freq: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Llama 3.1's frequency-dependent scaling: long wavelengths divided by
    ``factor``, short ones kept, a smooth blend between."""
    factor = float(params["factor"])
    low = float(params.get("low_freq_factor") or 1.0)
    high = float(params.get("high_freq_factor") or 4.0)
    old_context = float(params["original_max_position_embeddings"])
    low_wavelen = old_context / low
    high_wavelen = old_context / high
    wavelen = 2 * math.pi / freq
    scaled = np.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old_context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)
