"""A local HTTP server that answers like the HuggingFace Hub, for download tests.

It serves the endpoints huggingface_hub's ``snapshot_download`` uses, for
repositories held in memory:

- ``GET /api/models/{repo}/revision/{rev}``: the commit a revision points to;
- ``GET /api/models/{repo}/tree/{rev}``: the file listing, with each LFS file's
  sha256 and each other file's git blob id;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: file metadata (``X-Repo-Commit``,
  ``ETag``) and content, with ``Range`` requests for resuming.

File names are listed as given, hostile ones (``../x.safetensors``,
``sub/../../x``, ``/abs``) included, and ``Repo.listed_sha256`` can list another
LFS sha256 than the content's, as a hostile or broken server would.

Faults a test can switch on: ``cut`` (send half of a file's bytes, close the
connection, then answer 503 until cleared: an outage mid-transfer) and
``corrupt`` (serve other bytes than the listed hash). Every request is logged
with its headers so a test can see what the client sent.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

# Files with these suffixes are stored in git LFS on the Hub: their ETag is
# the sha256 of the content.
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".npz")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    private: bool = False  # needs the token below
    token: str | None = None
    listed_sha256: dict[str, str] = field(default_factory=dict)  # path -> sha256 listed

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def etag(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if self.is_lfs(path) else git_blob_id(data)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    cut: set[str] = field(default_factory=set)  # "repo/path" to cut off mid-transfer
    down: set[str] = field(default_factory=set)  # answered 503 (set after a cut)
    corrupt: set[str] = field(default_factory=set)  # served with other content
    log: list[Request] = field(default_factory=list)
    url: str = ""

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_API = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)(/(?P<kind>revision|tree)/(?P<rev>[^/]+))?/?$"
)
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: object, headers: dict[str, str] | None = None) -> None:
        self._reply(
            200, json.dumps(obj).encode(), {"Content-Type": "application/json"} | (headers or {})
        )

    def _repo(self, name: str) -> Repo | None:
        repo = self.fake.repos.get(name)
        if repo is None:
            self._reply(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            return None
        if repo.private and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._reply(401, b'{"error":"Invalid credentials"}', {"X-Error-Code": "RepoNotFound"})
            return None
        return repo

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        self.fake.log.append(
            Request(self.command, path, {k.lower(): v for k, v in self.headers.items()})
        )
        if m := _API.match(path):
            repo = self._repo(m["repo"])
            if repo is None:
                return
            rev = m["rev"] or "main"
            if rev not in ("main", repo.commit):
                self._reply(
                    404, b'{"error":"Revision not found"}', {"X-Error-Code": "RevisionNotFound"}
                )
                return
            if m["kind"] in (None, "revision"):
                siblings = [{"rfilename": p} for p in repo.files]
                self._json({"id": m["repo"], "sha": repo.commit, "siblings": siblings})
                return
            self._json([self._tree_entry(repo, p) for p in repo.files])
            return
        if m := _RESOLVE.match(path):
            repo = self._repo(m["repo"])
            if repo is None:
                return
            self._file(repo, m["repo"], m["rev"], m["path"])
            return
        self._reply(404)

    @staticmethod
    def _tree_entry(repo: Repo, p: str) -> dict[str, object]:
        data = repo.files[p]
        entry: dict[str, object] = {
            "type": "file",
            "path": p,
            "size": len(data),
            "oid": git_blob_id(data),
        }
        if repo.is_lfs(p):
            entry["lfs"] = {
                "oid": repo.listed_sha256.get(p, hashlib.sha256(data).hexdigest()),
                "size": len(data),
                "pointerSize": 134,
            }
        return entry

    def _file(self, repo: Repo, name: str, rev: str, p: str) -> None:
        if rev not in ("main", repo.commit) or p not in repo.files:
            self._reply(
                404,
                b'{"error":"Entry not found"}',
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit},
            )
            return
        key = f"{name}/{p}"
        if key in self.fake.down and self.command == "GET":
            self._reply(503, b'{"error":"Service unavailable"}')
            return
        data = repo.files[p]
        etag = repo.etag(p)
        if key in self.fake.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if repo.is_lfs(p):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        if self.command == "HEAD":
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return
        start = 0
        if r := re.match(r"bytes=(\d+)-$", self.headers.get("Range", "")):
            start = int(r[1])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if key in self.fake.cut:
            # Announce the whole body, send half, drop the connection; the
            # "outage" lasts until the test clears ``down``.
            self.fake.cut.discard(key)
            self.fake.down.add(key)
            self.send_response(206 if start else 200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._reply(206 if start else 200, body, headers)
