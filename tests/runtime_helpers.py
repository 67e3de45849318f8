"""Converted tiny models and their transformers counterparts, for the runtime tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Longer than the tiny models' sliding window (16), so windows are exercised.
PROMPT_LEN = 40


def prompt_ids(vocab: int = 96, n: int = PROMPT_LEN, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int64)


def hf_logits(checkpoint: Path, ids: np.ndarray) -> np.ndarray:
    """transformers' float32 logits [n, vocab] for ``ids``."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(torch.tensor(ids)[None]).logits[0].numpy()


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |Δ| over the logits' scale (max |ref|)."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
