"""Names that come from a file or a server, confined to their directory.

A manifest's ``files[].name``, an index's shard names, a Hub listing's paths:
lowbit joins each to a directory it was told about, and a hostile name
(``../x``, ``/etc/hostname``, ``sub/../../x``, a symlink pointing elsewhere)
would make it read, hash, overwrite or delete a file outside that directory.
Every such name goes through ``confined`` before any I/O on it.

Symlinks are followed only when their target stays inside the directory, with
one exception: a snapshot of the HuggingFace cache
(``.../models--org--name/snapshots/<commit>/``) holds links into the
repository's own ``blobs/`` folder, which is where huggingface_hub keeps the
content, so targets in that folder are accepted for such a directory.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from lowbit.util.errors import LowbitError


class UnsafePathError(LowbitError):
    """A name from a file or server that points outside its directory."""


def check_name(name: object, what: str) -> str:
    """``name`` if it is a plain relative path (no ``..``, not absolute, not empty).

    A purely textual check, for names that are checked before their
    directory exists (a Hub listing); ``confined`` does this and more.
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise UnsafePathError(f"{what}: {name!r} is not a file name; refused")
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or "\\" in name or ".." in parts:
        raise UnsafePathError(
            f"{what}: {name!r} is not a plain relative name inside the directory "
            "(absolute, or with '..'); refused"
        )
    return name


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _hub_blobs(root: Path) -> Path | None:
    """The ``blobs`` folder whose content a HuggingFace cache snapshot links to."""
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root.parent.parent / "blobs"
    return None


def confined(root: str | os.PathLike[str], name: object, what: str) -> Path:
    """``root / name``, refused (UnsafePathError naming ``what``) if it leaves ``root``.

    ``what`` says where the name came from, e.g. ``"manifest.json: files[2].name"``.
    The path need not exist; the parts of it that do are resolved, symlinks
    included, and must stay inside ``root`` (or its Hub cache's ``blobs``).
    """
    check_name(name, what)
    assert isinstance(name, str)
    root = Path(root)
    path = root / name
    real_root = root.resolve()
    real = path.resolve()
    if _inside(real, real_root):
        return path
    blobs = _hub_blobs(real_root)
    if blobs is not None and real.parent == blobs:
        return path
    raise UnsafePathError(
        f"{what}: {name!r} resolves to {real}, outside {root} (a symlink pointing "
        "elsewhere); refused"
    )
