"""A tiny Llama GGUF file with one tensor in each block type conversion must read.

Written with the ``gguf`` package's writer. Q8_0, Q4_0 and Q4_1 blocks come
from its quantizer; it has none for the K-quants, so Q4_K and Q6_K blocks are
random bytes with small float16 scales (any bytes are valid codes).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

HIDDEN, INTER, LAYERS, VOCAB, HEADS, KV_HEADS = 256, 512, 2, 256, 4, 2
HEAD_DIM = HIDDEN // HEADS

# llama.cpp name -> (HF name, shape, stored type); {i} is the layer.
LAYER_TENSORS = {
    "blk.{i}.attn_norm.weight": ("model.layers.{i}.input_layernorm.weight", (HIDDEN,), T.F32),
    "blk.{i}.ffn_norm.weight": (
        "model.layers.{i}.post_attention_layernorm.weight", (HIDDEN,), T.F32),
    "blk.{i}.attn_q.weight": ("model.layers.{i}.self_attn.q_proj.weight", (HIDDEN, HIDDEN), T.Q4_0),
    "blk.{i}.attn_k.weight": (
        "model.layers.{i}.self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN), T.Q4_1),
    "blk.{i}.attn_v.weight": (
        "model.layers.{i}.self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN), T.Q6_K),
    "blk.{i}.attn_output.weight": (
        "model.layers.{i}.self_attn.o_proj.weight", (HIDDEN, HIDDEN), T.F16),
    "blk.{i}.ffn_gate.weight": ("model.layers.{i}.mlp.gate_proj.weight", (INTER, HIDDEN), T.Q4_K),
    "blk.{i}.ffn_up.weight": ("model.layers.{i}.mlp.up_proj.weight", (INTER, HIDDEN), T.Q6_K),
    "blk.{i}.ffn_down.weight": ("model.layers.{i}.mlp.down_proj.weight", (HIDDEN, INTER), T.Q8_0),
}  # fmt: skip
MODEL_TENSORS = {
    "token_embd.weight": ("model.embed_tokens.weight", (VOCAB, HIDDEN), T.Q8_0),
    "output_norm.weight": ("model.norm.weight", (HIDDEN,), T.F32),
    "output.weight": ("lm_head.weight", (VOCAB, HIDDEN), T.Q4_K),
}


def tensor_table() -> dict[str, tuple[str, tuple[int, ...], T]]:
    table = dict(MODEL_TENSORS)
    for i in range(LAYERS):
        for k, (hf, shape, t) in LAYER_TENSORS.items():
            table[k.format(i=i)] = (hf.format(i=i), shape, t)
    return table


def _k_quant_blocks(rng: np.random.Generator, t: T, shape: tuple[int, ...]) -> np.ndarray:
    block, size = gguf.GGML_QUANT_SIZES[t]
    n = int(np.prod(shape)) // block
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    scale = np.full(n, 0.01, np.float16).view(np.uint8).reshape(n, 2)
    if t == T.Q4_K:  # d and dmin first
        raw[:, 0:2] = scale
        raw[:, 2:4] = scale
    else:  # Q6_K: d last
        raw[:, size - 2 :] = scale
    return raw.reshape(shape[0], shape[1] // block * size)


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Writes the file; returns each HF tensor as the gguf package dequantizes it."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    expected = {}
    for name, (hf, shape, t) in tensor_table().items():
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if t in (T.Q4_K, T.Q6_K):
            data = _k_quant_blocks(rng, t, shape)
        elif t == T.F32:
            data = x
        elif t == T.F16:
            data = x.astype(np.float16)
        else:
            data = gguf.quants.quantize(x, t)
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=t)
        expected[hf] = gguf.quants.dequantize(data, t).reshape(shape).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order (rotary halves interleaved per head)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
