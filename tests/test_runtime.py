"""The forward pass against transformers, for every family, on tiny random models."""

from __future__ import annotations

from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit import _core
from lowbit.conversion.dequantized import write_dequantized
from runtime_helpers import hf_logits, prompt_ids, relative_error
from tiny_models import FAMILIES

pytest.importorskip("transformers")

MOE = ("mixtral", "qwen2_moe", "qwen3_moe")


@pytest.fixture(scope="session")
def converted(tiny_checkpoint, tmp_path_factory):
    """converted(family, preset) -> (source checkpoint, model directory), cached."""
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def make(family: str, preset: str) -> tuple[Path, Path]:
        if (family, preset) not in cache:
            src = tiny_checkpoint(family)
            out = tmp_path_factory.mktemp(f"{family}-{preset}") / "model"
            lowbit.convert(src, out, preset=preset, progress=False)
            cache[family, preset] = (src, out)
        return cache[family, preset]

    return make


@pytest.mark.parametrize("family", list(FAMILIES))
def test_f32_model_matches_transformers(converted, family):
    src, out = converted(family, "f32")
    ids = prompt_ids()
    ref = hf_logits(src, ids)
    ours = lowbit.load(out).forward(ids)
    assert ours.shape == ref.shape
    assert ours.dtype == np.float32
    assert relative_error(ours, ref) < 1e-4
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("preset", ["q8", "q4", "bits2", "ternary"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_quantized_model_matches_transformers_on_its_dequantized_weights(
    converted, family, preset, tmp_path
):
    """Kernel error alone: transformers runs the very weights lowbit runs."""
    _, out = converted(family, preset)
    ids = prompt_ids()
    ref = hf_logits(write_dequantized(out, tmp_path / "deq"), ids)
    ours = lowbit.load(out).forward(ids)
    assert relative_error(ours, ref) < 1e-4
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2_moe"])
def test_f16_and_bf16_weights_run_as_stored(converted, family, tmp_path):
    for preset in ("f16", "bf16"):
        _, out = converted(family, preset)
        ids = prompt_ids()
        ref = hf_logits(write_dequantized(out, tmp_path / preset), ids)
        assert relative_error(lowbit.load(out).forward(ids), ref) < 1e-4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefill_equals_single_token_decode_steps(converted, family):
    _, out = converted(family, "q4")
    model = lowbit.load(out)
    ids = prompt_ids()
    prefill = model.forward(ids)
    steps = np.concatenate([model.forward(ids[i : i + 1], start=i) for i in range(len(ids))])
    assert relative_error(steps, prefill) < 1e-5
    # A prefix, then the rest: the cache carries the first part.
    half = len(ids) // 2
    model.forward(ids[:half])
    rest = model.forward(ids[half:], start=half)
    assert relative_error(rest, prefill[half:]) < 1e-5


def test_logits_do_not_depend_on_threads_or_simd_target(converted, threads, simd_target):
    _, out = converted("qwen2_moe", "q4")
    ids = prompt_ids()
    _core.set_num_threads(2)
    _core.force_target("")
    reference = lowbit.load(out).forward(ids)
    _core.set_num_threads(threads)
    _core.force_target(simd_target)
    ours = lowbit.load(out).forward(ids)
    assert relative_error(ours, reference) < 1e-5


def test_long_prompt_runs_in_chunks(tiny_checkpoint, tmp_path):
    """600 tokens: more than one 256-token chunk, past the config's context."""
    src = tiny_checkpoint("llama")
    out = tmp_path / "model"
    lowbit.convert(src, out, preset="f32", progress=False)
    ids = prompt_ids(n=600)
    ref = hf_logits(src, ids)
    ours = lowbit.load(out, context_length=600).forward(ids)
    assert relative_error(ours, ref) < 1e-4


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])
def test_int8_kv_cache_stays_close_to_float(converted, family):
    _, out = converted(family, "f32")
    ids = prompt_ids()
    exact = lowbit.load(out).forward(ids)
    approx = lowbit.load(out, kv_cache="int8").forward(ids)
    assert 0 < relative_error(approx, exact) < 2e-2
    assert np.mean(approx.argmax(1) == exact.argmax(1)) >= 0.9


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    from tiny_models import make_tiny_checkpoint

    scaling = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    src = make_tiny_checkpoint("llama", tmp_path / "src", rope_parameters=scaling)
    out = tmp_path / "out"
    lowbit.convert(src, out, preset="f32", progress=False)
    ids = prompt_ids()
    assert relative_error(lowbit.load(out).forward(ids), hf_logits(src, ids)) < 1e-4


def test_unsupported_rope_type_is_a_clear_error(converted, tmp_path):
    import json
    import shutil

    _, out = converted("llama", "f32")
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
        lowbit.load(bad)
