"""File checksums, read a MiB at a time (hashlib releases the GIL on large updates)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

CHUNK_BYTES = 1 << 20


def file_digest(
    path: Path,
    algorithm: str = "sha256",
    prefix: bytes = b"",
    stop: threading.Event | None = None,
) -> str:
    """Hex digest of ``prefix`` + the file's bytes; "" if ``stop`` is set meanwhile."""
    h = hashlib.new(algorithm)
    h.update(prefix)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            if stop is not None and stop.is_set():
                return ""
            h.update(chunk)
    return h.hexdigest()
