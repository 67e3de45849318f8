"""Quantize weight matrices with the C++ kernels: ``lowbit.quantize`` and ``QuantizedTensor``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit import _core
from lowbit.quant.dtypes import FLOAT_SCHEME_DTYPES, cast, core_dtype, raw_view
from lowbit.quant.gptq import HessianFactor
from lowbit.quant.schemes import (
    CALIBRATED_METHODS,
    GPTQ,
    METHODS,
    Scheme,
    check_group_size,
    get_scheme,
    gptq_search,
)
from lowbit.util.errors import ArgumentError, ArgumentTypeError

_RULES = {
    "absmax": _core.ScaleRule.ABSMAX,
    "meanabs": _core.ScaleRule.MEANABS,
    "minmax": _core.ScaleRule.MINMAX,
    "signedmax": _core.ScaleRule.SIGNEDMAX,
}
_FLOAT_FORMATS = {
    "f32": _core.WeightFormat.F32,
    "f16": _core.WeightFormat.F16,
    "bf16": _core.WeightFormat.BF16,
}
_METHODS = {
    "rtn": _core.Method.RTN,
    "mse": _core.Method.MSE,
    "hqq": _core.Method.HQQ,
    # The weighted variants run the same searches, given importances.
    "wmse": _core.Method.MSE,
    "whqq": _core.Method.HQQ,
}

# Elements compared per step when measuring a float scheme's error: float64
# copies of a whole embedding matrix would cost gigabytes.
ERROR_CHUNK_ELEMENTS = 1 << 21

# Sentinel: use the scheme's default group size (int4: 32, others: one group per row).
DEFAULT = "default"


def core_params(s: Scheme, group_size: int | None, method: str) -> _core.QuantParams:
    """The numbers the kernels need for scheme ``s``."""
    p = _core.QuantParams()
    p.bits = s.bits
    p.qmin = s.qmin
    p.qmax = s.qmax
    p.code_offset = s.code_offset
    p.rule = _RULES[s.rule]
    p.scale_divisor = s.scale_divisor
    # GPTQ's group parameters come from its scheme's search (lowbit.quant.gptq).
    p.method = _METHODS[gptq_search(s.asymmetric) if method == GPTQ else method]
    p.group_size = group_size or 0
    # Group scales are stored as float16, per-row ones as float32.
    p.f16_params = group_size is not None
    return p


@dataclass(frozen=True)
class QuantizedTensor:
    """A quantized 2-D weight matrix (read-only once made).

    ``codes``: packed codes (uint8 ``[rows, row_bytes]``, or int8/uint8
    ``[rows, cols]`` for 8-bit schemes), or the values themselves for the
    float schemes. ``scales`` and ``zeros``: ``[rows, groups]``, float16 for
    groups and float32 per row; ``zeros`` is None for symmetric schemes.
    """

    scheme: str
    shape: tuple[int, int]
    codes: np.ndarray
    scales: np.ndarray | None = None
    zeros: np.ndarray | None = None
    group_size: int | None = None
    method: str = "rtn"

    @property
    def nbytes(self) -> int:
        """Stored bytes: codes, scales and zero points."""
        return sum(a.nbytes for a in (self.codes, self.scales, self.zeros) if a is not None)

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight, scales and zero points included."""
        weights = self.shape[0] * self.shape[1]
        return 8.0 * self.nbytes / weights if weights else 0.0  # an empty tensor stores nothing

    def rows(self, start: int, stop: int) -> QuantizedTensor:
        """Rows ``start:stop`` as a QuantizedTensor sharing this one's memory."""
        n = len(range(*slice(start, stop).indices(self.shape[0])))
        return QuantizedTensor(
            self.scheme,
            (n, self.shape[1]),
            self.codes[start:stop],
            None if self.scales is None else self.scales[start:stop],
            None if self.zeros is None else self.zeros[start:stop],
            self.group_size,
            self.method,
        )

    def relative_error(self, x: np.ndarray, name: str = "tensor") -> float:
        """‖x - x̂‖ / ‖x‖ against the source matrix ``x``, without materialising x̂.

        Integer schemes measure it in the C++ core (each row decoded into a
        row buffer, sums in float64); float schemes a block of rows at a time.
        """
        x = _check_input(x, name)
        if x.shape != self.shape:
            raise ArgumentError(f"{name}: shape {x.shape} differs from the quantized {self.shape}")
        s = get_scheme(self.scheme)
        if s.is_float:
            sig = noise = 0.0
            step = max(1, ERROR_CHUNK_ELEMENTS // x.shape[1])
            for r in range(0, x.shape[0], step):
                ref = cast(x[r : r + step], np.float32, name).astype(np.float64)
                diff = ref - self.rows(r, r + step).dequantize()
                sig += float(np.einsum("ij,ij->", ref, ref))
                noise += float(np.einsum("ij,ij->", diff, diff))
        else:
            signal, noises = _core.reconstruction_error(
                raw_view(x),
                core_dtype(x.dtype, name),
                self.codes,
                self.scales,
                self.zeros,
                core_params(s, self.group_size, self.method),
                name,
            )
            sig, noise = float(signal.sum()), float(noises.sum())
        return float(np.sqrt(noise / sig)) if sig > 0 else float(noise > 0)

    def _stored(self) -> tuple[Any, ...]:
        """What the core's calls on an integer scheme take, in their order:
        codes, scales, zeros, rows, cols and the scheme's parameters."""
        s = get_scheme(self.scheme)
        params = core_params(s, self.group_size, self.method)
        return self.codes, self.scales, self.zeros, self.shape[0], self.shape[1], params

    def weight(self, name: str | None = None) -> _core.Weight:
        """The C++ core's view of this matrix (shares its memory), for linear layers."""
        name = name or self.scheme
        s = get_scheme(self.scheme)
        if s.is_float:
            return _core.Weight.floats(raw_view(self.codes), _FLOAT_FORMATS[self.scheme], name)
        return _core.Weight.quantized(*self._stored(), name)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """``x @ W.T`` for float32 ``x`` ``[n, cols]`` (or ``[cols]``): a linear layer.

        Runs in the C++ core for every scheme: W is never materialised in float32.
        """
        x = np.asarray(x)
        if x.dtype != np.float32:
            raise ArgumentTypeError(f"matmul input: expected float32, got {x.dtype}")
        vector = x.ndim == 1
        x2 = np.ascontiguousarray(x.reshape(1, -1) if vector else x)
        if x2.ndim != 2 or x2.shape[1] != self.shape[1]:
            raise ArgumentError(
                f"matmul input: shape {x.shape} does not fit a weight of shape {self.shape}"
            )
        y = self.weight().matmul(x2)
        return y[0] if vector else y

    def dequantize(self, out: np.ndarray | None = None) -> np.ndarray:
        """The reconstructed weights as float32, same shape as the input.

        ``out``: a C-contiguous float32 array of that shape to write into, so
        that repeated calls reuse one buffer.
        """
        if out is not None:
            _check_out(out, tuple(self.shape), self.scheme)
        s = get_scheme(self.scheme)
        if s.is_float:
            values = cast(self.codes, np.float32, self.scheme)
            if out is None:
                return values
            out[...] = values
            return out
        return _core.dequantize(*self._stored(), self.scheme, out)


def _check_out(out: object, shape: tuple[int, ...], name: str) -> None:
    """An ``out`` array the result can be written into as it is: anything else
    (float64, read-only, strided) would be filled through a copy, or not."""
    if not isinstance(out, np.ndarray):
        raise ArgumentTypeError(f"{name}: out must be a numpy array, got {type(out).__name__}")
    problem = None
    if out.dtype != np.float32:
        problem = f"dtype {out.dtype}"
    elif out.shape != shape:
        problem = f"shape {out.shape}"
    elif not out.flags.c_contiguous:
        problem = "a non-contiguous array"
    elif not out.flags.writeable:
        problem = "a read-only array"
    if problem is not None:
        raise ArgumentError(
            f"{name}: out must be a writeable C-contiguous float32 array of shape {shape}, "
            f"got {problem}"
        )


def _check_input(x: object, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ArgumentTypeError(f"{name}: expected a numpy array, got {type(x).__name__}")
    core_dtype(x.dtype, name)
    if x.ndim != 2:
        raise ArgumentError(f"{name}: expected a 2-D matrix, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ArgumentError(f"{name}: matrix is empty (shape {x.shape})")
    if not x.flags.c_contiguous:
        warnings.warn(
            f"{name}: array is not C-contiguous; quantizing a contiguous copy",
            stacklevel=3,
        )
        x = np.ascontiguousarray(x)
    return x


def resolve_group_size(s: Scheme, group_size: int | str | None) -> int | None:
    """The group size to use: the scheme's default for ``DEFAULT``."""
    return s.default_group_size if group_size == DEFAULT else group_size  # type: ignore[return-value]


def quantize(
    x: np.ndarray,
    scheme: str,
    group_size: int | str | None = DEFAULT,
    method: str = "rtn",
    name: str = "tensor",
    importance: np.ndarray | None = None,
    hessian: np.ndarray | HessianFactor | None = None,
    damp: float | None = None,
) -> QuantizedTensor:
    """Quantize a 2-D float32, float16 or bfloat16 matrix with ``scheme``.

    ``group_size``: weights per scale along a row (a multiple of 16 that divides
    the row), ``None`` for one scale per row; by default the scheme's own
    (32 for int4, per row otherwise). ``method``: ``rtn``, ``mse`` or ``hqq``,
    or the calibrated ``wmse`` and ``whqq``, which need ``importance``: float32
    ``[cols]``, E[x_j^2] of the layer's input channel j (see
    ``lowbit.eval.calibration``), weighting each column's squared error; or
    ``gptq``, which needs ``hessian``: ``X^T X`` of the layer's inputs
    ``[cols, cols]`` (any positive multiple of it), damped by ``damp`` times
    its mean diagonal (default ``lowbit.quant.gptq.GPTQ_DAMP``), or its
    ``HessianFactor``, made once for the matrices that share an input.
    ``name`` appears in every error message. NaN or Inf in ``x`` is an error.
    """
    s = get_scheme(scheme)
    if method not in METHODS:
        raise ArgumentError(
            f"{name}: unknown method {method!r}; known methods: {', '.join(METHODS)}"
        )
    x = _check_input(x, name)
    if s.is_float:
        return QuantizedTensor(scheme, x.shape, cast(x, FLOAT_SCHEME_DTYPES[scheme], name))
    if method not in s.methods:
        raise ArgumentError(
            f"{name}: method {method!r} does not apply to {scheme}; it takes {', '.join(s.methods)}"
        )
    weighted = method in CALIBRATED_METHODS
    if weighted != (importance is not None):
        raise ArgumentError(
            f"{name}: method {method!r} "
            + ("needs calibration statistics (importance)" if weighted else "takes no importance")
            + f"; the weighted methods are {', '.join(CALIBRATED_METHODS)}"
        )
    if (method == GPTQ) != (hessian is not None):
        raise ArgumentError(
            f"{name}: "
            + (
                "gptq needs the Hessian of the layer's inputs (hessian)"
                if hessian is None
                else f"method {method!r} takes no hessian; only gptq does"
            )
        )
    gs = resolve_group_size(s, group_size)
    check_group_size(gs, x.shape[1], name)
    params = core_params(s, gs, method)
    if hessian is not None:
        codes, scales, zeros = _gptq(x, hessian, params, name, damp)
    else:
        codes, scales, zeros = _core.quantize(
            raw_view(x), core_dtype(x.dtype, name), params, name, importance
        )
    return QuantizedTensor(scheme, x.shape, codes, scales, zeros, gs, method)


def _gptq(
    x: np.ndarray,
    hessian: np.ndarray | HessianFactor,
    params: _core.QuantParams,
    name: str,
    damp: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    from lowbit.quant.gptq import GPTQ_DAMP

    cols = x.shape[1]
    if not isinstance(hessian, HessianFactor):
        h = np.asarray(hessian)
        if h.shape != (cols, cols):
            raise ArgumentError(f"{name}: hessian has shape {h.shape}, expected ({cols}, {cols})")
        hessian = HessianFactor.of(h, GPTQ_DAMP if damp is None else damp, name)
    elif hessian.u.shape != (cols, cols):
        raise ArgumentError(
            f"{name}: the Hessian factor has shape {hessian.u.shape}, expected ({cols}, {cols})"
        )
    w = np.ascontiguousarray(cast(x, np.float32, name))
    codes, scales, zeros, _ = _core.gptq(w, hessian.u, params, name, hessian.importance)
    return codes, scales, zeros
