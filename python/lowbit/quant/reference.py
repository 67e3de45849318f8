"""The NumPy reference of every scheme and method: the spec the C++ kernels are tested against.

Readable first, fast second. All arithmetic is float32 with one rounding per
operation (``x * inv`` then ``+ zero``, never fused), so the SIMD kernels agree
with it bit for bit for ``rtn``. ``mse`` and ``hqq`` sum squared errors, and
summation order may break near-ties differently; their results agree to within
that.
"""

from __future__ import annotations

import numpy as np

from lowbit import _core
from lowbit.quant.schemes import CALIBRATED_METHODS, Scheme, plane_bytes

F32 = np.float32
Params = tuple[np.ndarray, np.ndarray, np.ndarray]  # scale, 1/scale, zero per group

# Clip-ratio grids of the ``mse`` method, from the core (src/quant/quant_params.h:
# MseRatio): the float32 values the kernels use.
MSE_RATIOS = tuple(F32(r) for r in _core.MSE_RATIOS)
MSE_RATIOS_MEANABS = tuple(F32(r) for r in _core.MSE_RATIOS_MEANABS)

# HQQ's published defaults, from the core: lp-norm, beta, kappa, iterations.
HQQ_LP_NORM = F32(_core.HQQ_LP_NORM)
HQQ_BETA = F32(_core.HQQ_BETA)
HQQ_KAPPA = F32(_core.HQQ_KAPPA)
HQQ_ITERS: int = _core.HQQ_ITERS


def _store(v: np.ndarray, f16: bool) -> np.ndarray:
    """Round parameters to what is stored: float16 for groups, float32 per row."""
    v = v.astype(F32)
    return v.astype(np.float16).astype(F32) if f16 else v


def _inverse(scale: np.ndarray) -> np.ndarray:
    out = np.zeros_like(scale)
    np.divide(F32(1.0), scale, out=out, where=scale != 0)
    return out


def _params(s: Scheme, xg: np.ndarray, f16: bool, ratio: np.float32) -> Params:
    """Round-to-nearest (scale, 1/scale, zero) of each group row of ``xg``, clipped by ``ratio``."""
    if s.rule == "absmax":
        scale = _store((np.abs(xg).max(axis=1) * ratio) / F32(s.scale_divisor), f16)
        return scale, _inverse(scale), np.zeros_like(scale)
    if s.rule == "signedmax":
        mn, mx = xg.min(axis=1), xg.max(axis=1)
        extreme = np.where(-mn > mx, mn, mx)
        scale = _store((extreme * ratio) / F32(s.scale_divisor), f16)
        return scale, _inverse(scale), np.zeros_like(scale)
    if s.rule == "meanabs":
        mean = (np.abs(xg.astype(np.float64)).sum(axis=1) / xg.shape[1]).astype(F32)
        scale = _store(mean * ratio, f16)
        return scale, _inverse(scale), np.zeros_like(scale)
    mn = xg.min(axis=1) * ratio
    mx = xg.max(axis=1) * ratio
    constant = mx == mn  # exact with code 0: zero = -sign(x), scale = |x|
    with np.errstate(over="ignore"):
        scale = _store(np.where(constant, np.abs(mx), (mx - mn) / F32(s.qmax)), f16)
        inv = _inverse(scale)
        zero = np.where(constant, -np.sign(mx), _store(-mn * inv, f16)).astype(F32)
    return scale, inv, zero


