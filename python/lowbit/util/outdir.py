"""Output directories written atomically, one writer at a time.

``with writing(OUT, force=...) as partial:`` is the one way lowbit writes an
output directory (convert, upcycle, the GGUF import, the float32 checkpoints
written for PyTorch):

- an exclusive lock (``fcntl.flock`` on ``OUT.lock``) is held for the whole
  run, so a second run into the same OUT fails at once instead of sharing
  ``OUT.partial`` with the first;
- under that lock, what an earlier run killed with SIGKILL or a power cut left
  is recovered: ``OUT.old`` (renamed back if OUT is missing: it is the last
  complete output; deleted otherwise) and a stale ``OUT.partial`` (deleted);
- the caller writes and checks everything in ``OUT.partial``; on leaving the
  block normally it is renamed to OUT (the old OUT goes to ``OUT.old`` for the
  moment between the two renames), on any exception (Ctrl-C, ENOSPC, bad
  input) it is deleted and the exception goes on.

``--force`` replaces a directory only: OUT as a regular file or a symlink is
refused (never followed), so a mistyped OUT cannot delete a file or the
contents of whatever a link points at.

``with writing_file(OUT, force=...) as partial:`` is the same for an output
that is one file (a GGUF export): ``OUT.partial`` is a file, renamed over OUT
in one step, and ``--force`` replaces a regular file only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from lowbit.util.errors import LowbitError
from lowbit.util.paths import confined

# What a GGUF import writes beside its weights: where they came from.
IMPORT_RECORD = "lowbit-import.json"

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


def copy_side_files(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Config, generation config and tokenizer files of ``src`` into ``dst``:
    the copies, in SIDE_FILES order."""
    copied = []
    for path in side_files(src, skip):
        if path.is_file():  # a dangling link inside src: nothing to copy
            shutil.copy2(path, dst / path.name)
            copied.append(dst / path.name)
    return copied


class OutputError(LowbitError):
    """An output path lowbit refuses to write, or one another run is writing."""


def _sibling(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


def check_target(out: Path, force: bool, *, file: bool = False) -> None:
    """Refuse an ``out`` that may not be (re)placed: fails early, before any work.
    ``file``: the output is one regular file rather than a directory."""
    kind = "a regular file" if file else "a directory"
    if out.is_symlink():
        raise OutputError(
            f"{out}: is a symbolic link; lowbit does not write through or replace links "
            "(remove it or choose another output path)"
        )
    if out.exists() and not (out.is_file() if file else out.is_dir()):
        raise OutputError(
            f"{out}: exists and is not {kind}; --force replaces only "
            f"{'a file' if file else 'a model directory'} "
            "(remove it or choose another output path)"
        )
    if out.exists() and not force:
        raise OutputError(f"{out} already exists; pass --force to replace it")


def _remove(path: Path) -> None:
    """Delete ``path`` without following it: a link or file is unlinked, a directory removed."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextlib.contextmanager
def locked(out: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``OUT.lock``; if another run holds it, fail at
    once (or, with ``wait``, wait for it).

    The lock file is deleted while still held, when the run ends. A run that
    opened it just before may then hold a lock on a deleted file, so after
    locking each run checks that its file is still the one at the path.
    """
    lock = _sibling(out, ".lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BaseException as e:  # Ctrl-C while waiting included
            os.close(fd)
            if isinstance(e, OSError) and e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutputError(
                    f"{out}: another lowbit run is writing it (locked through {lock}); "
                    "wait for it to finish or choose another output path"
                ) from None
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder deleted it meanwhile: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


def _recover(out: Path) -> None:
    """Undo what a run killed outright left (called only while holding the lock).

    A kill between commit's two renames leaves OUT missing and ``OUT.old``
    holding the last complete output: it is put back. Any ``OUT.old`` beside an
    OUT is a leftover of the final cleanup; any ``OUT.partial`` is unfinished.
    """
    old = _sibling(out, ".old")
    if old.is_dir() and not old.is_symlink() and not out.exists() and not out.is_symlink():
        old.rename(out)
    else:
        _remove(old)
    _remove(_sibling(out, ".partial"))


def _commit(partial: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``partial`` (two renames; see ``_recover``)."""
    if out.exists():
        old = _sibling(out, ".old")
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old)
    else:
        partial.rename(out)


def _named(e: OSError, partial: Path) -> OSError:
    """``e`` naming the output it was writing, when it names no file itself
    (a write that runs out of space says only "No space left on device")."""
    if e.filename is not None or str(partial) in str(e):
        return e
    named = OSError(e.errno, f"{partial}: {e.strerror or e}")
    named.__cause__ = e
    return named


@contextlib.contextmanager
def writing(out: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Lock ``out``, recover a killed run's leftovers, and yield a fresh empty
    ``OUT.partial``; committed to ``out`` when the block completes, deleted if
    it raises (see the module docstring). ``force``: replace an existing
    ``out`` directory."""
    out = Path(out)
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out):
        _recover(out)
        check_target(out, force)  # OUT.old may have been put back
        partial = _sibling(out, ".partial")
        partial.mkdir()
        try:
            yield partial
            _commit(partial, out)
        except OSError as e:
            # Deleting OUT.partial frees the space a full disk needs; a commit
            # that failed between its renames gets the old OUT back.
            _recover(out)
            named = _named(e, partial)
            if named is e:
                raise
            raise named from e
        except BaseException:
            _recover(out)
            raise


@contextlib.contextmanager
def writing_file(out: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Lock ``out``, delete a killed run's ``OUT.partial``, and yield that path
    for the caller to write; renamed over ``out`` (one atomic step) when the
    block completes, deleted if it raises."""
    out = Path(out)
    check_target(out, force, file=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out):
        partial = _sibling(out, ".partial")
        _remove(partial)
        try:
            yield partial
            os.replace(partial, out)
        except OSError as e:
            _remove(partial)
            named = _named(e, partial)
            if named is e:
                raise
            raise named from e
        except BaseException:
            _remove(partial)
            raise
