"""Calibration: the runtime's input statistics against transformers, the
imatrix file, the calibrated conversion, and the calibration text."""

from __future__ import annotations

import dataclasses
import json
import re

import lowbit
import numpy as np
import pytest
from lowbit.cli import main
from lowbit.eval.calibration import (
    IMATRIX_SUFFIX,
    CalibrationError,
    Imatrix,
    convert_calibrated,
    default_calibration_text,
)
from lowbit.eval.text import default_text_files, read_text
from lowbit.formats.manifest import read as read_manifest
from lowbit.util.errors import ArgumentError
from runtime_helpers import prompt_ids

pytest.importorskip("transformers")

DENSE = ("llama", "qwen3", "gemma2")


def _hf_input_sums(src, ids):
    """Per nn.Linear module of transformers' float32 model: sum over tokens
    of x^2 per input channel of what it reads."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    sums: dict[str, np.ndarray] = {}

    def hook(name):
        def pre(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0).numpy()

        return pre

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(hook(name + ".weight"))
    with torch.inference_mode():
        model(torch.from_numpy(ids)[None])
    return sums


@pytest.mark.parametrize("family", DENSE)
def test_input_stats_match_transformers(tiny_checkpoint, tmp_path, family):
    """E[x^2] of every linear layer's input, as the core accumulates it in
    the forward pass, equals transformers' (forward pre-hooks) to float32
    accuracy of the activations."""
    src = tiny_checkpoint(family)
    out = tmp_path / "f32"
    lowbit.convert(src, out, preset="f32", progress=False)
    model = lowbit.load(out)
    ids = prompt_ids()
    model._core.collect_input_stats(True)
    model.forward(ids)
    model._core.collect_input_stats(False)
    ours = {str(k): v for k, v in model._core.input_stats().items()}
    ref = _hf_input_sums(src, ids)
    from lowbit.eval.calibration import site_name
    from lowbit.runtime.config import core_tensor

    checked = 0
    for name, want in ref.items():
        place = core_tensor(name, model.family)
        site = site_name(place.key.name)
        sums, rows = ours[site]
        assert rows == len(ids)
        np.testing.assert_allclose(sums, want, rtol=2e-4, atol=1e-6, err_msg=name)
        checked += 1
    # q, k, v, o, gate, up, down per layer, and lm_head.
    assert checked >= 7 * 2 + 1


def test_collecting_stops_and_restarts(tiny_checkpoint, tmp_path):
    out = tmp_path / "f32"
    lowbit.convert(tiny_checkpoint("llama"), out, preset="f32", progress=False)
    core = lowbit.load(out)._core
    assert core.input_stats() == {}
    core.collect_input_stats(True)
    core.forward(prompt_ids(n=5).astype(np.int32), True)
    core.collect_input_stats(False)
    core.rewind(0)
    core.forward(prompt_ids(n=5).astype(np.int32), True)  # not collected
    assert {r for _, r in core.input_stats().values()} == {5}
    core.collect_input_stats(True)  # anew
    assert core.input_stats() == {}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def test_calibration_and_evaluation_texts_are_disjoint():
    """No run of 10 words of the default calibration text is in the
    evaluation text (the license texts): calibrating does not see what
    validate measures."""
    cal, label = default_calibration_text()
    assert label == "pydoc_data.topics"
    assert len(cal) > 400_000  # about 100k tokens
    ev = _words(read_text(default_text_files()))
    n = 10
    ev_shingles = {tuple(ev[i : i + n]) for i in range(len(ev) - n)}
    cw = _words(cal)
    shared = [
        tuple(cw[i : i + n]) for i in range(len(cw) - n) if tuple(cw[i : i + n]) in ev_shingles
    ]
    assert shared == []


def _imatrix() -> Imatrix:
    rng = np.random.default_rng(0)
    names = ["model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight"]
    mean_sq = {n: rng.random(16).astype(np.float32) for n in names}
    return Imatrix(mean_sq, dict.fromkeys(names, 64), 64, "test")


def test_imatrix_roundtrip(tmp_path):
    im = _imatrix()
    path = tmp_path / "a.imatrix.safetensors"
    im.save(path)
    back = Imatrix.load(path)
    assert back.rows == im.rows
    assert back.gains == {}
    for n, v in im.mean_sq.items():
        np.testing.assert_array_equal(back.mean_sq[n], v)
    assert not path.with_name(path.name + ".partial").exists()
    # A budget's measured gains (one per matrix, the embedding too) ride along.
    gains = {"model.embed_tokens.weight": 8.5, "model.layers.0.mlp.down_proj.weight": 0.25}
    dataclasses.replace(im, gains=gains).save(path)
    assert Imatrix.load(path).gains == gains


@pytest.mark.parametrize("gain", [-1.0, float("nan"), float("inf")])
def test_bad_gain_is_refused_naming_file_and_tensor(tmp_path, gain):
    path = tmp_path / "bad.imatrix.safetensors"
    dataclasses.replace(_imatrix(), gains={"model.embed_tokens.weight": gain}).save(path)
    with pytest.raises(CalibrationError, match=r"bad\.imatrix.*embed_tokens\.weight\.gain"):
        Imatrix.load(path)


def test_bad_imatrix_is_refused_naming_file_and_tensor(tmp_path):
    im = _imatrix()
    name = "model.layers.0.mlp.down_proj.weight"
    im.mean_sq[name][3] = -1.0
    path = tmp_path / "bad.imatrix.safetensors"
    im.save(path)
    with pytest.raises(CalibrationError, match=rf"bad\.imatrix.*{re.escape(name)}.*negative"):
        Imatrix.load(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CalibrationError, match=r"bad\.imatrix"):
        Imatrix.load(path)


def _imatrix_for(src, tmp_path) -> tuple[Imatrix, object]:
    """Statistics from the runtime on a tiny model (it has no tokenizer, so
    token ids stand in for the text)."""
    from lowbit.eval.calibration import per_tensor

    out = tmp_path / "f32"
    lowbit.convert(src, out, preset="f32", progress=False)
    model = lowbit.load(out)
    model._core.collect_input_stats(True)
    model.forward(prompt_ids(n=32))
    return per_tensor(model, 32, "ids"), out


def test_calibrated_conversion_records_and_falls_back(tiny_checkpoint, tmp_path):
    """wmse everywhere: the linear layers are weighted; the embedding has no
    input statistics, so it gets plain mse and its entry says why; the
    manifest records where the statistics came from."""
    src = tiny_checkpoint("llama")
    im, _ = _imatrix_for(src, tmp_path)
    path = tmp_path / "given.imatrix.safetensors"
    im.save(path)
    out = tmp_path / "wmse"
    convert_calibrated(src, out, "q4", [r"\.weight=int4:32:wmse"], imatrix=path, progress=False)
    manifest = read_manifest(out)
    methods = {w.name: w.method for w in manifest.weights if len(w.shape) == 2}
    assert methods["model.layers.0.self_attn.q_proj.weight"] == "wmse"
    assert methods["model.embed_tokens.weight"] == "mse"
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["recipe"]["calibration"]["imatrix"] == str(path.resolve())
    entry = next(w for w in doc["weights"] if w["name"] == "model.embed_tokens.weight")
    assert "no calibration statistics" in entry["fallback"]
    # The weighted model runs and differs from the unweighted one.
    plain = tmp_path / "mse"
    lowbit.convert(src, plain, "q4", [r"\.weight=int4:32:mse"], progress=False)
    ids = prompt_ids()
    assert not np.array_equal(lowbit.load(out).forward(ids), lowbit.load(plain).forward(ids))


def test_calibrated_method_without_statistics_is_refused():
    x = np.ones((4, 32), np.float32)
    with pytest.raises(ArgumentError, match="needs calibration statistics"):
        lowbit.quantize(x, "int4", method="wmse")
    with pytest.raises(ArgumentError, match="takes no importance"):
        lowbit.quantize(x, "int4", method="mse", importance=np.ones(32, np.float32))


@pytest.mark.parametrize(
    ("importance", "message"),
    [
        (np.ones(31, np.float32), r"shape \(32,\)"),
        (np.full(32, -1.0, np.float32), "column 0 is negative"),
        (np.full(32, np.nan, np.float32), "NaN"),
        (np.arange(32), "float32 array"),
    ],
)
def test_bad_importance_is_refused(importance, message):
    x = np.ones((4, 32), np.float32)
    with pytest.raises((ValueError, TypeError), match=message):
        lowbit.quantize(x, "int4", method="wmse", importance=importance, name="w")


def test_cli_convert_reuses_an_imatrix(tiny_checkpoint, tmp_path, capsys):
    src = tiny_checkpoint("llama")
    im, _ = _imatrix_for(src, tmp_path)
    path = tmp_path / "x.imatrix.safetensors"
    im.save(path)
    out = tmp_path / "cli"
    rc = main(["convert", str(src), str(out), "--scheme", r"proj=uint4:32:whqq",
               "--imatrix", str(path), "--quiet"])  # fmt: skip
    assert rc == 0
    methods = {w.method for w in read_manifest(out).weights if w.role == "attn_q"}
    assert methods == {"whqq"}
    assert not out.with_name(out.name + IMATRIX_SUFFIX).exists()  # given, not made


@pytest.mark.parametrize("flag", [["--target-bpw", "5"], ["--max-kld", "0.1"]])
def test_a_bit_budget_without_statistics_is_refused(tiny_checkpoint, tmp_path, capsys, flag):
    """A model without a tokenizer cannot be calibrated: --target-bpw and
    --max-kld say so (exit 2) rather than spend the budget blind."""
    out = tmp_path / "budget"
    rc = main(["convert", str(tiny_checkpoint("llama")), str(out), *flag])
    assert rc == 2
    assert "--target-bpw and --max-kld" in capsys.readouterr().err
    assert not out.exists()


def test_target_bpw_and_max_kld_are_exclusive(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "both"
    argv = ["convert", str(tiny_checkpoint("llama")), str(out), "--target-bpw", "5"]
    assert main([*argv, "--max-kld", "0.1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert not out.exists()
