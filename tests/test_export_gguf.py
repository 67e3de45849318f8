"""GGUF export: blocks equal to lowbit's own dequantization (bit for bit for
Q8_0 and Q4_0, within the float16 rounding of the minimum for Q4_1 and Q5_1),
files that the gguf reader and transformers' GGUF loader read back as the
model lowbit runs, and clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.exports.gguf import ExportError, export_gguf
from lowbit.exports.gguf_blocks import q4_0, q4_1, q5_1, q8_0
from lowbit.formats.layout import stored_tensor
from lowbit.formats.manifest import read as read_manifest
from lowbit.formats.safetensors import Checkpoint
from lowbit.util.outdir import OutputError
from tiny_tokenizer import write_tiny_tokenizer

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType


def _weights(seed: int, rows: int = 24, cols: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[:, :4] *= 8.0  # a few large columns, as real layers have
    return x


@pytest.mark.parametrize(
    ("scheme", "group", "encode", "qtype"),
    [("int8", 32, q8_0, Q.Q8_0), ("int4", 32, q4_0, Q.Q4_0)],
)
@pytest.mark.parametrize("seed", range(3))
def test_exact_blocks_dequantize_to_lowbits_values_bit_for_bit(scheme, group, encode, qtype, seed):
    qt = lowbit.quantize(_weights(seed), scheme, group_size=group, method="mse")
    np.testing.assert_array_equal(gguf.quants.dequantize(encode(qt), qtype), qt.dequantize())


@pytest.mark.parametrize(
    ("scheme", "group", "encode", "qtype"),
    [
        ("uint4", 32, q4_1, Q.Q4_1),
        ("uint4", 64, q4_1, Q.Q4_1),
        ("uint4", 128, q4_1, Q.Q4_1),
        ("uint5", 32, q5_1, Q.Q5_1),
        ("uint5", 64, q5_1, Q.Q5_1),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_blocks_with_a_minimum_differ_only_by_its_float16_rounding(
    scheme, group, encode, qtype, seed
):
    """lowbit stores scale and zero point, GGUF scale d and minimum m = -scale
    * zero: m rounded to float16 moves every weight of its block by the same
    amount, at most half a float16 unit of m (2^-11 |m|, or 2^-25 below
    float16's normal range), plus float32 rounding of the sum."""
    qt = lowbit.quantize(_weights(seed), scheme, group_size=group, method="hqq")
    ours = qt.dequantize()
    theirs = gguf.quants.dequantize(encode(qt), qtype)
    scale = np.repeat(qt.scales.astype(np.float32), group, axis=1)
    m = -scale * np.repeat(qt.zeros.astype(np.float32), group, axis=1)
    bound = np.maximum(np.abs(m) * 2.0**-11, 2.0**-25) + 2.0**-22 * np.abs(ours)
    assert np.all(np.abs(theirs - ours) <= bound)
    assert not np.array_equal(theirs, ours)  # the rounding is real: the bound is tested


def _model(tiny_checkpoint, tmp_path: Path, family: str, preset: str) -> Path:
    src = tmp_path / f"{family}-src"
    shutil.copytree(tiny_checkpoint(family), src)
    write_tiny_tokenizer(src)
    if family == "gemma3":
        # llama.cpp fixes Gemma 3's sliding layers (all but every 6th): the
        # tiny model's two layers both slide, as in a real Gemma 3.
        config = json.loads((src / "config.json").read_text())
        config["layer_types"] = ["sliding_attention"] * config["num_hidden_layers"]
        (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / f"{family}-{preset}"
    lowbit.convert(src, out, preset=preset, progress=False)
    return out


def _file_tensor(reader, name: str) -> np.ndarray:
    t = next(t for t in reader.tensors if t.name == name)
    values = gguf.quants.dequantize(t.data, t.tensor_type)
    return values.reshape(tuple(reversed([int(n) for n in t.shape])))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_every_tensor_reads_back_as_lowbit_stores_it(tiny_checkpoint, tmp_path, family):
    """q8 (every matrix int8 g32): each tensor of the file, dequantized by the
    gguf package, is lowbit's dequantized weight bit for bit, after the
    converter's own transforms (llama's q/k rows interleaved per head,
    Gemma's norms as 1 + w)."""
    model = _model(tiny_checkpoint, tmp_path, family, "q8")
    report = export_gguf(model, tmp_path / "m.gguf")
    assert set(report.types) == {"Q8_0", "F32"}
    assert not report.requantized
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    config = lowbit.load(model).config
    manifest = read_manifest(model)
    ck = Checkpoint(model, files=[f.name for f in manifest.files])
    arch = reader.fields["general.architecture"].contents()
    names = gguf.get_tensor_name_map(
        next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
        config["num_hidden_layers"],
    )
    for w in manifest.weights:
        gname = names.get_name(w.name, try_suffixes=(".weight", ".bias"))
        values = _file_tensor(reader, gname)
        if len(w.shape) == 1:
            ours = ck.get(w.stored.values).astype(np.float32)
            if family.startswith("gemma") and w.name.endswith("norm.weight"):
                ours = ours + np.float32(1.0)
        else:
            ours = stored_tensor(ck, w).dequantize().reshape(w.shape)
        if family == "llama" and (".q_proj." in w.name or ".k_proj." in w.name):
            heads = config["num_attention_heads" if ".q_proj." in w.name else "num_key_value_heads"]
            rows = ours.shape[0]
            order = np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2)
            ours = ours[order.reshape(-1)]
        np.testing.assert_array_equal(values, ours, err_msg=w.name)


@pytest.mark.parametrize(
    ("family", "preset", "rtol"),
    [
        ("llama", "q8", 1e-5),
        ("qwen2", "q8", 1e-5),
        ("gemma2", "q8", 1e-5),
        ("gemma3", "q8", 1e-5),
        ("llama", "q4-nocal", 1e-2),  # Q4_1: the minimum rounded to float16
    ],
)
def test_transformers_runs_the_export_as_lowbit_runs_the_directory(
    tiny_checkpoint, tmp_path, family, preset, rtol
):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    model = _model(tiny_checkpoint, tmp_path, family, preset)
    export_gguf(model, tmp_path / "m.gguf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    ids = np.arange(1, 40, dtype=np.int64) % 90 + 3
    with torch.inference_mode():
        theirs = hf(torch.from_numpy(ids)[None]).logits[0].numpy()
    ours = lowbit.load(model).forward(ids.astype(np.int32))
    assert np.linalg.norm(theirs - ours) / np.linalg.norm(ours) < rtol


def test_a_scheme_gguf_cannot_hold_is_refused_or_requantized(tiny_checkpoint, tmp_path):
    model = _model(tiny_checkpoint, tmp_path, "llama", "bits2")  # uint2 per row
    out = tmp_path / "m.gguf"
    with pytest.raises(ExportError, match=r"model\.layers\.0\..*uint2.*--requantize"):
        export_gguf(model, out)
    assert not list(tmp_path.glob("m.gguf*"))  # no file, no partial, no lock
    report = export_gguf(model, out, requantize=True)
    assert report.requantized
    assert max(report.requantized.values()) < 0.01
    assert "re-quantized to Q8_0" in report.summary()
    with pytest.raises(OutputError, match="--force"):
        export_gguf(model, out, requantize=True)


def test_moe_models_are_refused_by_name(tiny_checkpoint, tmp_path):
    model = _model(tiny_checkpoint, tmp_path, "qwen3_moe", "q8")
    with pytest.raises(ExportError, match=r"qwen3_moe.*not supported"):
        export_gguf(model, tmp_path / "m.gguf")


def test_sliding_layers_llama_cpp_cannot_express_are_refused(tiny_checkpoint, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoint("gemma3"), src)  # layers: sliding, full
    write_tiny_tokenizer(src)
    lowbit.convert(src, tmp_path / "q8", preset="q8", progress=False)
    with pytest.raises(ExportError, match=r"config\.json: layer_types .*every 6th layer"):
        export_gguf(tmp_path / "q8", tmp_path / "m.gguf")


def test_cli_export_writes_gguf_and_hf_and_refuses_with_exit_2(tiny_checkpoint, tmp_path, capsys):
    from lowbit.cli.app import main

    model = _model(tiny_checkpoint, tmp_path, "qwen2", "q4-int4")
    assert main(["export", str(model), str(tmp_path / "m.gguf")]) == 0
    assert "Q4_0" in capsys.readouterr().out
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert main(["export", str(model), str(tmp_path / "m.gguf")]) == 2  # exists: --force
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(model), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    bits2 = _model(tiny_checkpoint, tmp_path, "llama", "bits2")
    assert main(["export", str(bits2), str(tmp_path / "b.gguf")]) == 2
    assert "--requantize" in capsys.readouterr().err


def test_the_default_models_q4_runs_in_transformers_from_its_gguf(reference_budget, tmp_path):
    """The budget fixture's q4 of SmolLM2-135M (uint4 g64 gptq: Q4_1 blocks):
    transformers' GGUF loader builds the model and the tokenizer from the
    file alone; the tokens are the model's own tokenizer's, and the logits
    lowbit's within the float16 rounding of the minima (measured 0.2%)."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    q4 = reference_budget["q4"]
    report = export_gguf(q4, tmp_path / "q4.gguf")
    assert report.types == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    text = "The leaves of autumn fall; lowbit writes GGUF files."
    ids = Tokenizer.from_file(str(q4 / "tokenizer.json")).encode(text).ids
    assert AutoTokenizer.from_pretrained(tmp_path, gguf_file="q4.gguf")(text)["input_ids"] == ids
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q4.gguf", dtype=torch.float32)
    with torch.inference_mode():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    ours = lowbit.load(q4).forward(np.array(ids, np.int32))
    assert np.linalg.norm(theirs - ours) / np.linalg.norm(ours) < 0.005


def test_loading_a_huggingface_checkpoint_says_to_convert_it(tiny_checkpoint):
    from lowbit.formats.manifest import ManifestError

    src = tiny_checkpoint("llama")
    with pytest.raises(ManifestError, match=r"HuggingFace checkpoint.*run `lowbit convert"):
        lowbit.load(src)
