"""Output directories written atomically: work in ``OUT.partial``, rename at the end.

An interrupted run never leaves a directory that looks complete. Used by
convert, upcycle, and the float32 checkpoints written for PyTorch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lowbit.gguf_input import IMPORT_RECORD
from lowbit.paths import confined

# Copied beside the weights when the source has them.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    IMPORT_RECORD,
)


def start_partial(out: Path) -> Path:
    """A fresh, empty ``OUT.partial`` (one left by an interrupted run is removed)."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def side_files(src: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """The side files ``src`` has, each confined to it: a symlink to a file
    outside ``src`` (but for a HuggingFace cache snapshot's own blobs) is an
    UnsafePathError, so that its target's contents are never copied or read."""
    found = []
    for name in SIDE_FILES:
        path = src / name
        if name not in skip and (path.is_file() or path.is_symlink()):
            found.append(confined(src, name, f"{src}: side file"))
    return found


def copy_side_files(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Config, generation config and tokenizer files of ``src`` into ``dst``."""
    for path in side_files(src, skip):
        if path.is_file():  # a dangling link inside src: nothing to copy
            shutil.copy2(path, dst / path.name)


def commit(partial: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``partial`` directory."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old)
    else:
        partial.rename(out)
