"""The runtime on the embedded default model (SmolLM2-135M-Instruct): greedy
generation equals transformers' at f32, and stays readable at q8."""

from __future__ import annotations

from pathlib import Path

import lowbit
import pytest
from lowbit.sources.default_model import default_model_path

pytest.importorskip("transformers")

PROMPT = "Write a haiku about autumn"


@pytest.fixture(scope="module")
def default_converted(tmp_path_factory):
    """convert(preset) -> the default model converted with ``preset``, cached."""
    cache: dict[str, Path] = {}

    def convert(preset: str) -> Path:
        if preset not in cache:
            out = tmp_path_factory.mktemp(f"default-{preset}") / "model"
            lowbit.convert(default_model_path(), out, preset=preset, progress=False)
            cache[preset] = out
        return cache[preset]

    return convert


def test_greedy_tokens_equal_transformers_at_f32(default_converted):
    import torch
    import transformers

    model = lowbit.load(default_converted("f32"))
    prompt = model.encode_prompt(PROMPT, chat=True)
    ours = model.generate(prompt, max_new_tokens=32, stop_at_eos=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        default_model_path(), dtype=torch.float32
    ).eval()
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False
        )[0, len(prompt) :].tolist()
    assert ours.tokens == ref


def test_q8_reply_is_readable_text(default_converted):
    model = lowbit.load(default_converted("q8"))
    result = model.generate(PROMPT, max_new_tokens=32, chat=True)
    text = result.text or ""
    words = text.split()
    assert len(words) >= 8, text
    # Readable: mostly alphabetic English words, not byte soup or one repeated token.
    alphabetic = [w for w in words if w.strip(".,;:!?'\"-").isalpha()]
    assert len(alphabetic) / len(words) > 0.8, text
    assert len(set(words)) > len(words) / 3, text
    assert "autumn" in text.lower() or "leaves" in text.lower() or "fall" in text.lower(), text
