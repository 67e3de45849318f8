"""How one weight is stored in a model directory: the tensors a scheme writes
(values, or codes, scales and zeros) and reading them back as one
``QuantizedTensor``. Conversion writes by it; the runtime, ``inspect`` and
``validate`` read by it."""

from __future__ import annotations

from lowbit.formats.manifest import WeightEntry
from lowbit.formats.safetensors import Checkpoint, TensorSpec
from lowbit.quant.dtypes import named
from lowbit.quant.quantize import QuantizedTensor
from lowbit.quant.schemes import get_scheme


def stored_specs(
    name: str, shape: tuple[int, ...], scheme: str, group_size: int | None
) -> list[TensorSpec]:
    """The tensors one weight becomes on disk: its values, or codes, scales and zeros."""
    return [
        TensorSpec(name + a.suffix, named(a.dtype), a.shape)
        for a in get_scheme(scheme).stored_arrays(tuple(shape), group_size)
    ]


def stored_tensor(ck: Checkpoint, w: WeightEntry) -> QuantizedTensor:
    """One manifest weight as stored, 3-D expert stacks flattened to rows."""
    stored = w.stored
    rows, cols = w.matrix_shape
    values = ck.get(stored.values)
    if stored.scales is None:  # float values, stored as they are
        return QuantizedTensor(w.scheme, (rows, cols), values.reshape(rows, cols))
    scales = ck.get(stored.scales)
    zeros = ck.get(stored.zeros) if stored.zeros is not None else None
    return QuantizedTensor(w.scheme, (rows, cols), values, scales, zeros, w.group_size, w.method)
