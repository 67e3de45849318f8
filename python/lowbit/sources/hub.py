"""Downloading checkpoints from the HuggingFace Hub: ``lowbit download`` and ``lowbit.download``.

huggingface_hub does the work: the repository listing, the token (from
``HF_TOKEN`` or the stored login), ``HF_ENDPOINT`` mirrors, the shared cache or a
local directory (``snapshot_download``). Two things it does not do, lowbit adds:

- Resuming across runs. Since huggingface_hub 1.2x a transfer that fails is
  deleted (a partial file is only resumed within the same run), so a 15 GB
  weight file cut off at 14 GB starts again from zero. lowbit fetches the LFS
  files (the weights) itself, into ``*.partial`` files that the next run
  continues with an HTTP Range request, then hands them to huggingface_hub's
  layout, which accepts a file whose sha256 matches its ETag.
- Content checks. huggingface_hub checks sizes only; lowbit checks every file
  against the hash the Hub lists for it (sha256 for LFS files, the git blob id
  for the others) and removes a file that does not match: reported, never kept.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lowbit.util.errors import LowbitError
from lowbit.util.hashing import CHUNK_BYTES, file_digest
from lowbit.util.paths import UnsafePathError, check_name, confined


class DownloadError(LowbitError):
    """A download that failed or delivered damaged files; the message names them.

    ``bad_input``: the request itself was wrong (no such repository, revision
    or access; nothing downloaded yet in offline mode), not the transfer.
    """

    def __init__(self, message: str, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


@dataclass
class DownloadResult:
    repo_id: str
    revision: str | None
    commit: str | None
    path: str
    files: list[str] = field(default_factory=list)
    verified: int = 0  # files whose content hash was checked against the Hub's listing

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _content_id(path: Path, lfs: bool) -> str:
    """The id the Hub lists for a file: sha256 of an LFS file, else its git blob sha1."""
    if lfs:
        return file_digest(path, "sha256")
    return file_digest(path, "sha1", b"blob %d\0" % path.stat().st_size)


def _discard(local: Path, root: Path, filename: str) -> None:
    """Remove a damaged file: the link or file, its cache blob, its download metadata."""
    target = local.resolve()
    for p in {local, target}:
        p.unlink(missing_ok=True)
    # local_dir mode keeps an ETag record per file; without it the next run
    # would trust the (deleted) file's metadata.
    (root / ".cache" / "huggingface" / "download" / f"{filename}.metadata").unlink(missing_ok=True)


def _listing(
    api: Any,
    repo_id: str,
    commit: str,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
) -> list[Any]:
    """The files of the commit that the globs select (huggingface_hub RepoFile)."""
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    listing = [
        f
        for f in api.list_repo_tree(repo_id, revision=commit, recursive=True)
        if isinstance(f, RepoFile)
    ]
    return list(
        filter_repo_objects(
            listing, allow_patterns=include, ignore_patterns=exclude, key=lambda f: f.path
        )
    )


def _check_listing(repo_id: str, entries: list[Any], local_dir: Path | None) -> None:
    """Refuse, before any transfer, a listing with a name that leaves the directory.

    The names (and the LFS sha256, which names the cache blob) come from the
    server; ``../x.safetensors`` or ``sub/../../x`` would be written, hashed and
    deleted outside ``--local-dir`` or the cache.
    """
    try:
        for entry in entries:
            what = f"{repo_id}: the Hub lists a file"
            if local_dir is not None:
                confined(local_dir, entry.path, what)
            else:
                check_name(entry.path, what)
            if entry.lfs is not None and not re.fullmatch(r"[0-9a-f]{64}", str(entry.lfs.sha256)):
                raise DownloadError(
                    f"{repo_id}: {entry.path}: the Hub lists sha256 {entry.lfs.sha256!r}, "
                    "which is not a sha256"
                )
    except UnsafePathError as e:
        raise DownloadError(f"{e} (nothing downloaded)") from None


def _mismatch(entry: Any, got: str) -> str:
    kind, expected = ("sha256", entry.lfs.sha256) if entry.lfs else ("git blob id", entry.blob_id)
    return f"{entry.path}: {kind} {got} does not match the Hub's {expected}"


def _damaged(repo_id: str, commit: str, bad: list[str]) -> DownloadError:
    return DownloadError(
        f"{repo_id}@{commit[:12]}: damaged download, file(s) removed (run again to "
        "fetch them anew):\n  " + "\n  ".join(bad)
    )


def _verify(repo_id: str, commit: str, root: Path, entries: list[Any]) -> int:
    """Check downloaded files against the Hub's listing; returns how many were checked."""
    bad = []
    checked = 0
    for entry in entries:
        local = confined(root, entry.path, f"{repo_id}: {root}")
        if not local.exists():
            continue
        got = _content_id(local, entry.lfs is not None)
        expected = entry.lfs.sha256 if entry.lfs else entry.blob_id
        checked += 1
        if got != expected:
            _discard(local, root, entry.path)
            bad.append(_mismatch(entry, got))
    if bad:
        raise _damaged(repo_id, commit, bad)
    return checked


# Attempts per file within one run when the connection drops mid-transfer;
# each continues where the last one stopped.
ATTEMPTS = 3


def _fetch_resumable(url: str, partial: Path, size: int, desc: str, progress: bool) -> None:
    """Download ``url`` into ``partial``, continuing from the bytes already there."""
    from tqdm import tqdm

    partial.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
        for attempt in range(ATTEMPTS):
            try:
                _fetch_once(url, partial, size, bar)
                break
            except Exception as e:
                # Dropped connections and timeouts (httpx errors) are worth
                # another try; an HTTP error status is not.
                transient = type(e).__module__.startswith("httpx") and not hasattr(e, "response")
                if not transient or attempt == ATTEMPTS - 1:
                    raise
                time.sleep(1.0)
    if partial.stat().st_size != size:
        raise OSError(f"{desc}: received {partial.stat().st_size} of {size} bytes")


