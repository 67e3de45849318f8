"""The quantization schemes: one table, shared by the kernels and the NumPy reference.

A weight matrix has HF's Linear layout ``[out_features, in_features]``. Groups are
contiguous runs of ``group_size`` weights within a row (``None``: the whole row).
Every integer scheme reconstructs ``x̂ = scale · (code - zero)``; symmetric schemes
use a fixed offset as their zero (``int4`` stores ``q + 8``, ``ternary`` ``q + 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowbit import _core
from lowbit.util.errors import ArgumentError

METHODS = ("rtn", "mse", "hqq", "wmse", "whqq", "gptq")
# The weighted searches: the search of the method they name, minimising the
# squared error weighted per input channel by E[x_j^2] from calibration
# (sum_j E[x_j^2] (w_j - w^_j)^2, the expected squared error of the layer's
# output) instead of the plain squared error.
CALIBRATED_METHODS = {"wmse": "mse", "whqq": "hqq"}
# GPTQ (lowbit.quant.gptq): rounding with error feedback through the inverse
# of the layer's input Hessian X^T X, each group's parameters by the weighted
# search of its scheme (hqq with zero points, mse without).
GPTQ = "gptq"
# Every method that needs calibration statistics.
STATISTICS_METHODS = (*CALIBRATED_METHODS, GPTQ)


def with_calibrated(methods: tuple[str, ...]) -> tuple[str, ...]:
    """``methods`` plus the calibrated variant of each search among them, and GPTQ."""
    weighted = tuple(w for w, base in CALIBRATED_METHODS.items() if base in methods)
    return (*methods, *weighted, GPTQ)


def gptq_search(asymmetric: bool) -> str:
    """The search GPTQ runs on each group: hqq needs zero points, mse does not."""
    return "hqq" if asymmetric else "mse"


def weighted_method(scheme: str, method: str) -> str:
    """What GPTQ becomes for a matrix with E[x^2] of its input but no Hessian:
    the weighted search it runs on each group; any other method itself."""
    if method == GPTQ:
        base = gptq_search(get_scheme(scheme).asymmetric)
        return next(w for w, b in CALIBRATED_METHODS.items() if b == base)
    return method


def plain_method(scheme: str, method: str) -> str:
    """What ``method`` becomes without calibration statistics: a weighted
    search its plain search, GPTQ the search it runs on each group, any other
    method itself."""
    if method == GPTQ:
        return gptq_search(get_scheme(scheme).asymmetric)
    return CALIBRATED_METHODS.get(method, method)


# Codes are packed into 16-byte blocks; see src/quant/quant_params.h.
BLOCK_BYTES: int = _core.BLOCK_BYTES

# The tensor name suffix of each array an integer scheme stores, by its key in
# the manifest entry's ``stored``.
_INT_SUFFIXES = {"values": ".codes", "scales": ".scales", "zeros": ".zeros"}


@dataclass(frozen=True)
class StoredArray:
    """One array a weight is stored as.

    ``key``: its field in the manifest entry's ``stored`` (values, scales or
    zeros); ``suffix``: what its tensor name adds to the weight's name;
    ``dtype``: a numpy dtype name; ``shape``: as stored.
    """

    key: str
    suffix: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme.

    ``qmin``/``qmax`` bound the integer ``q`` before ``code_offset`` is added;
    ``rule`` says how round-to-nearest finds the scale: ``absmax`` (scale =
    max|x| / ``scale_divisor``), ``signedmax`` (scale = e / ``scale_divisor``
    with e the value of largest magnitude, sign kept, max on a tie, and
    ``scale_divisor = qmin``: e lands on qmin, as in llama.cpp's Q4_0),
    ``meanabs`` (scale = mean|x|) or ``minmax`` (asymmetric, with a zero
    point). Float schemes have ``rule == "float"`` and store their values as
    ``float_dtype`` (a numpy dtype name).
    """

    name: str
    bits: int
    rule: str
    qmin: int = 0
    qmax: int = 0
    code_offset: int = 0
    scale_divisor: float = 1.0
    default_group_size: int | None = None
    methods: tuple[str, ...] = ("rtn",)
    summary: str = ""
    float_dtype: str | None = None

    @property
    def is_float(self) -> bool:
        return self.rule == "float"

    @property
    def asymmetric(self) -> bool:
        return self.rule == "minmax"

    @property
    def takes_group_size(self) -> bool:
        """Whether weights share scales by group: integer schemes do; a float
        scheme stores values alone, so it has no group size."""
        return not self.is_float

    def applies(self, method: str) -> bool:
        """Whether quantization method ``method`` can be asked of this scheme
        (a float scheme takes any and ignores it: it only casts)."""
        return method in METHODS and (self.is_float or method in self.methods)

    @property
    def stored_keys(self) -> tuple[str, ...]:
        """The arrays a weight is stored as, by their key in the manifest's
        ``stored``: its values; or codes (as ``values``), scales and, for an
        asymmetric scheme, zero points."""
        if self.is_float:
            return ("values",)
        return ("values", "scales", "zeros") if self.asymmetric else ("values", "scales")

    def suffix(self, key: str) -> str:
        """What the tensor name of stored array ``key`` adds to the weight's
        name: nothing for float values, else ``.codes``, ``.scales``, ``.zeros``."""
        return "" if self.is_float else _INT_SUFFIXES[key]

    def stored_arrays(
        self, shape: tuple[int, ...], group_size: int | None
    ) -> tuple[StoredArray, ...]:
        """The arrays a weight of ``shape`` is stored as, in the order written.

        Float values keep the weight's shape. Codes, scales and zero points are
        2-D, expert stacks flattened to rows: codes ``[rows, row_bytes]``
        (int8 only for the signed 8-bit scheme; packed codes are bytes),
        scales and zeros ``[rows, groups]``, float16 for groups and float32
        per row.
        """
        if self.is_float:
            assert self.float_dtype is not None
            return (StoredArray("values", "", self.float_dtype, tuple(shape)),)
        rows, cols = math.prod(shape[:-1]), shape[-1]
        groups = 1 if group_size is None else cols // group_size
        param = "float32" if group_size is None else "float16"
        code = "int8" if self.bits == 8 and self.qmin < 0 else "uint8"
        dtypes_shapes = {
            "values": (code, (rows, self.row_bytes(cols))),
            "scales": (param, (rows, groups)),
            "zeros": (param, (rows, groups)),
        }
        return tuple(
            StoredArray(key, self.suffix(key), *dtypes_shapes[key]) for key in self.stored_keys
        )

    @property
    def planes(self) -> tuple[int, ...]:
        """Bits of each plane the codes are stored in: one plane for widths
        that divide 8; two otherwise, the low bits first (3 = 2 + 1, 5 = 4 +
        1, 6 = 4 + 2; src/quant/quant_params.h)."""
        return {3: (2, 1), 5: (4, 1), 6: (4, 2)}.get(self.bits, (self.bits,))

    def row_bytes(self, cols: int) -> int:
        """Stored bytes of one row of codes: each plane in whole blocks, the
        last one padded (8-bit rows are not padded)."""
        return sum(plane_bytes(cols, b) for b in self.planes)

    def padded_codes(self, cols: int) -> int:
        """Codes a row is padded to (quantized zeros past ``cols``): whole
        blocks of its coarsest plane."""
        if self.bits == 8:
            return cols
        per_block = BLOCK_BYTES * 8 // min(self.planes)
        return -(-cols // per_block) * per_block


def plane_bytes(cols: int, bits: int) -> int:
    """Stored bytes of ``cols`` codes in one plane of ``bits`` (1, 2, 4, 8) bits."""
    if bits == 8:
        return cols
    return -(-cols // (BLOCK_BYTES * 8 // bits)) * BLOCK_BYTES


def _asym(bits: int) -> Scheme:
    return Scheme(
        name=f"uint{bits}",
        bits=bits,
        rule="minmax",
        qmin=0,
        qmax=(1 << bits) - 1,
        methods=METHODS,  # rtn, mse, hqq, their weighted variants and gptq
        summary=f"unsigned {bits}-bit codes with a scale and a zero point",
    )


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme(
            name="int8",
            bits=8,
            rule="absmax",
            qmin=-127,
            qmax=127,
            scale_divisor=127.0,
            methods=with_calibrated(("rtn", "mse")),
            summary="int8 in [-127, 127], scale = absmax / 127",
        ),
        Scheme(
            name="int4",
            bits=4,
            # The signed extreme maps to -8, so all 16 levels are used: 12%
            # less error than absmax / 7 (benchmarks/bench_quality.py).
            rule="signedmax",
            qmin=-8,
            qmax=7,
            code_offset=8,
            scale_divisor=-8.0,
            default_group_size=32,
            methods=with_calibrated(("rtn", "mse")),
            summary="int4 in [-8, 7], scale = signed extreme / -8, stored as q + 8",
        ),
        _asym(8),
        _asym(6),
        _asym(5),
        _asym(4),
        _asym(3),
        _asym(2),
        _asym(1),
        Scheme(
            name="ternary",
            bits=2,
            rule="meanabs",
            qmin=-1,
            qmax=1,
            code_offset=1,
            methods=with_calibrated(("rtn", "mse")),
            summary="{-1, 0, 1} with scale = mean|x| (BitNet b1.58), stored as q + 1",
        ),
        Scheme(
            name="f32", bits=32, rule="float", summary="float32, unchanged", float_dtype="float32"
        ),
        Scheme(
            name="f16",
            bits=16,
            rule="float",
            summary="float16, round to nearest even",
            float_dtype="float16",
        ),
        Scheme(
            name="bf16",
            bits=16,
            rule="float",
            summary="bfloat16, round to nearest even",
            float_dtype="bfloat16",
        ),
    )
}


def schemes() -> list[str]:
    """Names of all schemes."""
    return list(SCHEMES)


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``; a ValueError lists the known ones."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ArgumentError(
            f"unknown scheme {name!r}; known schemes: {', '.join(SCHEMES)}"
        ) from None


def fitting_group_sizes(cols: int) -> list[int]:
    """Group sizes a row of ``cols`` weights can take: multiples of 16 dividing it."""
    return [g for g in range(BLOCK_BYTES, cols + 1, BLOCK_BYTES) if cols % g == 0]


def check_group_size(group_size: int | None, cols: int, name: str) -> None:
    """Raise a ValueError naming the tensor when ``group_size`` does not fit ``cols``."""
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ArgumentError(
            f"{name}: group_size must be a positive int or None, got {group_size!r}"
        )
    if group_size % BLOCK_BYTES == 0 and cols % group_size == 0:
        return
    fits = [g for g in fitting_group_sizes(cols) if g <= 256]
    hint = ", ".join(map(str, fits)) if fits else "none"
    raise ArgumentError(
        f"{name}: group size {group_size} does not fit rows of {cols} weights "
        f"(it must be a multiple of {BLOCK_BYTES} that divides the row); "
        f"group sizes that fit: {hint}; or group_size=None for one group per row"
    )
