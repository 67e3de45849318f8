"""``--format npz``: the reference documents' NPZ layout, read back with the documented formula."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from lowbit.cli import main
from lowbit.conversion.convert import convert
from lowbit.formats.manifest import ManifestError, load
from lowbit.formats.safetensors import Checkpoint
from lowbit.quant.recipes import PRESETS
from test_convert import _reconstruct

PRESETS_TESTED = ["q4", "q8", "bits1", "bits2", "ternary", "f16"]


def _read(npz: np.lib.npyio.NpzFile, w: dict) -> np.ndarray:
    """A weight rebuilt as the manifest's metadata.reconstruction says."""
    q = npz[w["q"]].astype(np.float32)
    if "q_scales" not in w:
        return q
    shape = q.shape
    q = q.reshape(-1, shape[-1])
    scales = npz[w["q_scales"]]
    zero = npz[w["q_zero_point"]] if "q_zero_point" in w else np.zeros_like(scales)
    g = w["quantization"]["group_size"] or shape[-1]
    per_input = np.arange(shape[-1]) // g
    return ((q - zero[:, per_input]) * scales[:, per_input]).reshape(shape)


@pytest.mark.parametrize("family", ["llama", "qwen2_moe", "gemma"])
def test_npz_reconstructs_what_the_safetensors_directory_holds(family, tiny_checkpoint, tmp_path):
    src = tiny_checkpoint(family, "bfloat16")
    for preset in PRESETS_TESTED:
        assert preset in PRESETS
        ref_dir, npz_dir = tmp_path / f"{preset}-st", tmp_path / f"{preset}-npz"
        convert(src, ref_dir, preset=preset, progress=False)
        convert(src, npz_dir, preset=preset, progress=False, fmt="npz")
        manifest = json.loads((npz_dir / "manifest.json").read_text())
        assert manifest["format_version"] == "2"
        load(npz_dir)  # validates against the shipped NPZ schema
        lowbit = {w["name"]: w for w in load(ref_dir)["weights"]}
        stored = Checkpoint(ref_dir / "model.safetensors")
        with np.load(npz_dir / "model.npz") as npz:
            for w in manifest["weights"]:
                want = _reconstruct(stored, lowbit[w["name"]]).reshape(w["shape"])
                np.testing.assert_array_equal(_read(npz, w), want, err_msg=f"{preset} {w['name']}")
        assert main(["inspect", str(npz_dir), "--verify", "--quiet"]) == 0


def test_npz_codes_are_small_integers(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    convert(tiny_checkpoint("llama"), out, preset="bits2", progress=False, fmt="npz")
    manifest = load(out)
    with np.load(out / "model.npz") as npz:
        for w in manifest["weights"]:
            if w["quantization"]["type"] == "float":
                continue
            q = npz[w["q"]]
            assert q.dtype == np.uint8
            assert int(q.max()) <= 3
            assert w["bit_width"] == 2


def test_inspect_reports_a_damaged_npz(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    convert(tiny_checkpoint("llama"), out, preset="q4", progress=False, fmt="npz")
    npz = out / "model.npz"
    # Rewrite the archive without one member: sizes and checksums change too.
    with zipfile.ZipFile(npz) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    dropped = sorted(members)[0]
    del members[dropped]
    with zipfile.ZipFile(npz, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["metadata"]["size"] = npz.stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["inspect", str(out)]) == 1
    assert dropped in capsys.readouterr().err


def test_unknown_format_version_is_named(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": "7"}))
    with pytest.raises(ManifestError, match="format_version '7'"):
        load(tmp_path)


def test_the_manifest_schemas_know_every_scheme_method_and_width():
    """The JSON schemas enumerate schemes, methods and bit widths: a scheme
    added to the table must be added there too, or its manifests fail."""
    from lowbit.formats.manifest import SCHEMA_FILES, schema
    from lowbit.quant.schemes import METHODS, SCHEMES

    entry = schema(1)["properties"]["weights"]["items"]["properties"]
    assert entry["scheme"]["enum"] == list(SCHEMES)
    assert entry["method"]["enum"] == list(METHODS)
    widths = {s.bits for s in SCHEMES.values()}
    assert widths <= set(entry["bits"]["enum"])
    assert set(SCHEMA_FILES) == {1, "2"}
    npz = schema("2")["properties"]["weights"]["items"]["properties"]
    quant = npz["quantization"]["properties"]
    assert quant["search"]["enum"] == list(METHODS)
    assert widths <= set(quant["bits"]["enum"]) == set(npz["bit_width"]["enum"])