def _fetch_once(url: str, partial: Path, size: int, bar: Any) -> None:
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    have = partial.stat().st_size if partial.exists() else 0
    if have > size:  # not a prefix of this file: start again
        have = 0
    headers = build_hf_headers()
    if have:
        headers["Range"] = f"bytes={have}-"
    # huggingface_hub's session: its proxy, certificate and timeout settings.
    with get_session().stream("GET", url, headers=headers, follow_redirects=True) as response:
        hf_raise_for_status(response)
        if response.status_code != 206:  # the server sent the whole file
            have = 0
        bar.reset(total=size)
        bar.update(have)
        with partial.open("r+b" if have else "wb") as f:
            f.seek(have)
            f.truncate()
            for chunk in response.iter_bytes(CHUNK_BYTES):
                f.write(chunk)
                bar.update(len(chunk))


def _fetch_weights(
    repo_id: str,
    commit: str,
    entries: list[Any],
    local_dir: Path | None,
    cache_dir: Path | None,
    progress: bool,
) -> set[str]:
    """Fetch the LFS files not yet present, resumably; returns the paths fetched.

    Each lands where huggingface_hub looks for it: the file itself in a local
    directory, the blob named by its sha256 in the cache. A file whose content
    does not match is deleted, partial file included, and reported.
    """
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import repo_folder_name

    fetched, bad = set(), []
    blobs = Path(cache_dir or constants.HF_HUB_CACHE) / (
        repo_folder_name(repo_id=repo_id, repo_type="model") + "/blobs"
    )
    for entry in entries:
        if entry.lfs is None:
            continue
        sha = entry.lfs.sha256
        if local_dir is not None:
            final = confined(local_dir, entry.path, f"{repo_id}: --local-dir")
            partial = local_dir / ".cache" / "lowbit" / f"{sha}.partial"
        else:
            final = blobs / sha
            partial = blobs / f"{sha}.partial"
        if final.exists():
            continue
        url = hf_hub_url(repo_id, entry.path, revision=commit)
        _fetch_resumable(url, partial, entry.lfs.size, entry.path, progress)
        got = file_digest(partial, "sha256")
        if got != sha:
            partial.unlink()
            bad.append(_mismatch(entry, got))
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(final)
        fetched.add(entry.path)
    if bad:
        raise _damaged(repo_id, commit, bad)
    return fetched


def download(
    repo_id: str,
    revision: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    local_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    offline: bool = False,
    progress: bool = True,
    verify: bool = True,
) -> DownloadResult:
    """Download a model repository (or the files matching ``include``) and check it.

    ``revision``: a branch, tag or commit (default: main). ``include`` and
    ``exclude``: glob patterns on file names. ``local_dir``: put plain files
    there instead of the shared cache. ``offline``: use only what is already
    downloaded (as ``HF_HUB_OFFLINE=1`` does). The token comes from ``HF_TOKEN``
    or the stored login, as huggingface_hub reads it; lowbit never prints or
    writes it. Raises DownloadError for a repository, revision or file that
    cannot be had, and for files whose content does not match the Hub's hash.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hf_errors
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    api = HfApi()
    include = list(include) if include else None
    exclude = list(exclude) if exclude else None
    if not progress:
        disable_progress_bars()
    local_dir = Path(local_dir) if local_dir is not None else None
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    try:
        commit, entries, fetched = None, [], set()
        if not offline:
            # The commit whose listing the files are fetched and checked
            # against. snapshot_download is still given the branch or tag, so
            # that the cache records where it points and --offline finds it.
            commit = api.repo_info(repo_id, revision=revision).sha
            entries = _listing(api, repo_id, commit, include, exclude)
            _check_listing(repo_id, entries, local_dir)
            fetched = _fetch_weights(repo_id, commit, entries, local_dir, cache_dir, progress)
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=include,
            ignore_patterns=exclude,
            local_dir=local_dir,
            cache_dir=cache_dir,
            local_files_only=offline,
        )
        root = Path(path)
        checked = len(fetched)
        if verify and commit:
            rest = [e for e in entries if e.path not in fetched]
            checked += _verify(repo_id, commit, root, rest)
        files = sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and ".cache" not in p.relative_to(root).parts
        )
    except hf_errors.GatedRepoError:  # a subclass of the next: first
        raise DownloadError(
            f"{repo_id}: gated repository; accept its terms and set HF_TOKEN", bad_input=True
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise DownloadError(
            f"{repo_id}: no such repository on the Hub, or it is private and HF_TOKEN is "
            "missing or lacks access",
            bad_input=True,
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise DownloadError(f"{repo_id}: no revision {revision!r}", bad_input=True) from None
    except hf_errors.LocalEntryNotFoundError:
        raise DownloadError(
            f"{repo_id}: not downloaded yet, and the Hub cannot be reached "
            "(offline mode or no connection)",
            bad_input=True,
        ) from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        # Error texts from huggingface_hub name URLs and files, never the token.
        raise DownloadError(f"{repo_id}: download failed: {e}") from None
    except Exception as e:
        if not type(e).__module__.startswith("httpx"):
            raise
        # Connection refused, DNS failure, timeout: the Hub cannot be reached.
        endpoint = api.endpoint
        raise DownloadError(
            f"{repo_id}: cannot reach {endpoint} ({type(e).__name__}: {e}); "
            "use --offline for files already downloaded"
        ) from None
    finally:
        if not progress:
            enable_progress_bars()
    return DownloadResult(repo_id, revision, commit, str(path), files, checked)
