"""Every name that comes from a file stays inside its directory, and --verify
covers every weight byte the runtime reads.

Hostile names (``../x``, absolute, ``sub/../../x``) and symlinks pointing
elsewhere are refused in manifests, indexes and side files; the runtime reads
only the files the manifest lists, never the index, so that an index naming an
extra shard cannot bring in weights that no checksum covers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.cli import main
from lowbit.formats.inspect_model import inspect_model
from lowbit.formats.manifest import ManifestError
from lowbit.formats.safetensors import INDEX_FILE, Checkpoint, CheckpointError
from lowbit.util.errors import LowbitError
from lowbit.util.paths import UnsafePathError, confined
from runtime_helpers import prompt_ids

pytest.importorskip("transformers")

HOSTILE = ["../outside.safetensors", "sub/../../outside.safetensors", "/etc/hostname", ""]


@pytest.fixture(scope="module")
def sharded(tiny_checkpoint, tmp_path_factory) -> Path:
    """An f32 model in several shards, with an index."""
    out = tmp_path_factory.mktemp("sharded") / "model"
    lowbit.convert(tiny_checkpoint("llama"), out, preset="f32", progress=False, max_shard_bytes=1)
    assert (out / INDEX_FILE).is_file()
    return out


@pytest.fixture
def model(sharded, tmp_path) -> Path:
    """A fresh copy of ``sharded`` a test may damage."""
    out = tmp_path / "model"
    shutil.copytree(sharded, out)
    return out


def edit_manifest(model: Path, change) -> None:
    path = model / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


# ------------------------------------------------------------ the helper


@pytest.mark.parametrize("name", [*HOSTILE, "a/../../b", None, 3])
def test_confined_refuses_names_that_leave_the_directory(tmp_path, name):
    with pytest.raises(UnsafePathError, match="where it came from"):
        confined(tmp_path, name, "where it came from")


def test_confined_follows_symlinks_only_inside(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "real").write_text("x")
    (d / "inside").symlink_to(d / "sub" / "real")
    (tmp_path / "secret").write_text("s")
    (d / "outside").symlink_to(tmp_path / "secret")
    (d / "dir-out").symlink_to(tmp_path)
    assert confined(d, "inside", "t") == d / "inside"
    assert confined(d, "sub/real", "t") == d / "sub" / "real"
    assert confined(d, "not-yet/there", "t") == d / "not-yet" / "there"
    for name in ("outside", "dir-out/secret", "dir-out/new-file"):
        with pytest.raises(UnsafePathError, match="outside"):
            confined(d, name, "t")


def test_a_hub_cache_snapshot_may_link_into_its_own_blobs(tmp_path):
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text("{}")
    snap = repo / "snapshots" / "0123"
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to("../../blobs/abc")
    (tmp_path / "secret").write_text("s")
    (snap / "tokenizer.json").symlink_to(tmp_path / "secret")
    assert confined(snap, "config.json", "t") == snap / "config.json"
    with pytest.raises(UnsafePathError):
        confined(snap, "tokenizer.json", "t")


# ------------------------------------------------------------ manifests


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("field", ["files", "stored"])
def test_a_manifest_naming_a_file_outside_is_refused(model, name, field, capsys):
    def change(m):
        if field == "files":
            m["files"][0]["name"] = name
        else:
            m["weights"][0]["stored"]["file"] = name

    edit_manifest(model, change)
    with pytest.raises(ManifestError, match=r"manifest.json: (files/0/name|weights/0/stored/file)"):
        inspect_model(model, verify=True)
    with pytest.raises(ManifestError):
        lowbit.load(model, verify=True)
    assert main(["inspect", str(model), "--verify"]) != 0
    err = capsys.readouterr().err
    assert "refused" in err
    assert "Traceback" not in err


def test_a_listed_shard_that_links_outside_is_refused(model, tmp_path):
    shard = model / json.loads((model / "manifest.json").read_text())["files"][0]["name"]
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(shard, elsewhere)
    shard.symlink_to(elsewhere)  # same bytes: only the link is wrong
    report = inspect_model(model, verify=True)
    assert not report.ok
    assert any("outside" in p and shard.name in p for p in report.problems)
    with pytest.raises(LowbitError, match="outside"):
        lowbit.load(model, verify=True)


def test_an_npz_manifest_naming_a_file_outside_is_refused(tiny_checkpoint, tmp_path):
    out = tmp_path / "npz"
    lowbit.convert(tiny_checkpoint("llama"), out, preset="q8", progress=False, fmt="npz")
    edit_manifest(out, lambda m: m["metadata"].update(file="../" + m["metadata"]["file"]))
    with pytest.raises(ManifestError, match="metadata/file"):
        inspect_model(out, verify=True)


# ------------------------------------------------------------ indexes


@pytest.mark.parametrize("name", HOSTILE[:3])
def test_a_source_index_naming_a_shard_outside_is_refused(tiny_checkpoint, tmp_path, name):
    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoint("llama", shard_size="20KB"), src)
    index = json.loads((src / INDEX_FILE).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = name
    (src / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"{INDEX_FILE}: weight_map"):
        Checkpoint(src)


def test_an_index_naming_an_unlisted_shard_fails_verify(model, tiny_checkpoint, tmp_path):
    """The bypass: an index pointing a tensor at an extra shard with another
    model's weights. inspect --verify and load(verify=True) refuse it, naming
    the shard; and the runtime would not read it anyway (it reads the manifest's
    files)."""
    other = tmp_path / "other"
    lowbit.convert(tiny_checkpoint("qwen2"), other, preset="f32", progress=False)
    shutil.copy(other / "model.safetensors", model / "extra.safetensors")
    index = json.loads((model / INDEX_FILE).read_text())
    index["weight_map"]["model.embed_tokens.weight"] = "extra.safetensors"
    (model / INDEX_FILE).write_text(json.dumps(index))
    report = inspect_model(model, verify=True)
    assert any("'extra.safetensors'" in p and "does not list" in p for p in report.problems)
    with pytest.raises(LowbitError, match=r"extra\.safetensors"):
        lowbit.load(model, verify=True)


@pytest.mark.parametrize("fmt", ["lowbit", "npz"])
def test_verify_covers_the_config_and_tokenizer_files(tiny_checkpoint, tmp_path, fmt):
    """The runtime reads config.json and the tokenizer files too: --verify
    hashes each one the manifest lists and refuses one it does not list."""
    src = tiny_checkpoint("llama")
    (src / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    model = tmp_path / "model"
    lowbit.convert(src, model, preset="q8", progress=False, fmt=fmt)
    assert inspect_model(model, verify=True).problems == []
    original = (model / "config.json").read_text()
    # Same size, other contents: only the hash can tell.
    (model / "config.json").write_text(original.replace('"silu"', '"gelu"'))
    assert len((model / "config.json").read_text()) == len(original)
    problems = inspect_model(model, verify=True).problems
    assert any(p.startswith("config.json: SHA-256 differs") for p in problems), problems
    if fmt == "lowbit":  # the runtime runs only the lowbit layout
        with pytest.raises(LowbitError, match=r"config\.json"):
            lowbit.load(model, verify=True)
    (model / "config.json").write_text(original)
    (model / "chat_template.jinja").write_text("{{ messages }}")
    problems = inspect_model(model, verify=True).problems
    assert any(p.startswith("chat_template.jinja: not listed") for p in problems), problems
    # Without --verify a user may still edit these files on purpose.
    assert inspect_model(model).problems == []


def test_the_runtime_does_not_read_the_index(sharded, model):
    ids = prompt_ids(n=6)
    want = lowbit.load(sharded).forward(ids)
    (model / INDEX_FILE).unlink()
    np.testing.assert_array_equal(lowbit.load(model, verify=True).forward(ids), want)


# ------------------------------------------------------------ side files


def test_a_side_file_linking_outside_is_not_copied(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoint("llama"), src)
    secret = tmp_path / "secret.txt"
    secret.write_text("private key material")
    (src / "tokenizer.json").symlink_to(secret)
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "--preset", "f32", "--quiet"]) == 2
    assert "tokenizer.json" in capsys.readouterr().err
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and p != secret]
    assert not any(p.read_bytes() == secret.read_bytes() for p in leaked)


def test_a_hub_cache_snapshot_converts(tiny_checkpoint, tmp_path):
    """Side files in a HuggingFace cache snapshot are links into its blobs: fine."""
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in tiny_checkpoint("llama").iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    out = tmp_path / "out"
    lowbit.convert(snap, out, preset="f32", progress=False)
    assert not (out / "config.json").is_symlink()
    assert (out / "config.json").read_bytes() == (repo / "blobs" / "blob-config.json").read_bytes()


def test_load_refuses_a_config_linking_outside(model, tmp_path):
    elsewhere = tmp_path / "config.json"
    shutil.move(model / "config.json", elsewhere)
    (model / "config.json").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match=r"config\.json"):
        lowbit.load(model)


def test_a_converted_model_in_a_hub_cache_snapshot_loads_and_verifies(sharded, tmp_path):
    repo = tmp_path / "models--org--tiny-lowbit"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sharded.iterdir():
        shutil.copy(f, repo / "blobs" / f"blob-{f.name}")
        (snap / f.name).symlink_to(Path("../../blobs") / f"blob-{f.name}")
    ids = prompt_ids(n=4)
    got = lowbit.load(snap, verify=True).forward(ids)
    np.testing.assert_array_equal(got, lowbit.load(sharded).forward(ids))
