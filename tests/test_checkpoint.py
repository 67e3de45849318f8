"""Reading safetensors checkpoints: single file, sharded, and damaged ones."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from lowbit.formats.safetensors import Checkpoint, CheckpointError, read_header
from safetensors.numpy import save_file


def _tensors(rng):
    return {
        "model.embed_tokens.weight": rng.standard_normal((32, 16)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((16, 16)).astype(
            ml_dtypes.bfloat16
        ),
        "model.norm.weight": np.ones(16, np.float16),
    }


def test_single_file_round_trip(tmp_path, rng):
    t = _tensors(rng)
    save_file(t, tmp_path / "model.safetensors")
    ck = Checkpoint(tmp_path)
    assert sorted(ck.names()) == sorted(t)
    for name, arr in ck:
        assert arr.dtype == t[name].dtype
        np.testing.assert_array_equal(arr.view(np.uint8), t[name].view(np.uint8))
    info = ck.info("model.layers.0.self_attn.q_proj.weight")
    assert (info.shape, info.dtype, info.nbytes) == ((16, 16), "BF16", 512)


def _sharded(tmp_path, rng):
    t = _tensors(rng)
    names = sorted(t)
    save_file({n: t[n] for n in names[:2]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({n: t[n] for n in names[2:]}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {
        n: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors" for i, n in enumerate(names)
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return t


def test_sharded_checkpoint(tmp_path, rng):
    t = _sharded(tmp_path, rng)
    ck = Checkpoint(tmp_path)
    assert len(ck) == 3
    np.testing.assert_array_equal(ck.get_float("model.norm.weight"), t["model.norm.weight"])


def test_missing_shard(tmp_path, rng):
    _sharded(tmp_path, rng)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"names shard 'model-00002-of-00002\.safetensors', which is missing"
    ):
        Checkpoint(tmp_path)


def test_index_pointing_at_the_wrong_shard(tmp_path, rng):
    _sharded(tmp_path, rng)
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(
        CheckpointError, match=r"maps 'model\.norm\.weight' to .* which does not hold it"
    ):
        Checkpoint(tmp_path)


def test_truncated_file(tmp_path, rng):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(rng), path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: tensor .* data ends at byte \d+ but the file holds",
    ):
        Checkpoint(tmp_path)


def _raw_file(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_offsets_past_the_end(tmp_path):
    path = tmp_path / "model.safetensors"
    _raw_file(path, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    with pytest.raises(
        CheckpointError, match="tensor 'w': data ends at byte 16 but the file holds 8 bytes"
    ):
        read_header(path)


def test_offsets_that_disagree_with_the_shape(tmp_path):
    path = tmp_path / "model.safetensors"
    _raw_file(path, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 16)
    with pytest.raises(
        CheckpointError, match=r"8 bytes stored for shape \(4,\) F32 \(16 expected\)"
    ):
        read_header(path)


def test_header_longer_than_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(CheckpointError, match="header claims 10000 bytes but the file has 2"):
        read_header(path)


def test_not_json_and_too_short(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff{]x")
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        read_header(path)
    path.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too short for a header"):
        read_header(path)


def test_unsupported_dtypes(tmp_path):
    path = tmp_path / "model.safetensors"
    _raw_file(path, {"w": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 2]}}, b"\0\0")
    with pytest.raises(CheckpointError, match="tensor 'w': unknown dtype 'Q4_K'"):
        read_header(path)
    save_file({"ids": np.arange(4, dtype=np.int64)}, path)
    ck = Checkpoint(path)
    with pytest.raises(
        CheckpointError, match="'ids' has dtype I64; lowbit reads weights stored as F32, F16, BF16"
    ):
        ck.get_float("ids")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        Checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Checkpoint(tmp_path / "absent")
