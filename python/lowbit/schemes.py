"""The quantization schemes: one table, shared by the kernels and the NumPy reference.

A weight matrix has HF's Linear layout ``[out_features, in_features]``. Groups are
contiguous runs of ``group_size`` weights within a row (``None``: the whole row).
Every integer scheme reconstructs ``x̂ = scale · (code - zero)``; symmetric schemes
use a fixed offset as their zero (``int4`` stores ``q + 8``, ``ternary`` ``q + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit import _core
from lowbit.errors import ArgumentError

METHODS = ("rtn", "mse", "hqq")

# Codes are packed into 16-byte blocks; see src/quant/quant_params.h.
BLOCK_BYTES: int = _core.BLOCK_BYTES


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme.

    ``qmin``/``qmax`` bound the integer ``q`` before ``code_offset`` is added;
    ``rule`` says how round-to-nearest finds the scale: ``absmax`` (scale =
    max|x| / ``scale_divisor``), ``signedmax`` (scale = e / ``scale_divisor``
    with e the value of largest magnitude, sign kept, max on a tie, and
    ``scale_divisor = qmin``: e lands on qmin, as in llama.cpp's Q4_0),
    ``meanabs`` (scale = mean|x|) or ``minmax`` (asymmetric, with a zero
    point). Float schemes have ``rule == "float"``.
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

    @property
    def is_float(self) -> bool:
        return self.rule == "float"

    @property
    def asymmetric(self) -> bool:
        return self.rule == "minmax"

    @property
    def codes_per_block(self) -> int:
        """Codes in one packed 16-byte block (16 for 8-bit codes)."""
        return BLOCK_BYTES * 8 // self.bits

    def row_bytes(self, cols: int) -> int:
        """Stored bytes of one row of codes: whole blocks, the last one padded."""
        if self.bits == 8:
            return cols
        per_block = self.codes_per_block
        return -(-cols // per_block) * BLOCK_BYTES


def _asym(bits: int) -> Scheme:
    return Scheme(
        name=f"uint{bits}",
        bits=bits,
        rule="minmax",
        qmin=0,
        qmax=(1 << bits) - 1,
        methods=METHODS,
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
            methods=("rtn", "mse"),
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
            methods=("rtn", "mse"),
            summary="int4 in [-8, 7], scale = signed extreme / -8, stored as q + 8",
        ),
        _asym(8),
        _asym(4),
        _asym(2),
        _asym(1),
        Scheme(
            name="ternary",
            bits=2,
            rule="meanabs",
            qmin=-1,
            qmax=1,
            code_offset=1,
            methods=("rtn", "mse"),
            summary="{-1, 0, 1} with scale = mean|x| (BitNet b1.58), stored as q + 1",
        ),
        Scheme(name="f32", bits=32, rule="float", summary="float32, unchanged"),
        Scheme(name="f16", bits=16, rule="float", summary="float16, round to nearest even"),
        Scheme(name="bf16", bits=16, rule="float", summary="bfloat16, round to nearest even"),
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
