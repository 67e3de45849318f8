"""``lowbit download`` against a local server that imitates the Hub (HF_ENDPOINT).

Each download runs ``python -m lowbit`` in a child process: huggingface_hub
reads HF_ENDPOINT and its cache location once, when it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_hub import FakeHub, Repo

TOKEN = "hf_secretTOKEN0123456789"
REPO = "tiny-org/tiny-llama"


def _reject(name: str) -> None:
    raise AssertionError(f"--json printed {name}, which strict JSON parsers reject")


@pytest.fixture
def hub(tiny_checkpoint) -> FakeHub:
    src = tiny_checkpoint("llama")
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir()) if p.is_file()}
    files["README.md"] = b"# tiny llama\n"
    # A weight file larger than a few network chunks, in a subfolder (as the
    # original/ folder of Llama repositories), for the cut-off transfer.
    files["original/consolidated.bin"] = np.random.default_rng(0).bytes(6 << 20)
    fake = FakeHub(repos={REPO: Repo(files)}).start()
    yield fake
    fake.stop()


def run(hub_url: str, home: Path, *args: str, token: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": hub_url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "lowbit", "download", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_local_dir_download_is_complete_and_converts(hub, tmp_path):
    out = tmp_path / "model"
    r = run(hub.url, tmp_path / "home", REPO, "--local-dir", str(out), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout, parse_constant=_reject)  # strict JSON (no Infinity)
    repo = hub.repos[REPO]
    assert report["commit"] == repo.commit
    assert report["files"] == sorted(repo.files)
    assert report["verified"] == len(repo.files)
    for name, data in repo.files.items():
        assert (out / name).read_bytes() == data
    c = subprocess.run(
        [sys.executable, "-m", "lowbit", "convert", str(out), str(tmp_path / "q8"), "--preset",
         "q8", "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert c.returncode == 0, c.stderr


def test_include_and_exclude_globs(hub, tmp_path):
    out = tmp_path / "model"
    r = run(
        hub.url, tmp_path / "home", REPO, "--local-dir", str(out),
        "--include", "*.json", "--exclude", "tokenizer*", "--quiet",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = sorted(p.name for p in out.iterdir() if p.is_file())
    want = sorted(n for n in hub.repos[REPO].files if n.endswith(".json") and "tokenizer" not in n)
    assert got == want
    assert "config.json" in got


def test_cache_download_then_offline(hub, tmp_path):
    home = tmp_path / "home"
    r = run(hub.url, home, REPO, "--revision", "main")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path.is_relative_to(home / "hub")
    assert (path / "config.json").read_bytes() == hub.repos[REPO].files["config.json"]
    hub.stop()  # no server at all now
    r = run(hub.url, home, REPO, "--offline")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == path


def test_offline_with_nothing_downloaded_is_a_clear_error(hub, tmp_path):
    r = run(hub.url, tmp_path / "home", REPO, "--offline")
    assert r.returncode == 2
    assert "not downloaded yet" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_repo_and_revision(hub, tmp_path):
    r = run(hub.url, tmp_path / "home", "nobody/nothing")
    assert r.returncode == 2
    assert "nobody/nothing" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(hub.url, tmp_path / "home", REPO, "--revision", "v9")
    assert r.returncode == 2
    assert "'v9'" in r.stderr


def test_unreachable_endpoint(tmp_path):
    r = run("http://127.0.0.1:9", tmp_path / "home", REPO)
    assert r.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in r.stderr
    assert "Traceback" not in r.stderr


def test_token_is_sent_but_never_shown_or_written(hub, tmp_path):
    hub.repos[REPO].private = True
    hub.repos[REPO].token = TOKEN
    home, out = tmp_path / "home", tmp_path / "model"
    r = run(hub.url, home, REPO, "--local-dir", str(out))
    assert r.returncode == 2
    assert "HF_TOKEN" in r.stderr
    r = run(hub.url, home, REPO, "--local-dir", str(out), "--json", token=TOKEN)
    assert r.returncode == 0, r.stderr
    assert any(q.headers.get("authorization") == f"Bearer {TOKEN}" for q in hub.log)
    assert TOKEN not in r.stdout + r.stderr
    for p in [*home.rglob("*"), *out.rglob("*")]:
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p


@pytest.mark.parametrize("where", ["local_dir", "cache"])
def test_cut_transfer_resumes_on_the_next_run(hub, tmp_path, where):
    name = "original/consolidated.bin"
    data = hub.repos[REPO].files[name]
    hub.cut.add(f"{REPO}/{name}")
    home, out = tmp_path / "home", tmp_path / "model"
    extra = ["--local-dir", str(out)] if where == "local_dir" else []
    r = run(hub.url, home, REPO, *extra)
    assert r.returncode == 1, r.stderr
    assert name in r.stderr
    assert "Traceback" not in r.stderr
    partial = list(tmp_path.rglob("*.partial"))
    assert len(partial) == 1
    kept = partial[0].stat().st_size
    assert 0 < kept < len(data)
    assert not any(p.name == "consolidated.bin" for p in tmp_path.rglob("*"))

    hub.down.clear()  # the outage is over
    hub.log.clear()
    r = run(hub.url, home, REPO, *extra)
    assert r.returncode == 0, r.stderr
    path = out if where == "local_dir" else Path(r.stdout.strip())
    assert (path / name).read_bytes() == data
    gets = [q for q in hub.log if q.method == "GET" and q.path.endswith(name)]
    assert [q.headers.get("range") for q in gets] == [f"bytes={kept}-"]
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.parametrize("where", ["local_dir", "cache"])
def test_content_not_matching_its_sha256_is_reported_and_removed(hub, tmp_path, where):
    hub.corrupt.add(f"{REPO}/model.safetensors")
    home, out = tmp_path / "home", tmp_path / "model"
    extra = ["--local-dir", str(out)] if where == "local_dir" else []
    r = run(hub.url, home, REPO, *extra)
    assert r.returncode == 1
    assert "model.safetensors: sha256" in r.stderr
    assert "does not match" in r.stderr
    leftovers = [p for p in [*home.rglob("*"), *out.rglob("*")] if p.is_file()]
    bad = bytes(b ^ 0xFF for b in hub.repos[REPO].files["model.safetensors"])
    assert all(p.read_bytes() != bad for p in leftovers)

    hub.corrupt.clear()
    r = run(hub.url, home, REPO, *extra)
    assert r.returncode == 0, r.stderr
    path = out if where == "local_dir" else Path(r.stdout.strip())
    assert (path / "model.safetensors").read_bytes() == hub.repos[REPO].files["model.safetensors"]


HOSTILE_NAMES = ["../escaped.safetensors", "sub/../../escaped.safetensors", "/tmp/abs.safetensors"]


@pytest.mark.parametrize("where", ["local-dir", "cache"])
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_listed_name_outside_the_directory_is_refused_before_any_write(
    hub, tmp_path, name, where
):
    hub.repos[REPO].files[name] = b"not a model " * 100
    out = tmp_path / "dl" / "model"
    args = ["--local-dir", str(out)] if where == "local-dir" else []
    r = run(hub.url, tmp_path / "home", REPO, *args)
    assert r.returncode != 0
    assert repr(name) in r.stderr
    assert "nothing downloaded" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "dl" / "escaped.safetensors").exists()
    assert not (tmp_path / "escaped.safetensors").exists()
    assert not Path("/tmp/abs.safetensors").exists()
    assert not any(r.path.endswith(".safetensors") for r in hub.log if "/resolve/" in r.path)


def test_a_listed_sha256_that_is_not_one_is_refused(hub, tmp_path):
    hub.repos[REPO].listed_sha256["model.safetensors"] = "../../../../escaped"
    r = run(hub.url, tmp_path / "home", REPO)
    assert r.returncode != 0
    assert "is not a sha256" in r.stderr
    assert not list(tmp_path.rglob("escaped*"))


def test_a_symlink_in_local_dir_pointing_out_is_not_written_through(hub, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "original").symlink_to(tmp_path / "elsewhere")
    r = run(hub.url, tmp_path / "home", REPO, "--local-dir", str(out))
    assert r.returncode != 0
    assert "original/consolidated.bin" in r.stderr
    assert not list((tmp_path / "elsewhere").iterdir())
