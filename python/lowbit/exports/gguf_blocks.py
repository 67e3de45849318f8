"""lowbit's stored weights as GGUF blocks of 32, without re-quantizing.

GGUF's legacy block types and lowbit's group schemes share their grids when a
group is a whole number of 32-blocks:

- ``int8`` group 32 is Q8_0 (float16 scale d, 32 int8 codes; x = d q);
- ``int4`` group 32 is Q4_0 (d, 16 bytes; x = d (q - 8)); lowbit's 16-byte
  blocks already hold code j in byte j's low nibble and code j + 16 in its
  high nibble, as Q4_0 does, so the packed bytes are copied;
- ``uint4`` groups of 32k are Q4_1 (d, m, 16 bytes; x = d q + m): d is the
  group's scale and m = -scale * zero, computed in float32 and rounded to
  float16, the one rounding of the export (at most half a float16 unit of
  m: 2^-11 |m| for normal values);
- ``uint5`` groups of 32k are Q5_1 (d, m, 4 bytes of fifth bits, bit j for
  code j, then the low nibbles as Q4_1).

Each function takes a ``QuantizedTensor`` of rows of ``cols`` weights, cols a
multiple of 32, and returns the GGUF bytes ``[rows, cols / 32 * block]``.
"""

from __future__ import annotations

import numpy as np

from lowbit.quant.quantize import QuantizedTensor
from lowbit.quant.reference import unpack
from lowbit.quant.schemes import get_scheme

BLOCK = 32  # weights per GGUF block


def _per_block(params: np.ndarray, group_size: int) -> np.ndarray:
    """[rows, groups] group parameters, repeated for each 32-block of a group."""
    return np.repeat(params, group_size // BLOCK, axis=1)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """float16 [rows, blocks] as its bytes [rows, blocks, 2] (little endian)."""
    return np.ascontiguousarray(x.astype("<f2")).view(np.uint8).reshape(*x.shape, 2)


def _joined(*parts: np.ndarray) -> np.ndarray:
    rows = parts[0].shape[0]
    return np.concatenate(parts, axis=2).reshape(rows, -1)


def _blocks(qt: QuantizedTensor) -> int:
    return qt.shape[1] // BLOCK


def q8_0(qt: QuantizedTensor) -> np.ndarray:
    rows, nb = qt.shape[0], _blocks(qt)
    d = _per_block(qt.scales, qt.group_size)
    return _joined(_f16_bytes(d), qt.codes.view(np.uint8).reshape(rows, nb, BLOCK))


def q4_0(qt: QuantizedTensor) -> np.ndarray:
    rows, nb = qt.shape[0], _blocks(qt)
    d = _per_block(qt.scales, qt.group_size)
    return _joined(_f16_bytes(d), qt.codes[:, : nb * 16].reshape(rows, nb, 16))


def _d_and_m(qt: QuantizedTensor) -> tuple[np.ndarray, np.ndarray]:
    d = _per_block(qt.scales, qt.group_size)
    zero = _per_block(qt.zeros, qt.group_size)
    m = (-(d.astype(np.float32) * zero.astype(np.float32))).astype(np.float16)
    return d, m


def q4_1(qt: QuantizedTensor) -> np.ndarray:
    rows, nb = qt.shape[0], _blocks(qt)
    d, m = _d_and_m(qt)
    return _joined(_f16_bytes(d), _f16_bytes(m), qt.codes[:, : nb * 16].reshape(rows, nb, 16))


def q5_1(qt: QuantizedTensor) -> np.ndarray:
    rows, nb = qt.shape[0], _blocks(qt)
    d, m = _d_and_m(qt)
    codes = unpack(get_scheme(qt.scheme), qt.codes, qt.shape[1]).reshape(rows, nb, BLOCK)
    low = (codes & 15).astype(np.uint8)
    qs = low[..., :16] | (low[..., 16:] << 4)
    fifth = ((codes >> 4) & 1).astype(np.uint32) << np.arange(BLOCK, dtype=np.uint32)
    qh = fifth.sum(axis=2, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(rows, nb, 4)
    return _joined(_f16_bytes(d), _f16_bytes(m), qh, qs)


__all__ = ["BLOCK", "q4_0", "q4_1", "q5_1", "q8_0"]
