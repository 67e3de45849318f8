"""The NPZ + manifest layout of the reference documents (``--format npz``, format_version "2").

One ``model.npz`` holds, per weight, its codes as one integer per element
(``{key}.npy``, the weight's shape: int8 for symmetric schemes, uint8 with a
zero point for the unsigned ones) and float32 ``{key}_scales.npy`` and
``{key}_zero_point.npy`` ``[rows, groups]`` beside it; unquantized tensors are
stored as float32 values. Reconstruction: ``scales * (q - zero_point)`` per
group along each row (zero_point 0 when absent). Codes are not bit-packed:
this layout is for tools that read the reference format, the safetensors
directory is the compact one. The archive is written one member at a time
(numpy's ``savez`` would hold every array in memory at once) and stored
uncompressed, so ``np.load(..., mmap_mode=...)``-style readers stay fast.
"""

from __future__ import annotations

import contextlib
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.formats.manifest import WeightInfo
from lowbit.quant import reference
from lowbit.quant.schemes import get_scheme
from lowbit.util.errors import LowbitError

NPZ_FORMAT_VERSION = "2"
NPZ_FILE = "model.npz"
RECONSTRUCTION = (
    "x = q_scales[:, g] * (q - q_zero_point[:, g]) for the inputs of group g of a row "
    "(group_size inputs each, or the whole row); q_zero_point = 0 when absent"
)


def member_key(name: str, scheme: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` -> ``model_layers_0_mlp_up_proj_weight_int4``."""
    return f"{name.replace('.', '_')}_{scheme}"


def unpacked_arrays(
    scheme: str, shape: tuple[int, ...], arrays: list[np.ndarray]
) -> dict[str, np.ndarray]:
    """The members of one weight: {"": q, "_scales": ..., "_zero_point": ...}."""
    s = get_scheme(scheme)
    if s.is_float:
        return {"": np.asarray(arrays[0]).astype(np.float32).reshape(shape)}
    codes, scales = arrays[0], arrays[1]
    cols = shape[-1]
    if s.bits == 8:
        q = codes
    else:
        stored = reference.unpack(s, codes, cols)
        q = (stored - s.code_offset).astype(np.int8 if s.qmin < 0 else np.uint8)
    out = {"": q.reshape(shape), "_scales": scales.astype(np.float32)}
    if s.asymmetric:
        out["_zero_point"] = arrays[2].astype(np.float32)
    return out


class NpzWriter:
    """Writes NPZ members one at a time; ``sha256`` and ``size`` once closed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)

    def add(self, key: str, array: np.ndarray) -> str:
        member = f"{key}.npy"
        try:
            with self._zip.open(member, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
        except OSError as e:  # ENOSPC: zipfile's error names no file
            raise self._failed(e, member) from e
        return member

    def close(self) -> None:
        try:
            self._zip.close()
        except OSError as e:
            raise self._failed(e, "central directory") from e

    def _failed(self, e: OSError, what: str) -> OSError:
        return OSError(e.errno, f"{self.path}: writing {what} failed: {e.strerror or e}")

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        # The first error is the one to report (a full disk fails the
        # central directory too); the file is deleted with OUT.partial.
        with contextlib.suppress(OSError):
            self._zip.close()


def weight_entry(info: WeightInfo, members: dict[str, str]) -> dict[str, Any]:
    """The format-2 manifest entry of a weight, from what lowbit records of it."""
    s = get_scheme(info.scheme)
    grouped = info.group_size is not None
    out: dict[str, Any] = {
        "name": info.name,
        "shape": list(info.shape),
        "bit_width": s.bits,
        "q": members[""],
        "rel_error": info.rel_error,
        "quantization": {
            # The reference documents' words for the scheme's kind.
            "type": "float" if s.is_float else ("group_int" if grouped else "perrow_int"),
            "bits": s.bits,
            "method": "none" if s.is_float else ("asymmetric" if s.asymmetric else "symmetric"),
            "scheme": s.name,
            "group_size": info.group_size,
            "search": info.method,
        },
    }
    if "_scales" in members:
        out["q_scales"] = members["_scales"]
    if "_zero_point" in members:
        out["q_zero_point"] = members["_zero_point"]
    return out


def reference_model(model: dict[str, Any]) -> dict[str, Any]:
    """The reference documents' ``model`` block (lowbit's fuller description kept beside)."""
    return {
        "name": model["name"],
        "family": model["family"],
        "context_length": model["context_length"],
        "hidden_dim": model["hidden_size"],
        "num_layers": model["num_layers"],
        "num_heads": model["num_heads"],
        "lowbit": model,
    }


def npz_member_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], int]]:
    """Each ``.npy`` member's (shape, data bytes), read from its header only."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = header(f)
                out[info.filename] = (tuple(shape), math.prod(shape) * dtype.itemsize)
    except (
        # What zipfile and numpy's header reader raise on a damaged archive:
        # a cut member (EOFError), an unknown compression (NotImplementedError),
        # an encrypted one (RuntimeError), bad deflate data (zlib.error), ...
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        ValueError,
        OSError,
        EOFError,
        NotImplementedError,
        RuntimeError,
        zlib.error,
        struct.error,
    ) as e:
        raise LowbitError(f"{path}: not a readable NPZ file ({type(e).__name__}: {e})") from None
    return out