def _codes(s: Scheme, xg: np.ndarray, inv: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Integer q of each element (before the code offset): round half to even, clamped."""
    t = xg * inv[:, None]
    if s.asymmetric:
        t = t + zero[:, None]
    return np.rint(np.clip(t, F32(s.qmin), F32(s.qmax)))


def _sse(
    s: Scheme,
    xg: np.ndarray,
    scale: np.ndarray,
    inv: np.ndarray,
    zero: np.ndarray,
    w: np.ndarray | None = None,
) -> np.ndarray:
    """Squared error per group; with importances ``w`` (same shape as xg),
    sum w d^2."""
    q = _codes(s, xg, inv, zero)
    rec = (q - zero[:, None]) * scale[:, None]
    d2 = (xg - rec).astype(np.float64) ** 2
    return (d2 if w is None else w * d2).sum(axis=1)


def _hqq(s: Scheme, xg: np.ndarray, f16: bool, w: np.ndarray | None = None) -> Params:
    scale, inv, zero = _params(s, xg, f16, F32(1.0))
    best_sse = _sse(s, xg, scale, inv, zero, w)
    active = (scale != 0) & (xg.min(axis=1) != xg.max(axis=1))
    beta = HQQ_BETA
    lo, hi = F32(s.qmin), F32(s.qmax)
    for _ in range(HQQ_ITERS):
        inv_beta = F32(1.0) / beta
        q = np.rint(np.clip(xg * inv[:, None] + zero[:, None], lo, hi))
        resid = xg - (q - zero[:, None]) * scale[:, None]
        mag = np.maximum(np.abs(resid), F32(1e-30))
        thresh = np.power(mag, HQQ_LP_NORM - F32(1.0)) * inv_beta
        e = np.copysign(np.maximum(np.abs(resid) - thresh, F32(0.0)), resid)
        t = q - (xg - e) * inv[:, None]
        if w is None:
            step = t.mean(axis=1, dtype=F32)
        else:
            # The weighted mean (all-zero weights: the plain mean).
            wsum = w.sum(axis=1, dtype=F32)
            with np.errstate(invalid="ignore", divide="ignore"):
                wmean = (w * t).sum(axis=1, dtype=F32) / wsum
            step = np.where(wsum > 0, wmean, t.mean(axis=1, dtype=F32)).astype(F32)
        with np.errstate(over="ignore", invalid="ignore"):
            cand = _store(step, f16)
        beta = beta * HQQ_KAPPA
        sse = _sse(s, xg, scale, inv, cand, w)
        improve = active & np.isfinite(cand) & (sse < best_sse)
        zero = np.where(improve, cand, zero)
        best_sse = np.where(improve, sse, best_sse)
        active = improve
        if not active.any():
            break
    return scale, inv, zero


def _find_params(
    s: Scheme, xg: np.ndarray, f16: bool, method: str, w: np.ndarray | None = None
) -> Params:
    """``w``: per-element importances of the calibrated methods (wmse, whqq)."""
    method = CALIBRATED_METHODS.get(method, method)
    if method == "hqq":
        return _hqq(s, xg, f16, w)
    best = _params(s, xg, f16, F32(1.0))
    if method == "rtn":
        return best
    best_sse = _sse(s, xg, *best, w)
    ratios = MSE_RATIOS_MEANABS if s.rule == "meanabs" else MSE_RATIOS
    for ratio in ratios[1:]:
        cand = _params(s, xg, f16, ratio)
        ok = np.isfinite(cand[0]) & np.isfinite(cand[2])
        sse = _sse(s, xg, *cand, w)
        better = ok & (sse < best_sse)
        best = (
            np.where(better, cand[0], best[0]),
            np.where(better, cand[1], best[1]),
            np.where(better, cand[2], best[2]),
        )
        best_sse = np.where(better, sse, best_sse)
    return best


def _pack_plane(codes: np.ndarray, bits: int) -> np.ndarray:
    """One plane: codes ``[rows, k * 128 // bits]`` (0 <= code < 2**bits) in
    16-byte blocks, the code at position ``k * 16 + j`` of a block in byte
    ``j``, bits ``[k * bits, (k + 1) * bits)``."""
    rows, cols = codes.shape
    per = 8 // bits
    blocks = codes.reshape(rows, cols // (16 * per), per, 16).astype(np.uint8)
    out = np.zeros((rows, blocks.shape[1], 16), dtype=np.uint8)
    for k in range(per):
        out |= blocks[:, :, k, :] << np.uint8(k * bits)
    return out.reshape(rows, -1)


def _unpack_plane(packed: np.ndarray, bits: int) -> np.ndarray:
    rows = packed.shape[0]
    per = 8 // bits
    blocks = packed.reshape(rows, -1, 1, 16).astype(np.int32)
    shifts = (np.arange(per, dtype=np.int32) * bits).reshape(1, 1, per, 1)
    return ((blocks >> shifts) & ((1 << bits) - 1)).reshape(rows, -1)


def pack(s: Scheme, codes: np.ndarray, cols: int) -> np.ndarray:
    """Pack stored codes ``[rows, s.padded_codes(cols)]`` (0 <= code <
    2**bits) of rows of ``cols`` weights into 16-byte blocks: one plane for
    widths that divide 8; for 3, 5 and 6 bits the low bits in one plane and
    the rest in another, the low plane first in each row, each plane as long
    as its blocks need for ``cols`` codes (src/quant/quant_params.h).
    """
    if len(s.planes) == 1:
        return _pack_plane(codes, s.bits)
    lo, hi = s.planes
    lo_codes = plane_bytes(cols, lo) * 8 // lo  # the low plane's blocks end first
    lows = _pack_plane(codes[:, :lo_codes] & ((1 << lo) - 1), lo)
    return np.concatenate([lows, _pack_plane(codes >> lo, hi)], axis=1)


def unpack(s: Scheme, packed: np.ndarray, cols: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``cols`` codes of each row, as int32."""
    if len(s.planes) == 1:
        return _unpack_plane(packed, s.bits)[:, :cols]
    lo, hi = s.planes
    lo_bytes = plane_bytes(cols, lo)
    low = _unpack_plane(packed[:, :lo_bytes], lo)[:, :cols]
    high = _unpack_plane(packed[:, lo_bytes:], hi)[:, :cols]
    return low | (high << lo)


def quantize(
    s: Scheme,
    x: np.ndarray,
    group_size: int | None,
    method: str = "rtn",
    importance: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reference quantization of a 2-D matrix: (codes, scales, zeros).

    ``importance``: float32 [cols], the per-column weights of the squared
    error that the calibrated methods (wmse, whqq) minimise.

    Codes are int8 ``[rows, cols]`` for int8, uint8 ``[rows, cols]`` for uint8,
    and packed uint8 ``[rows, row_bytes]`` otherwise. Scales and zeros are the
    stored values as float32 ``[rows, groups]`` (float16-exact for groups).
    """
    x = np.asarray(x).astype(F32)
    rows, cols = x.shape
    g = cols if group_size is None else group_size
    groups = cols // g
    f16 = group_size is not None
    xg = x.reshape(rows * groups, g)
    w = None
    if importance is not None:
        w = np.broadcast_to(np.asarray(importance, F32).reshape(1, groups, g), (rows, groups, g))
        w = w.reshape(rows * groups, g)
    scale, inv, zero = _find_params(s, xg, f16, method, w)
    q = _codes(s, xg, inv, zero).reshape(rows, cols).astype(np.int32)
    scales = scale.reshape(rows, groups)
    zeros = zero.reshape(rows, groups) if s.asymmetric else None
    last = inv.reshape(rows, groups)[:, -1], zero.reshape(rows, groups)[:, -1]
    return _stored_codes(s, q, *last), scales, zeros


def _stored_codes(
    s: Scheme, q: np.ndarray, last_inv: np.ndarray, last_zero: np.ndarray
) -> np.ndarray:
    """Integers ``q`` [rows, cols] as stored: 8-bit as they are, narrower
    codes packed, the last block padded with zeros quantized by the row's
    last group (``last_inv``, ``last_zero``)."""
    if s.bits == 8:
        return q.astype(np.int8 if s.qmin < 0 else np.uint8)
    rows, cols = q.shape
    pad = s.padded_codes(cols) - cols
    if pad:
        zq = _codes(s, np.zeros((rows, pad), F32), last_inv, last_zero)
        q = np.concatenate([q, zq.astype(np.int32)], axis=1)
    return pack(s, q + s.code_offset, cols)


def gptq(
    s: Scheme,
    x: np.ndarray,
    group_size: int | None,
    hessian: np.ndarray,
    damp: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reference GPTQ (lowbit.quant.gptq), as quantize returns it.

    The paper's column loop in float64, without the kernel's lazy batches:
    each column rounded with its group's parameters, its error divided by
    U[c, c] and spread over every later column of the row at once. A group's
    parameters come from the scheme's weighted search (hqq with zero points,
    mse without; weights diag(H)) on the group's weights as the earlier
    columns' errors left them, rounded to float32 for the search as the
    kernels see them.
    """
    from lowbit.quant.gptq import inverse_factor
    from lowbit.quant.schemes import gptq_search

    w = np.asarray(x, np.float64).copy()
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    f16 = group_size is not None
    u = inverse_factor(hessian, damp)
    imp = np.maximum(np.diag(hessian), 0).astype(F32)
    method = "w" + gptq_search(s.asymmetric)
    q = np.zeros((rows, cols), np.int32)
    scales = np.zeros((rows, cols // g), F32)
    zeros = np.zeros((rows, cols // g), F32)
    for c in range(cols):
        gi = c // g
        if c % g == 0:
            group = w[:, c : c + g].astype(F32)
            weights = np.broadcast_to(imp[c : c + g], group.shape)
            scale, inv, zero = _find_params(s, group, f16, method, weights)
            scales[:, gi], zeros[:, gi] = scale, zero
            inverses = inv
        col = w[:, c].astype(F32)[:, None]
        qc = _codes(s, col, inverses, zeros[:, gi])[:, 0]
        x_hat = (qc - zeros[:, gi]) * scales[:, gi]
        err = (w[:, c] - x_hat) / u[c, c]
        w[:, c + 1 :] -= np.outer(err, u[c, c + 1 :])
        w[:, c] = x_hat
        q[:, c] = qc
    codes = _stored_codes(s, q, _inverse(scales[:, -1]), zeros[:, -1])
    return codes, scales, zeros if s.asymmetric else None


def dequantize(
    s: Scheme,
    codes: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray | None,
    cols: int,
    group_size: int | None,
) -> np.ndarray:
    """Reference reconstruction ``scale * (code - zero)`` as float32 ``[rows, cols]``."""
    rows = codes.shape[0]
    g = cols if group_size is None else group_size
    u = codes.astype(np.int32) if s.bits == 8 else unpack(s, codes, cols)
    zero = zeros.astype(F32) if zeros is not None else np.full(scales.shape, s.code_offset, F32)
    per_elem = np.repeat(np.arange(cols // g), g)
    assert u.shape == (rows, cols)
    return (u.astype(F32) - zero[:, per_elem]) * scales.astype(F32)[:, per_elem]
