"""Safetensors files, read and written one tensor at a time: the one module that
knows the format.

## Reading

A checkpoint is a directory holding ``model.safetensors``, or shards listed by
``model.safetensors.index.json``, or a single ``.safetensors`` file. Headers are
checked when the checkpoint is opened (sizes, offsets, dtypes), so a damaged
file is reported by name before any conversion starts; tensor data is read
only when asked for, one tensor at a time, as a read-only memory map of the
file: nothing is copied, and the pages of a tensor leave the process's memory
when its array is dropped.

## Writing

The ``safetensors`` package writes a file from tensors that are all in memory
at once; conversion must keep only one tensor in memory (peak memory about the
largest tensor, not the model). Every output tensor's dtype and shape are known
before any is computed, so the header is written first and the data streamed
after it, in header order. The SHA-256 of the file is computed while writing.

Writing and hashing run on a thread of their own (both release the GIL), so
the disk works on one tensor while the kernels quantize the next: at most
``QUEUE_DEPTH`` tensors wait, which bounds the memory this adds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import ml_dtypes
import numpy as np

from lowbit.quant.dtypes import BFLOAT16
from lowbit.util.errors import LowbitError
from lowbit.util.paths import UnsafePathError, confined

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# safetensors dtype codes lowbit reads as weights.
FLOAT_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": BFLOAT16}
# The NumPy dtype of every safetensors dtype code.
NUMPY_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": BFLOAT16, "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32), "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}  # fmt: skip
# Bytes per element of every dtype the format defines (for header checks).
DTYPE_BYTES = {code: dt.itemsize for code, dt in NUMPY_DTYPES.items()}
# A header larger than this is not a model's: refuse before reading it.
MAX_HEADER_BYTES = 100 << 20


# Bounds on header fields, so that sizes computed from them stay meaningful.
MAX_RANK = 8
MAX_BYTES = 1 << 50


def _is_int(value: object) -> bool:
    # JSON true/false are ints to Python; a header never means them as sizes.
    return isinstance(value, int) and not isinstance(value, bool)


class CheckpointError(LowbitError):
    """A checkpoint that cannot be read; the message names the file and tensor."""


class CustomCodeError(CheckpointError):
    """A model that needs its own Python code (``auto_map``): lowbit never runs it."""


# Files in which transformers looks for ``auto_map``, the pointer to a model's
# own Python classes (which it would import, and so run, if allowed to).
CODE_POINTER_FILES = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
)


def refuse_custom_code(directory: str | Path) -> None:
    """Raise CustomCodeError if a config file in ``directory`` names custom code.

    Every transformers call in lowbit passes ``trust_remote_code=False`` too;
    this check comes first so that the error names the file and field, and so
    that a model lowbit could only half support is refused before any work.
    """
    directory = Path(directory)
    for name in CODE_POINTER_FILES:
        path = directory / name
        try:
            data = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, UnicodeDecodeError, ValueError):
            continue  # unreadable: the reader of that file reports it
        if isinstance(data, dict) and "auto_map" in data:
            code = data["auto_map"]
            refs = code.values() if isinstance(code, dict) else [code]
            flat = [r for v in refs for r in (v if isinstance(v, list) else [v]) if r]
            shown = ", ".join(sorted({str(r) for r in flat}))
            raise CustomCodeError(
                f"{path}: auto_map: the model needs its own Python code ({shown}); "
                "lowbit never runs code from a model directory"
            )


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors code: F32, F16, BF16, ...
    file: Path
    offset: int = 0  # byte offset of the tensor's data in the file

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, with every header field checked."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: file is {size} bytes, too short for a header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8 or header_len > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: header claims {header_len} bytes but the file has {size - 8} "
                    "after its length field (truncated or not a safetensors file)"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    data_size = size - 8 - header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _check_entry(path, name, entry, data_size, 8 + header_len)
    return tensors


def _check_entry(
    path: Path, name: str, entry: object, data_size: int, data_start: int
) -> TensorInfo:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_RANK
        and all(_is_int(d) and 0 <= d <= MAX_BYTES for d in shape)
    ):
        raise CheckpointError(f"{where}: bad shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(o) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{where}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if end > data_size:
        raise CheckpointError(
            f"{where}: data ends at byte {end} but the file holds {data_size} bytes of data "
            "(truncated?)"
        )
    info = TensorInfo(name, tuple(shape), dtype, path, data_start + begin)
    if end - begin != info.nbytes:
        raise CheckpointError(
            f"{where}: {end - begin} bytes stored for shape {tuple(shape)} {dtype} "
            f"({info.nbytes} expected)"
        )
    return info


class Checkpoint:
    """The tensors of a checkpoint directory (or one file), read lazily by name."""

    def __init__(self, path: str | Path, files: list[str] | None = None) -> None:
        """``files``: read only these names inside the directory ``path`` (a
        manifest's list), never its index; otherwise find the files as HF does."""
        self.path = Path(path)
        self._tensors: dict[str, TensorInfo] = {}
        weight_map: dict[str, str] = {}
        refuse_custom_code(self.path if self.path.is_dir() else self.path.parent)
        if files is not None:
            found = [self._confined(name, "listed file") for name in files]
        else:
            found = self._files(weight_map)
        for file in found:
            for name, info in read_header(file).items():
                if name in self._tensors:
                    other = self._tensors[name].file
                    raise CheckpointError(f"{file}: tensor {name!r} is also in {other}")
                self._tensors[name] = info
        for name, shard in weight_map.items():
            info = self._tensors.get(name)
            if info is None or info.file != self.path / shard:
                raise CheckpointError(
                    f"{self.path / INDEX_FILE}: maps {name!r} to {shard!r}, which does not hold it"
                )

    def _files(self, weight_map: dict[str, str]) -> list[Path]:
        """The safetensors files; fills ``weight_map`` from the index if there is one."""
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: no such checkpoint file or directory")
        index = self.path / INDEX_FILE
        if index.is_file():
            return self._shards(index, weight_map)
        single = self.path / SINGLE_FILE
        if single.is_file():
            return [self._confined(SINGLE_FILE, SINGLE_FILE)]
        found = sorted(p.name for p in self.path.glob("*.safetensors"))
        if found:
            return [self._confined(name, "*.safetensors") for name in found]
        raise CheckpointError(f"{self.path}: no {SINGLE_FILE}, {INDEX_FILE} or *.safetensors")

    def _shards(self, index: Path, weight_map: dict[str, str]) -> list[Path]:
        try:
            data = json.loads(index.read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
            raise CheckpointError(f"{index}: weight_map: expected an object of tensor -> file")
        weight_map.update(data["weight_map"])
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
        shards = sorted(set(weight_map.values()))
        paths = [self._confined(shard, f"{index}: weight_map") for shard in shards]
        for shard, path in zip(shards, paths, strict=True):
            if not path.is_file():
                raise CheckpointError(f"{index}: names shard {shard!r}, which is missing")
        return paths

    def _confined(self, name: str, what: str) -> Path:
        """``self.path / name``, refused if it leaves the directory (symlinks too)."""
        try:
            return confined(self.path, name, what)
        except UnsafePathError as e:
            raise CheckpointError(str(e)) from None

    def names(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}") from None

    def get(self, name: str) -> np.ndarray:
        """One tensor as a NumPy array (float32, float16 or bfloat16 for weights)."""
        info = self.info(name)
        dtype = NUMPY_DTYPES[info.dtype]
        if info.nbytes == 0:
            return np.empty(info.shape, dtype)
        # The header was checked against the file's size when the checkpoint
        # was opened; a file that shrinks afterwards is refused here rather
        # than faulting on pages that no longer exist.
        try:
            if info.file.stat().st_size < info.offset + info.nbytes:
                raise CheckpointError(f"{info.file}: truncated since it was opened")
            mapped = np.memmap(info.file, dtype, mode="r", offset=info.offset, shape=info.shape)
        except OSError as e:
            raise CheckpointError(f"{info.file}: tensor {name!r}: {e.strerror or e}") from None
        return np.asarray(mapped)  # a plain ndarray view: the map lives as long as it does

    def get_float(self, name: str) -> np.ndarray:
        """A weight tensor; a dtype that is not F32, F16 or BF16 is an error naming it."""
        info = self.info(name)
        if info.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{info.file}: tensor {name!r} has dtype {info.dtype}; "
                f"lowbit reads weights stored as {', '.join(FLOAT_DTYPES)}"
            )
        return self.get(name)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) pairs, one tensor in memory at a time."""
        for name in self._tensors:
            yield name, self.get(name)

    def __len__(self) -> int:
        return len(self._tensors)


# Writing

# numpy dtype -> safetensors dtype code
ST_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    BFLOAT16: "BF16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}


# Tensors waiting for the writer thread at most.
QUEUE_DEPTH = 2


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class StreamingWriter:
    """Writes the tensors of ``specs``, in that order, to ``path``.

    Use as a context manager; ``write`` each tensor in turn; ``sha256`` and
    ``size`` are known once the block exits. A tensor whose name, dtype or shape
    differs from the next spec is an error (nothing is written out of order).
    """

    def __init__(
        self, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None = None
    ) -> None:
        self.path = path
        self.specs = specs
        self._next = 0
        self._hash = hashlib.sha256()
        self.size = 0
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        for s in specs:
            if s.dtype not in ST_DTYPES:
                raise TypeError(f"{s.name}: dtype {s.dtype} cannot be stored in safetensors")
            header[s.name] = {
                "dtype": ST_DTYPES[s.dtype],
                "shape": list(s.shape),
                "data_offsets": [offset, offset + s.nbytes],
            }
            offset += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
        self._header = struct.pack("<Q", len(raw)) + raw
        self._file: BinaryIO | None = None
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> StreamingWriter:
        self._file = self.path.open("wb")
        self._thread.start()
        self._emit(self._header)
        return self

    def _drain(self) -> None:
        """The writer thread: writes and hashes queued buffers until None."""
        assert self._file is not None
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so that the producer never blocks
            try:
                self._file.write(data)
                self._hash.update(data)
            except BaseException as e:  # reported to the caller by _check
                self._error = e

    def _check(self) -> None:
        if self._error is not None:
            raise _write_failed(self.path, self._error) from self._error

    def _emit(self, data: bytes | memoryview) -> None:
        self._check()
        self._queue.put(data)
        self.size += len(data)

    def write(self, name: str, array: np.ndarray) -> None:
        if self._next >= len(self.specs):
            raise ValueError(f"{self.path}: unexpected tensor {name!r}")
        spec = self.specs[self._next]
        if (name, array.dtype, tuple(array.shape)) != (spec.name, spec.dtype, spec.shape):
            raise ValueError(
                f"{self.path}: expected {spec.name!r} {spec.dtype} {spec.shape}, "
                f"got {name!r} {array.dtype} {tuple(array.shape)}"
            )
        self._emit(memoryview(np.ascontiguousarray(array).view(np.uint8).reshape(-1)))
        self._next += 1

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._file is not None
        try:
            self._queue.put(None)
            self._thread.join()
            if exc_type is None:
                self._check()
            if exc_type is None and self._next != len(self.specs):
                missing = self.specs[self._next].name
                raise ValueError(f"{self.path}: closed before tensor {missing!r} was written")
            try:
                self._file.flush()
                if exc_type is None:
                    os.fsync(self._file.fileno())
            except OSError as e:  # a full disk shows here, naming no file
                raise _write_failed(self.path, e) from e
        finally:
            self._file.close()


def _write_failed(path: Path, error: BaseException) -> OSError:
    """An OSError naming ``path`` (and keeping ``error``'s errno, ENOSPC say)."""
    code = error.errno if isinstance(error, OSError) else None
    reason = error.strerror if isinstance(error, OSError) and error.strerror else error
    return OSError(code, f"{path}: write failed: {reason}")
