"""Conversion: every preset on every family, exact against the NumPy reference; bad input."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest
from lowbit.cli import main
from lowbit.conversion.convert import convert
from lowbit.formats.manifest import load
from lowbit.formats.safetensors import Checkpoint
from lowbit.quant import reference
from lowbit.quant.dtypes import FLOAT_SCHEME_DTYPES
from lowbit.quant.recipes import PRESETS
from lowbit.quant.schemes import get_scheme
from tiny_models import FAMILIES

# The module, not the function that `lowbit.convert` names.
convert_module = importlib.import_module("lowbit.conversion.convert")


def _sse(x: np.ndarray, y: np.ndarray) -> float:
    return float(((x - y).astype(np.float64) ** 2).sum())


def _reconstruct(out_ck: Checkpoint, w: dict) -> np.ndarray:
    s = get_scheme(w["scheme"])
    stored = w["stored"]
    if s.is_float:
        return out_ck.get(stored["values"]).astype(np.float32)
    cols = w["shape"][-1]
    zeros = out_ck.get(stored["zeros"]).astype(np.float32) if "zeros" in stored else None
    return reference.dequantize(
        s,
        out_ck.get(stored["values"]),
        out_ck.get(stored["scales"]).astype(np.float32),
        zeros,
        cols,
        w["group_size"],
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_preset_matches_the_reference(family, dtype, tiny_checkpoint, tmp_path):
    src = tiny_checkpoint(family, dtype)
    source = Checkpoint(src)
    for preset in PRESETS:
        out = tmp_path / preset
        convert(src, out, preset=preset, progress=False)
        manifest = load(out)
        assert {w["name"] for w in manifest["weights"]} == set(source.names())
        stored = Checkpoint(out / "model.safetensors")
        for w in manifest["weights"]:
            x = source.get(w["name"]).astype(np.float32)
            x2 = x.reshape(-1, x.shape[-1]) if x.ndim >= 2 else x
            got = _reconstruct(stored, w).reshape(x2.shape)
            s = get_scheme(w["scheme"])
            if s.is_float:
                want = x2.astype(FLOAT_SCHEME_DTYPES[s.name]).astype(np.float32)
                np.testing.assert_array_equal(got, want)
                continue
            codes, scales, zeros = reference.quantize(s, x2, w["group_size"], w["method"])
            want = reference.dequantize(s, codes, scales, zeros, x2.shape[1], w["group_size"])
            if w["method"] == "rtn":
                np.testing.assert_array_equal(got, want, err_msg=f"{preset} {w['name']}")
            else:  # searches may break near-ties differently (see test_kernels_search)
                assert _sse(x2, got) == pytest.approx(_sse(x2, want), rel=1e-4, abs=1e-12)


@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sharded_input_converts_like_a_single_file(family, dtype, tiny_checkpoint, tmp_path):
    single = tiny_checkpoint(family, dtype)
    sharded = tiny_checkpoint(family, dtype, shard_size="20KB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    for preset in PRESETS:
        a, b = tmp_path / f"{preset}-1", tmp_path / f"{preset}-n"
        convert(single, a, preset=preset, progress=False)
        convert(sharded, b, preset=preset, progress=False)
        ck_a, ck_b = Checkpoint(a), Checkpoint(b)
        assert sorted(ck_a.names()) == sorted(ck_b.names())
        for name in ck_a.names():
            np.testing.assert_array_equal(ck_a.get(name), ck_b.get(name), err_msg=name)


def test_sharded_output_and_side_files(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("llama", "float32")
    summary = convert(src, tmp_path / "out", preset="q8", progress=False, max_shard_bytes=20_000)
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert (out / "config.json").read_text() == (src / "config.json").read_text()
    assert main(["inspect", str(out), "--verify", "--quiet"]) == 0
    assert summary.output_bytes == sum(f["size"] for f in load(out)["files"])


def test_refuses_an_existing_output_unless_forced(tiny_checkpoint, tmp_path, capsys):
    src = tiny_checkpoint("qwen3", "float32")
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "--quiet"]) == 0
    assert main(["convert", str(src), str(out), "--quiet"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["convert", str(src), str(out), "--quiet", "--force", "--preset", "q8"]) == 0
    assert load(out)["recipe"]["preset"] == "q8"


def test_killed_halfway_leaves_no_output_and_a_rerun_succeeds(
    tiny_checkpoint, tmp_path, monkeypatch
):
    src = tiny_checkpoint("mistral", "float32")
    out = tmp_path / "out"
    real = convert_module._encode
    calls = {"n": 0}

    def dying(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill would stop it
        return real(*args)

    monkeypatch.setattr(convert_module, "_encode", dying)
    with pytest.raises(KeyboardInterrupt):
        convert(src, out, progress=False)
    assert not out.exists()
    monkeypatch.setattr(convert_module, "_encode", real)
    convert(src, out, progress=False)
    assert out.is_dir()
    assert not (tmp_path / "out.partial").exists()


def test_unknown_architecture_and_bad_files_exit_2(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoint("llama", "float32"), src)
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    assert main(["convert", str(src), str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "unsupported architecture 'FalconForCausalLM'; supported: LlamaForCausalLM" in err
    assert "Traceback" not in err

    shutil.copy(tiny_checkpoint("llama", "float32") / "config.json", src / "config.json")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert main(["convert", str(src), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: tensor" in err
    assert "truncated" in err
    assert not (tmp_path / "o2").exists()
    assert not (tmp_path / "o2.partial").exists()

    (src / "config.json").unlink()
    assert main(["convert", str(src), str(tmp_path / "o3")]) == 2
    assert "config.json: missing" in capsys.readouterr().err


def test_inspect_finds_damage(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    convert(tiny_checkpoint("gemma", "float32"), out, progress=False)
    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"]
    assert report["memory"]["kv_cache"] > 0

    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main(["inspect", str(out), "--quiet"]) == 0  # same size: only --verify sees it
    assert main(["inspect", str(out), "--verify", "--quiet"]) == 1
    assert "model.safetensors: SHA-256 differs" in capsys.readouterr().err

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["weights"][0]["shape"][0] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["inspect", str(out), "--quiet"]) == 1
    assert "needs" in capsys.readouterr().err

    manifest["weights"][0]["scheme"] = "int5"
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["inspect", str(out), "--quiet"]) == 1
    assert "weights/0/scheme" in capsys.readouterr().err

    weights.write_bytes(bytes(data[:100]))
    manifest["weights"][0]["scheme"] = "int8"
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["inspect", str(out), "--quiet"]) == 1
    assert "bytes, manifest says" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize(
    ("preset", "rules"),
    [("q4", ()), ("bits2", ()), ("f16", ()), ("q8", (r"mlp=uint4:16:mse", "embed=bf16"))],
)
def test_the_manifest_round_trips_through_its_records(preset, rules, tiny_checkpoint, tmp_path):
    """The manifest written is the records' JSON: read back into WeightEntry and
    FileEntry records and written out again, it is the same text (float values
    alone, codes and scales, codes, scales and zeros; several shards)."""
    from lowbit.formats.manifest import Manifest, WeightEntry, read

    src = tiny_checkpoint("qwen2_moe", "float32")
    out = tmp_path / "out"
    convert(src, out, preset=preset, rules=list(rules), progress=False, max_shard_bytes=20_000)
    text = (out / "manifest.json").read_text()
    document = json.loads(text)
    for w in document["weights"]:
        assert WeightEntry.from_dict(w).as_dict() == w
    manifest = read(out)
    assert json.dumps(manifest.as_dict(), indent=1) == text
    assert json.dumps(Manifest.from_dict(document).as_dict(), indent=1) == text
