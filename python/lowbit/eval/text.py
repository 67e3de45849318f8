"""The evaluation text and the perplexity protocol.

Default text: the English license texts Debian ships in /usr/share/common-licenses
(package base-files), concatenated in a fixed order. Protocol: the text is
tokenized once (with the tokenizer's special tokens, so a BOS leads), the
first ``max_tokens`` ids are cut into consecutive, non-overlapping windows of
``context`` tokens (stride = context), and every window is run from an empty
cache; each window's tokens 1..context-1 are predicted from the tokens before
them in the window. A shorter last window is dropped, so every prediction has
the same kind of context and the number of predictions is fixed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.util.errors import LowbitError

LICENSES_DIR = Path("/usr/share/common-licenses")
# Fixed order, long texts first; symlinks (GPL -> GPL-3) are skipped.
DEFAULT_FILES = ("GPL-3", "Apache-2.0", "MPL-2.0", "LGPL-2.1", "GFDL-1.3", "Artistic", "BSD")
DEFAULT_CONTEXT = 512
DEFAULT_TOKENS = 1024


class EvalTextError(LowbitError):
    """The evaluation text is missing or too short for one window."""


def default_text_files() -> list[Path]:
    files = [LICENSES_DIR / name for name in DEFAULT_FILES if (LICENSES_DIR / name).is_file()]
    if not files:
        raise EvalTextError(
            f"{LICENSES_DIR}: no license texts (Debian's base-files package); pass --text FILE"
        )
    return files


def read_text(files: list[Path]) -> str:
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EvalTextError(f"{f}: no such text file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise EvalTextError(f"{f}: unreadable as UTF-8 text ({e})") from None
    return "\n\n".join(parts)


@dataclass(frozen=True)
class EvalWindows:
    """Token windows [n_windows, context] of the evaluation text."""

    windows: np.ndarray
    context: int
    source: str  # file names, for the report

    @property
    def predictions(self) -> int:
        return self.windows.shape[0] * (self.context - 1)

    def digest(self) -> str:
        """Identifies the token ids and protocol (part of the baseline cache key)."""
        h = hashlib.sha256(np.ascontiguousarray(self.windows, np.int64).tobytes())
        h.update(f"context={self.context}".encode())
        return h.hexdigest()


def encode_files(tokenizer: Any, files: list[Path] | None = None) -> tuple[list[int], str]:
    """The files' text (read_text) as token ids, and the label naming the
    files; no files: the default text (default_text_files)."""
    files = files or default_text_files()
    return tokenizer.encode(read_text(files)), ", ".join(f.name for f in files)


def make_windows(ids: list[int], context: int, max_tokens: int, source: str) -> EvalWindows:
    if context < 2:
        raise EvalTextError(f"context must be at least 2 tokens, got {context}")
    usable = min(len(ids), max_tokens) // context * context
    if usable == 0:
        raise EvalTextError(
            f"{source}: {len(ids)} tokens, fewer than one window of {context}; "
            "give a longer text or a smaller --context"
        )
    arr = np.asarray(ids[:usable], np.int64).reshape(-1, context)
    return EvalWindows(arr, context, source)
