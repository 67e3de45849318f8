"""GGUF files as conversion input: every block type read, names and layouts mapped."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from lowbit.cli import main
from lowbit.formats.manifest import load
from lowbit.formats.safetensors import Checkpoint
from tiny_gguf import HEADS, KV_HEADS, tensor_table, unpermute, write_tiny_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)


def test_every_block_type_converts_exactly_at_f32(tiny_gguf, tmp_path):
    path, expected = tiny_gguf
    out = tmp_path / "out"
    assert main(["convert", str(path), str(out), "--preset", "f32", "--quiet"]) == 0
    ck = Checkpoint(out)
    for hf, want in expected.items():
        if hf.endswith("q_proj.weight"):
            want = unpermute(want, HEADS)
        elif hf.endswith("k_proj.weight"):
            want = unpermute(want, KV_HEADS)
        np.testing.assert_array_equal(np.asarray(ck.get(hf)), want, err_msg=hf)
    manifest = load(out)
    assert manifest["source"]["files"] == [
        {
            "name": path.name,
            "size": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    ]
    record = json.loads((out / "lowbit-import.json").read_text())
    assert record["gguf_tensors"] == {k: t.name for k, (_, _, t) in tensor_table().items()}
    assert set(record["gguf_tensor_types"]) == {
        "F32",
        "F16",
        "Q8_0",
        "Q4_0",
        "Q4_1",
        "Q4_K",
        "Q6_K",
    }
    assert not list(tmp_path.glob(".lowbit-gguf-*"))  # the intermediate checkpoint is gone


def test_quantized_preset_from_gguf(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    out = tmp_path / "out"
    assert main(["convert", str(path), str(out), "--preset", "q4", "--quiet"]) == 0
    assert main(["inspect", str(out), "--verify", "--quiet"]) == 0


def test_damaged_gguf_is_a_clear_error(tiny_gguf, tmp_path, capsys):
    path, _ = tiny_gguf
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(path.read_bytes()[:5000])
    assert main(["convert", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cut.gguf" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
