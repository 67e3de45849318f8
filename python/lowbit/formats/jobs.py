"""Output tensors as jobs, and the safetensors writer that takes them.

A job is what one step of a conversion writes: the specs of its tensors
(name, dtype, shape), known before any of them is made because a safetensors
header comes first, and how to make their arrays. ``SafetensorsOutput``
writes each job's arrays as they are made, so that only one job's tensors
are in memory at a time. ``lowbit convert`` (one job per weight) and
``lowbit upcycle`` (one per tensor it copies, one per layer's MoE block)
both write through it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from lowbit.formats.manifest import FileEntry
from lowbit.formats.safetensors import INDEX_FILE, SINGLE_FILE, StreamingWriter, TensorSpec


@dataclass(frozen=True)
class TensorJob:
    """Tensors written in one step: their specs, and ``make``, which returns
    their arrays in that order (an iterator makes them one at a time)."""

    specs: tuple[TensorSpec, ...]
    make: Callable[[], Iterable[np.ndarray]]


def _shards(jobs: Sequence[tuple[TensorSpec, ...]], max_bytes: int | None) -> list[list[int]]:
    """Consecutive jobs (their indices) grouped into files of at most
    ``max_bytes`` (one job never split; None: all in one file)."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, specs in enumerate(jobs):
        n = sum(s.nbytes for s in specs)
        if max_bytes is not None and shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += n
    return shards


class SafetensorsOutput:
    """The tensors of ``jobs`` (each job's specs) written into ``directory``,
    one job after the other: ``model.safetensors``, or with ``max_shard_bytes``
    as many ``model-0000i-of-0000n.safetensors`` shards as needed and an index
    naming each tensor's shard.

    Use as a context manager and ``write`` every job's arrays in turn;
    ``files`` lists what was written once the block exits. An array that is
    not the next spec's name, dtype or shape is an error (StreamingWriter's).
    """

    def __init__(
        self,
        directory: Path,
        jobs: Sequence[Sequence[TensorSpec]],
        metadata: dict[str, str],
        max_shard_bytes: int | None = None,
    ) -> None:
        self.directory = directory
        self.metadata = metadata
        self._jobs = [tuple(specs) for specs in jobs]
        self._shards = _shards(self._jobs, max_shard_bytes)
        n = len(self._shards)
        self._names = (
            [SINGLE_FILE]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._shard_of = [k for k, shard in enumerate(self._shards) for _ in shard]
        self._next = 0  # the job written next
        self._open = -1  # the shard being written
        self._writer: StreamingWriter | None = None
        self._weight_map: dict[str, str] = {}
        self.files: list[FileEntry] = []

    def __enter__(self) -> SafetensorsOutput:
        return self

    def write(self, arrays: Iterable[np.ndarray]) -> str:
        """Write the next job's arrays, one per spec in order; returns the
        name of the file that holds them."""
        if self._next >= len(self._jobs):
            raise ValueError(f"{self.directory}: every job is already written")
        shard = self._shard_of[self._next]
        self._open_through(shard)
        assert self._writer is not None
        name = self._names[shard]
        for spec, array in zip(self._jobs[self._next], arrays, strict=True):
            self._writer.write(spec.name, array)
            self._weight_map[spec.name] = name
        self._next += 1
        return name

    def _open_through(self, shard: int) -> None:
        """Close the shard being written and open the next ones up to ``shard``."""
        while self._open < shard:
            self._close()
            self._open += 1
            specs = [s for job in self._shards[self._open] for s in self._jobs[job]]
            self._writer = StreamingWriter(
                self.directory / self._names[self._open], specs, self.metadata
            )
            self._writer.__enter__()

    def _close(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.files.append(FileEntry(writer.path.name, writer.size, writer.sha256))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._close(exc_type, exc, tb)
            return
        # A shard no job reached (none: no jobs at all) is still written, and
        # a tensor left unwritten is StreamingWriter's error when it closes.
        self._open_through(len(self._shards) - 1)
        self._close()
        if len(self._shards) > 1:
            index = self.directory / INDEX_FILE
            index.write_text(
                json.dumps({"metadata": self.metadata, "weight_map": self._weight_map})
            )
