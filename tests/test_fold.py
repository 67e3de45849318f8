"""Input-channel scales folded into the model (AWQ, SINQ): the sites of every
family, exactness in the runtime, the record saved with the model, and the
validation that divides the scales back out."""

from __future__ import annotations

import json

import lowbit
import numpy as np
import pytest
from lowbit.conversion.convert import convert
from lowbit.conversion.fold import FOLD_FILE, Fold, FoldError, read_fold, sites
from lowbit.eval.calibration import convert_calibrated
from lowbit.eval.validate import validate
from lowbit.formats.safetensors import Checkpoint
from lowbit.models.config import read_config
from lowbit.models.families import family_of
from runtime_helpers import prompt_ids
from tiny_tokenizer import with_tokenizer_and_text

FAMILIES = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
]


def _shapes(src) -> dict[str, tuple[int, ...]]:
    ck = Checkpoint(src)
    return {n: ck.info(n).shape for n in ck.names()}


def _random_fold(src, seed: int = 0) -> Fold:
    """Scales between 1/4 and 4 on every site of ``src``."""
    config = read_config(src / "config.json")
    fold = Fold("awq", family_of(config).norm_plus_one)
    rng = np.random.default_rng(seed)
    shapes = _shapes(src)
    for site in sites(shapes, config):
        cols = shapes[site.readers[0]][-1]
        fold.add(site, site.tied(np.exp(rng.uniform(-1.4, 1.4, cols))))
    return fold


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_has_its_sites(tiny_checkpoint, family):
    src = tiny_checkpoint(family)
    config = read_config(src / "config.json")
    found = {s.name: s for s in sites(_shapes(src), config)}
    layers = config["num_hidden_layers"]
    for layer in range(layers):
        attn = found[f"L{layer}.attn"]
        assert [n.rsplit(".", 2)[-2] for n in attn.readers] == ["q_proj", "k_proj", "v_proj"]
        assert attn.norm == f"model.layers.{layer}.input_layernorm.weight"
        ffn = found[f"L{layer}.ffn"]
        post = family in ("gemma2", "gemma3")
        norm = "pre_feedforward_layernorm" if post else "post_attention_layernorm"
        assert ffn.norm == f"model.layers.{layer}.{norm}.weight"
        o = found[f"L{layer}.o"]
        assert o.producers == (f"model.layers.{layer}.self_attn.v_proj.weight",)
        assert o.tie == (4 // 2, 8)
        assert bool(o.biases) == (family in ("qwen2", "qwen2_moe"))
    if family in ("mixtral", "qwen2_moe", "qwen3_moe"):
        assert any(n.endswith(("gate.weight",)) for n in found["L0.ffn"].readers)  # the router
        assert "L0.E0.down" in found
    else:
        assert "L0.down" in found
    if family == "qwen2_moe":
        assert "L0.shared_down" in found


@pytest.mark.parametrize("family", FAMILIES)
def test_a_folded_model_runs_as_the_original(tiny_checkpoint, tmp_path, family):
    """Random scales (1/4 to 4) folded into every site of a float32 model
    leave lowbit's logits as they were, to float32 rounding; the stored
    weights differ, and validate divides the scales back out."""
    src = tiny_checkpoint(family)
    fold = _random_fold(src)
    plain, folded = tmp_path / "plain", tmp_path / "folded"
    convert(src, plain, "f32", progress=False)
    convert(src, folded, "f32", fold=fold, progress=False)
    ids = prompt_ids()
    want = lowbit.load(plain).forward(ids)
    got = lowbit.load(folded).forward(ids)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not np.allclose(Checkpoint(folded).get(q), Checkpoint(plain).get(q))
    doc = json.loads((folded / "manifest.json").read_text())
    assert doc["recipe"]["fold"] == {"method": "awq", "file": FOLD_FILE}
    assert FOLD_FILE in {f["name"] for f in doc["side_files"]}
    report = validate(folded, src, model_level=False)
    # Norms to float32 rounding (the tiny Gemmas' are 0: a relative error of
    # them is 0 / 0, so by magnitude), matrices relative.
    assert max(w["max_abs"] for w in report.weights) < 1e-5
    assert max(w["rel_error"] for w in report.weights if "proj" in w["name"]) < 1e-6


def test_apply_and_undo_are_inverses(tiny_checkpoint):
    src = tiny_checkpoint("gemma2")  # (1 + w) norms
    fold = _random_fold(src, seed=3)
    ck = Checkpoint(src)
    for name in ck.names():
        if name not in fold:
            continue
        x = ck.get_float(name)
        np.testing.assert_allclose(fold.undo(name, fold.apply(name, x)), x, rtol=1e-5, atol=1e-6)


def test_a_bad_fold_record_is_refused_naming_file_and_site(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("llama")
    config = read_config(src / "config.json")
    shapes = _shapes(src)
    fold = _random_fold(src)
    path = tmp_path / FOLD_FILE
    fold.save(path)
    assert set(read_fold(path, "awq", shapes, config).scales) == set(fold.scales)
    with pytest.raises(FoldError, match="unknown fold method"):
        read_fold(path, "gptq", shapes, config)
    bad = Fold("awq", False)
    bad.scales = {"L9.attn": np.ones(32, np.float32)}
    bad.save(path)
    with pytest.raises(FoldError, match=r"lowbit-fold\.safetensors: L9\.attn: no such site"):
        read_fold(path, "awq", shapes, config)
    bad.scales = {"L0.attn": np.ones(31, np.float32)}
    bad.save(path)
    with pytest.raises(FoldError, match=r"L0\.attn: expected float32 \[32\]"):
        read_fold(path, "awq", shapes, config)
    bad.scales = {"L0.attn": -np.ones(32, np.float32)}
    bad.save(path)
    with pytest.raises(FoldError, match=r"L0\.attn: scales must be positive"):
        read_fold(path, "awq", shapes, config)


def test_sinq_folds_without_calibration(tiny_checkpoint, tmp_path):
    """q4-nocal with --fold sinq: scales from the weights alone, recorded;
    the model runs, and validation compares unfolded weights."""
    src = tiny_checkpoint("qwen2")
    out = tmp_path / "sinq"
    convert_calibrated(src, out, "q4-nocal", fold="sinq", progress=False)
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["recipe"]["fold"]["method"] == "sinq"
    assert np.isfinite(lowbit.load(out).forward(prompt_ids())).all()
    report = validate(out, src, model_level=False)
    norms = [w for w in report.weights if w["name"].endswith("layernorm.weight")]
    assert norms
    assert max(w["rel_error"] for w in norms) < 1e-6
    assert max(w["rel_error"] for w in report.weights) < 0.2


def test_awq_is_searched_in_the_layer_pass(tiny_checkpoint, tmp_path):
    """--fold awq with GPTQ: every site of every layer gets scales, the
    manifest says so, and the folded GPTQ model stays within reach of the
    float model (its weights, unfolded, compared with the float ones)."""
    src, text = with_tokenizer_and_text(tiny_checkpoint("llama"), tmp_path)
    out = tmp_path / "awq"
    convert_calibrated(
        src, out, "q4", calibration=[text], calibration_tokens=64, fold="awq", progress=False
    )
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["recipe"]["fold"]["method"] == "awq"
    config = read_config(src / "config.json")
    shapes = {w["name"]: tuple(w["shape"]) for w in doc["weights"]}
    fold = read_fold(out / FOLD_FILE, "awq", shapes, config)
    assert set(fold.scales) == {s.name for s in sites(shapes, config)}
    report = validate(out, src, model_level=False)
    linear = [w for w in report.weights if "proj" in w["name"]]
    assert max(w["rel_error"] for w in linear) < 0.3
    assert np.isfinite(lowbit.load(out).forward(prompt_ids())).all()


def test_a_budget_does_not_fold(tiny_checkpoint, tmp_path):
    """A budget's sensitivities are measured on the unfolded matrices, so
    --target-bpw converts without a fold unless one is asked for."""
    from lowbit.eval.calibration import _convert_fold

    assert _convert_fold("none") is None
    assert _convert_fold("sinq") == "sinq"
    with pytest.raises(ValueError, match="unknown fold 'awk'"):
        convert_calibrated(tiny_checkpoint("llama"), tmp_path / "x", "q4", fold="awk")


def test_awq_skips_scales_whose_groups_leave_float16():
    """Gemma's activations span six orders of magnitude: at the grid's large
    exponents W diag(s) has groups whose scale or zero point float16 cannot
    hold. Such scales are no candidate (infinite error), not a crash."""
    from lowbit.eval.gptq import _output_error
    from lowbit.quant.recipes import Recipe

    plan = Recipe.from_args("q4").plan("model.layers.0.mlp.up_proj.weight", (8, 64))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    h = np.eye(64)
    fine = _output_error(plan, w, h, np.ones(64))
    assert 0.0 < fine < np.inf
    huge = np.ones(64)
    huge[:32] = 1e6  # scaled weights near 1e6: a group scale past 65504
    assert _output_error(plan, w, h, huge) == np.inf
