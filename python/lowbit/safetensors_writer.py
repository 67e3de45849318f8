"""Writing safetensors files one tensor at a time.

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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from lowbit.dtypes import BFLOAT16

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
