"""GPTQ: the kernel against the float64 NumPy reference on every SIMD target,
what it buys over the weighted searches, the layer-by-layer runtime it is
calibrated on (hidden states, X^T X against transformers), and the
calibrated conversion that runs it."""

from __future__ import annotations

import json
import shutil

import lowbit
import numpy as np
import pytest
from lowbit import _core
from lowbit.eval.calibration import convert_calibrated, site_name
from lowbit.formats.manifest import read as read_manifest
from lowbit.quant import reference
from lowbit.quant.gptq import GPTQ_DAMP, inverse_factor
from lowbit.quant.quantize import core_params
from lowbit.quant.schemes import SCHEMES
from lowbit.quant.synthetic import heavy_tailed_matrix
from lowbit.runtime.config import core_tensor
from runtime_helpers import prompt_ids
from tiny_tokenizer import TEXT, write_tiny_tokenizer

SCHEME_CASES = [
    ("uint4", 64),
    ("int4", 32),
    ("int8", None),
    ("uint8", None),
    ("uint2", 32),
    ("uint1", None),
    ("ternary", None),
]


def _correlated_hessian(cols: int, seed: int = 3) -> np.ndarray:
    """X^T X of inputs as a layer sees them: a few shared directions (rank
    32) plus noise, channels of very different size (lognormal, as E[x^2]
    of real activations)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((4096, 32)) @ rng.standard_normal((32, cols))
    x = (z + 0.3 * rng.standard_normal((4096, cols))) * rng.lognormal(0.0, 1.0, cols)
    return x.T @ x


def _output_error(x: np.ndarray, x_hat: np.ndarray, h: np.ndarray) -> float:
    """tr(D H D^T) / tr(W H W^T): the relative squared error of the layer's
    output on the inputs behind h, what GPTQ minimises."""
    d = x.astype(np.float64) - x_hat
    w = x.astype(np.float64)
    return float(((d @ h) * d).sum() / ((w @ h) * w).sum())


@pytest.mark.parametrize(("scheme", "gs"), SCHEME_CASES)
def test_gptq_agrees_with_float64_reference(scheme, gs, simd_target):
    """The kernel (float32, lazy batches of 128 columns) and the reference
    (float64, every update at once) reach the same output error within 1e-3
    relative, with at least 95% of the weights identical. Measured: equal
    results for the 4-bit, 2-bit, int8 and ternary cases; uint8 within 1e-5;
    uint1 98% identical, its error within 2e-7. Sums in other orders may
    round a near-tie the other way, and error feedback carries that on."""
    s = SCHEMES[scheme]
    x = heavy_tailed_matrix(64, 256, seed=7)
    h = _correlated_hessian(256)
    qt = lowbit.quantize(x, scheme, gs, method="gptq", hessian=h)
    codes, scales, zeros = reference.gptq(s, x, gs, h, GPTQ_DAMP)
    ref = reference.dequantize(s, codes, scales, zeros, 256, gs)
    ours = qt.dequantize()
    assert _output_error(x, ours, h) == pytest.approx(_output_error(x, ref, h), rel=1e-3)
    assert np.mean(np.abs(ours - ref) <= 1e-6 * np.abs(ref).max()) >= 0.95


@pytest.mark.parametrize(("scheme", "gs"), SCHEME_CASES)
def test_gptq_beats_the_weighted_search(scheme, gs):
    """On correlated inputs GPTQ's output error is at most half the weighted
    search's (wmse/whqq with E[x^2] = diag H). Measured here: 0.04x (uint4
    g64), 0.06x (int4 g32), 0.15x (int8 per row), 0.10x (uint2 g32), 0.23x
    (ternary), 0.13x (uint8); uint1 per row 0.95x, where one bit leaves
    little for the feedback to move, so it only has to win."""
    s = SCHEMES[scheme]
    x = heavy_tailed_matrix(64, 256, seed=7)
    h = _correlated_hessian(256)
    gptq = lowbit.quantize(x, scheme, gs, method="gptq", hessian=h).dequantize()
    weighted = "whqq" if s.asymmetric else "wmse"
    imp = np.diag(h).astype(np.float32)
    plain = lowbit.quantize(x, scheme, gs, method=weighted, importance=imp).dequantize()
    ratio = _output_error(x, gptq, h) / _output_error(x, plain, h)
    assert ratio < (1.0 if scheme == "uint1" else 0.5)


def test_gptq_stores_its_reconstruction_exactly(threads):
    """The reconstruction the kernel leaves is what its stored codes decode
    to, bit for bit, and does not depend on the thread count."""
    x = heavy_tailed_matrix(100, 192, seed=1)  # rows not a multiple of the tiles
    h = _correlated_hessian(192)
    u = inverse_factor(h).astype(np.float32)
    p = core_params(SCHEMES["uint4"], 64, "gptq")
    imp = np.diag(h).astype(np.float32)
    codes, scales, zeros, rec = _core.gptq(x, u, p, "w", imp)
    np.testing.assert_array_equal(rec, _core.dequantize(codes, scales, zeros, 100, 192, p, "w"))
    _core.set_num_threads(3 - threads)
    try:
        again = _core.gptq(x, u, p, "w", imp)
    finally:
        _core.set_num_threads(threads)
    for a, b in zip((codes, scales, zeros), again[:3], strict=True):
        np.testing.assert_array_equal(a, b)


def test_columns_no_input_reached_are_rounded():
    """A zero diagonal (an input channel that was always 0) gets no error and
    passes none on: its weights are rounded as rtn would."""
    x = heavy_tailed_matrix(32, 128, seed=2)
    h = _correlated_hessian(128)
    h[5, :] = h[:, 5] = 0.0
    qt = lowbit.quantize(x, "int8", None, method="gptq", hessian=h)
    col = qt.dequantize()[:, 5]
    scale = qt.scales[:, 0].astype(np.float32)
    expected = np.rint(np.clip(x[:, 5] * (np.float32(1) / scale), -127, 127)) * scale
    np.testing.assert_array_equal(col, expected)


def test_bad_gptq_input_is_refused_naming_the_tensor():
    x = heavy_tailed_matrix(16, 64, seed=2)
    h = _correlated_hessian(64)
    with pytest.raises(ValueError, match="w1: gptq needs the Hessian"):
        lowbit.quantize(x, "uint4", 32, method="gptq", name="w1")
    with pytest.raises(ValueError, match="w2: method 'hqq' takes no hessian"):
        lowbit.quantize(x, "uint4", 32, method="hqq", name="w2", hessian=h)
    with pytest.raises(ValueError, match=r"w3: hessian has shape \(32, 32\)"):
        lowbit.quantize(x, "uint4", 32, method="gptq", name="w3", hessian=h[:32, :32])
    bad = h.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="w4: the Hessian holds NaN"):
        lowbit.quantize(x, "uint4", 32, method="gptq", name="w4", hessian=bad)
    nan_weight = x.copy()
    nan_weight[3, 9] = np.inf
    with pytest.raises(ValueError, match="w5: NaN or Inf"):
        lowbit.quantize(nan_weight, "uint4", 32, method="gptq", name="w5", hessian=h)
    p = core_params(SCHEMES["uint4"], 32, "gptq")
    u = inverse_factor(h).astype(np.float32)
    u[7, 7] = 0.0
    with pytest.raises(ValueError, match="w6 gptq factor: diagonal entry 7"):
        _core.gptq(x, u, p, "w6", None)


# ----------------------------------------------------------- runtime by layer


def _f32_model(tiny_checkpoint, family, tmp_path):
    out = tmp_path / f"{family}-f32"
    lowbit.convert(tiny_checkpoint(family), out, preset="f32", progress=False)
    return lowbit.load(out)


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3_moe"])
def test_layer_by_layer_runs_equal_the_forward_pass(tiny_checkpoint, tmp_path, family):
    """Embedding, then one layer at a time, collects the same statistics as
    the whole forward pass, and leaves the same hidden states as running all
    layers in one call."""
    model = _f32_model(tiny_checkpoint, family, tmp_path)
    core = model._core
    ids = prompt_ids(n=40)
    core.collect_input_stats(True)
    model.forward(ids)
    core.collect_input_stats(False)
    whole = {str(k): v for k, v in core.input_stats().items() if not str(k).startswith("lm")}
    core.rewind(0)
    x = core.embed(ids)
    layers = model.config["num_hidden_layers"]
    core.collect_input_stats(True)
    for layer in range(layers):
        core.rewind(0)
        core.forward_layers(x, layer, layer + 1)
    core.collect_input_stats(False)
    by_layer = {str(k): v for k, v in core.input_stats().items()}
    assert by_layer.keys() == whole.keys()
    for k, (sums, rows) in whole.items():
        assert by_layer[k][1] == rows
        np.testing.assert_allclose(by_layer[k][0], sums, rtol=1e-5, err_msg=k)
    core.rewind(0)
    y = core.embed(ids)
    core.forward_layers(y, 0, layers)
    np.testing.assert_array_equal(x, y)
    assert core.position == len(ids)
    # The last layer's outputs give the forward pass's logits (final norm,
    # lm_head, and gemma2's soft cap), as the measured gains use them.
    core.rewind(0)
    np.testing.assert_array_equal(core.logits(y), model.forward(ids))


def test_forward_layers_refuses_bad_arguments(tiny_checkpoint, tmp_path):
    core = _f32_model(tiny_checkpoint, "llama", tmp_path)._core
    x = core.embed(prompt_ids(n=4))
    with pytest.raises(ValueError, match=r"layers \[1, 9\) are not in \[0, 2\)"):
        core.forward_layers(x, 1, 9)
    with pytest.raises(ValueError, match="writeable C-contiguous float32"):
        core.forward_layers(x[:, :-1], 0, 1)
    with pytest.raises(ValueError, match="writeable C-contiguous float32"):
        core.forward_layers(x.astype(np.float64), 0, 1)
    with pytest.raises(ValueError, match="no tokens"):
        core.forward_layers(x[:0], 0, 1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        core.embed(np.array([5, 10_000]))


def _hf_grams(src, ids):
    """X^T X per nn.Linear of transformers' float32 model (forward pre-hooks)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    grams: dict[str, np.ndarray] = {}

    def hook(name):
        def pre(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            grams[name] = grams.get(name, 0) + (x.T @ x).numpy()

        return pre

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
            mod.register_forward_pre_hook(hook(name + ".weight"))
    with torch.inference_mode():
        model(torch.from_numpy(ids)[None])
    return grams


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
def test_input_grams_match_transformers(tiny_checkpoint, tmp_path, family):
    """X^T X of every linear layer's input, as the core accumulates it
    (float32 products of at most 256 tokens, summed in float64), equals
    transformers' to float32 accuracy; its diagonal is the sum of squares."""
    pytest.importorskip("transformers")
    model = _f32_model(tiny_checkpoint, family, tmp_path)
    ids = prompt_ids(n=40)
    model._core.collect_input_stats(True, gram=True)
    model.forward(ids)
    model._core.collect_input_stats(False)
    grams = {str(k): g for k, (g, _) in model._core.input_gram().items()}
    sums = {str(k): s for k, (s, _) in model._core.input_stats().items()}
    checked = 0
    for name, want in _hf_grams(tiny_checkpoint(family), ids).items():
        site = site_name(core_tensor(name, model.family).key.name)
        scale = np.abs(want).max()
        np.testing.assert_allclose(grams[site], want, rtol=2e-4, atol=1e-6 * scale, err_msg=name)
        np.testing.assert_allclose(np.diag(grams[site]), sums[site], rtol=1e-5)
        checked += 1
    assert checked >= 7 * 2


# --------------------------------------------------------------- conversion


@pytest.fixture
def tokenized_llama(tiny_checkpoint, tmp_path):
    """The tiny llama with a tokenizer, and a calibration text it reads."""
    src = tmp_path / "llama"
    shutil.copytree(tiny_checkpoint("llama"), src)
    write_tiny_tokenizer(src)
    text = tmp_path / "calibration.txt"
    text.write_text(TEXT * 40)
    return src, text


def test_gptq_conversion_records_and_falls_back(tokenized_llama, tmp_path):
    """A gptq rule for every matrix: the layers' matrices are stored as GPTQ
    chose, the embedding (no input, no Hessian) gets plain hqq and says why;
    the manifest records the GPTQ pass; the model runs and differs from the
    weighted search's."""
    src, text = tokenized_llama
    out = tmp_path / "gptq"
    rules = [r"\.weight=uint4:32:gptq"]
    convert_calibrated(
        src, out, "q4", rules, calibration=[text], calibration_tokens=256, progress=False
    )
    manifest = read_manifest(out)
    methods = {w.name: w.method for w in manifest.weights if len(w.shape) == 2}
    assert methods["model.layers.1.mlp.down_proj.weight"] == "gptq"
    assert methods["model.layers.0.self_attn.k_proj.weight"] == "gptq"
    assert methods["model.embed_tokens.weight"] == "hqq"
    doc = json.loads((out / "manifest.json").read_text())
    gptq = doc["recipe"]["calibration"]["gptq"]
    assert gptq == {"matrices": 14, "damp": GPTQ_DAMP, "tokens": 256}
    entry = next(w for w in doc["weights"] if w["name"] == "model.embed_tokens.weight")
    assert "no calibration statistics" in entry["fallback"]
    weighted = tmp_path / "whqq"
    convert_calibrated(
        src,
        weighted,
        "q4",
        [r"\.weight=uint4:32:whqq"],
        calibration=[text],
        calibration_tokens=256,
        progress=False,
    )
    ids = prompt_ids()
    ours = lowbit.load(out).forward(ids)
    assert np.isfinite(ours).all()
    assert not np.array_equal(ours, lowbit.load(weighted).forward(ids))


def test_gptq_without_a_tokenizer_falls_back_to_its_search(tiny_checkpoint, tmp_path, capsys):
    """No tokenizer, no calibration text: every gptq matrix gets its plain
    search, said once on stderr and in each entry."""
    out = tmp_path / "nocal"
    convert_calibrated(
        tiny_checkpoint("llama"), out, "q4", [r"\.weight=int4:32:gptq"], progress=False
    )
    assert "no tokenizer" in capsys.readouterr().err
    doc = json.loads((out / "manifest.json").read_text())
    linear = [w for w in doc["weights"] if "proj" in w["name"]]
    assert {w["method"] for w in linear} == {"mse"}
    assert all("gptq -> mse" in w["fallback"] for w in linear)


def test_a_weight_overwritten_in_place_is_what_the_loaded_model_runs(tiny_checkpoint, tmp_path):
    """GPTQ's pass writes each reconstruction into the float32 working copy
    while the model is loaded (lowbit.eval.gptq): the runtime's shared
    read-only memory map sees it, as a fresh load does."""
    from lowbit.formats.safetensors import Checkpoint

    model = _f32_model(tiny_checkpoint, "llama", tmp_path)
    ids = prompt_ids()
    before = model.forward(ids)
    info = Checkpoint(tmp_path / "llama-f32").info("model.layers.0.mlp.up_proj.weight")
    view = np.memmap(info.file, np.float32, "r+", info.offset, info.shape)
    view[...] *= 0.5
    view.flush()
    del view
    after = model.forward(ids)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, lowbit.load(tmp_path / "llama-f32").forward(ids))
