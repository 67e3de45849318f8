"""A lowbit model directory as one GGUF file, for llama.cpp, Ollama and
transformers' GGUF loader.

Written with the ``gguf`` package (llama.cpp's own Python writer): its tensor
names (``get_tensor_name_map``), its metadata keys, ``SpecialVocab`` for the
merges, special tokens and chat template. Tensors are streamed one at a time
into ``OUT.partial`` (renamed when complete). What the file holds:

- every weight in the GGUF type that has its grid (``gguf_blocks``): exact for
  int8 g32 (Q8_0) and int4 g32 (Q4_0), exact but for float16 rounding of the
  minimum for uint4 and uint5 groups of 32k (Q4_1, Q5_1), float weights as
  F32/F16/BF16; any other scheme is refused, naming the tensors, unless
  ``requantize`` is given (then it is re-quantized from its dequantized
  values to Q8_0, and the relative error that adds is reported);
- the transforms llama.cpp's own converter applies: llama's q and k rows
  interleaved per head (``Family.gguf_permutes_qk``), Gemma's norms stored
  as 1 + w, no lm_head when the embedding is tied;
- the architecture's hyperparameters and the tokenizer (from tokenizer.json).

MoE families are refused for now (their experts are stacked differently in
GGUF); say so rather than write a file llama.cpp cannot load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.exports.gguf_blocks import BLOCK, q4_0, q4_1, q5_1, q8_0
from lowbit.formats.layout import stored_tensor
from lowbit.formats.manifest import WeightEntry
from lowbit.formats.manifest import read as read_manifest
from lowbit.formats.safetensors import Checkpoint
from lowbit.models.config import read_config
from lowbit.models.families import family_of
from lowbit.models.rope import rope_parameters
from lowbit.quant.quantize import QuantizedTensor, quantize
from lowbit.runtime.config import layer_types
from lowbit.util.errors import LowbitError
from lowbit.util.outdir import writing_file


class ExportError(LowbitError):
    """A model that cannot be exported as asked; the message says which tensors and why."""


@dataclass(frozen=True)
class _Type:
    name: str  # gguf.GGMLQuantizationType member
    encode: Callable[[QuantizedTensor], np.ndarray] | None  # None: float values
    exact: bool


def _gguf_type(w: WeightEntry) -> _Type | None:
    """The GGUF type that holds ``w`` as stored, or None."""
    floats = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
    if w.scheme in floats:
        return _Type(floats[w.scheme], None, True)
    cols = w.matrix_shape[1]
    g = w.group_size
    if g is None or g % BLOCK or cols % BLOCK:
        return None
    if w.scheme == "int8" and g == BLOCK:
        return _Type("Q8_0", q8_0, True)
    if w.scheme == "int4" and g == BLOCK:
        return _Type("Q4_0", q4_0, True)
    if w.scheme == "uint4":
        return _Type("Q4_1", q4_1, False)
    if w.scheme == "uint5":
        return _Type("Q5_1", q5_1, False)
    return None


# llama.cpp's name for a GPT-2-style (byte-level BPE) pre-tokenizer, which
# its converter finds by hashing a test string's tokens; lowbit keys it by
# the tokenizer.json pre-tokenizer and normalizer it was measured on.
# Unknown: llama.cpp uses its default split and warns.
_BPE_PRE = {
    # SmolLM2 (and SmolLM): byte-level, no regex of its own.
    "20fa895f5f0622b0": "smollm",
}


def _pre_key(tok: dict[str, Any]) -> str:
    text = json.dumps([tok.get("normalizer"), tok.get("pre_tokenizer")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ExportReport:
    """What was written: the file, each GGUF type's tensor count, and the
    tensors re-quantized with their added relative error."""

    path: Path
    types: dict[str, int]
    requantized: dict[str, float]

    def summary(self) -> str:
        kinds = ", ".join(f"{n} x {t}" for t, n in sorted(self.types.items()))
        out = f"{self.path}: {kinds}"
        if self.requantized:
            worst = max(self.requantized.values())
            out += (
                f"; {len(self.requantized)} tensors re-quantized to Q8_0 "
                f"(worst added relative error {worst:.4f})"
            )
        return out


def export_gguf(
    model_dir: str | Path, out: str | Path, *, requantize: bool = False, force: bool = False
) -> ExportReport:
    """Write ``model_dir`` (a lowbit directory) as the GGUF file ``out``."""
    import gguf

    src = Path(model_dir)
    manifest = read_manifest(src)
    config = read_config(src / "config.json")
    family = family_of(config)
    if family.gguf_arch is None or family.moe:
        raise ExportError(
            f"{src}: GGUF export of {family.name} models is not supported yet "
            "(dense llama, mistral, qwen2, qwen3 and gemma families are)"
        )
    _check_layer_types(src, config, family)
    weights = [w for w in manifest.weights if not _dropped(w, config)]
    types = {w.name: _gguf_type(w) for w in weights}
    missing = [w for w in weights if types[w.name] is None]
    if missing and not requantize:
        listed = ", ".join(f"{w.name} ({w.scheme} g{w.group_size})" for w in missing[:6])
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise ExportError(
            f"{src}: {len(missing)} weights have no GGUF type with their grid: {listed}{more}. "
            "GGUF holds int8 g32 (Q8_0), int4 g32 (Q4_0), uint4 and uint5 in groups of 32k "
            "(Q4_1, Q5_1) and floats: convert with --preset q8, q4, q4-nocal or q4-int4, "
            "or pass --requantize to re-quantize these to Q8_0 (the added error is reported)"
        )
    arch = gguf.MODEL_ARCH_NAMES
    arch_id = next(k for k, v in arch.items() if v == family.gguf_arch)
    names = gguf.get_tensor_name_map(arch_id, int(config["num_hidden_layers"]))
    ck = Checkpoint(src, files=[f.name for f in manifest.files])
    counts: dict[str, int] = {}
    requantized: dict[str, float] = {}
    plans = []
    for w in weights:
        gname = names.get_name(w.name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ExportError(f"{src}: {w.name}: no GGUF name for this tensor")
        t = types[w.name] or _Type("Q8_0", q8_0, False)
        if len(w.shape) == 1:
            t = _Type("F32", None, True)  # norms and biases: F32, as llama.cpp's converter
        plans.append((w, gname, t))
        counts[t.name] = counts.get(t.name, 0) + 1
    writer = gguf.GGUFWriter(None, family.gguf_arch)
    _metadata(writer, gguf, config, family, src, counts)
    _vocabulary(writer, gguf, src, int(config["vocab_size"]))
    with writing_file(out, force=force) as partial:
        for w, gname, t in plans:
            qtype = gguf.GGMLQuantizationType[t.name]
            shape = tuple(w.shape)
            if t.encode is None:
                dtype = np.dtype({"F32": np.float32, "F16": np.float16}.get(t.name, np.uint16))
                nbytes = int(np.prod(shape)) * dtype.itemsize
                raw = None if t.name in ("F32", "F16") else qtype
                writer.add_tensor_info(gname, shape, dtype, nbytes, raw_dtype=raw)
            else:
                byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
                writer.add_tensor_info(
                    gname, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), qtype
                )
        writer.write_header_to_file(partial)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for w, _, t in plans:
            data, err = _tensor_data(ck, w, t, family, config)
            if types[w.name] is None:
                requantized[w.name] = err
            writer.write_tensor_data(data)
        writer.close()
    return ExportReport(Path(out), counts, requantized)


def _check_layer_types(src: Path, config: dict[str, Any], family: Any) -> None:
    """llama.cpp's fixed sliding-window layers (no GGUF key says which) must be
    the model's: otherwise the file would run another attention."""
    period = family.gguf_sliding_period
    if period is None:
        return
    ours = layer_types(config)
    fixed = [
        "full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(len(ours))
    ]
    if ours != fixed:
        raise ExportError(
            f"{src / 'config.json'}: layer_types {ours} are not llama.cpp's fixed "
            f"{family.name} pattern (every {period}th layer full attention, the others "
            "sliding): a GGUF file cannot say which layers slide"
        )


def _dropped(w: WeightEntry, config: dict[str, Any]) -> bool:
    """llama.cpp reuses token_embd for a tied lm_head: not written twice."""
    return w.name == "lm_head.weight" and bool(config.get("tie_word_embeddings", False))


def _tensor_data(
    ck: Checkpoint, w: WeightEntry, t: _Type, family: Any, config: dict[str, Any]
) -> tuple[np.ndarray, float]:
    """The bytes (or float values) of one tensor in the file, and the relative
    error a re-quantization added (0 when stored as is)."""
    err = 0.0
    if len(w.shape) == 1:
        data = ck.get(w.stored.values).astype(np.float32)
        if family.norm_plus_one and w.name.endswith("norm.weight"):
            data = data + np.float32(1.0)  # llama.cpp's Gemma graphs multiply by w
        return _permuted(w.name, data, config, family), err
    qt = stored_tensor(ck, w)
    if t.encode is None:
        data = qt.codes.reshape(w.shape)
        if t.name == "BF16":
            data = data.view(np.uint16)
    elif _gguf_type(w) is None:
        x = qt.dequantize()
        qt = quantize(x, "int8", group_size=BLOCK, name=w.name)
        err = qt.relative_error(x, w.name)
        data = t.encode(qt)
    else:
        data = t.encode(qt)
    return _permuted(w.name, np.ascontiguousarray(data), config, family), err


def _permuted(name: str, data: np.ndarray, config: dict[str, Any], family: Any) -> np.ndarray:
    """llama's q and k rows (weights and biases) interleaved per head: llama.cpp
    rotates dimension pairs (2i, 2i + 1) where transformers rotates (i, i + d/2).
    Rows move whole, so quantized blocks move with them, exactly."""
    if not family.gguf_permutes_qk:
        return data
    if ".self_attn.q_proj." in name:
        heads = int(config["num_attention_heads"])
    elif ".self_attn.k_proj." in name:
        heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    else:
        return data
    rows = data.shape[0]
    order = np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)
    return data[order]


def _metadata(
    writer: Any, gguf: Any, config: dict[str, Any], family: Any, src: Path, counts: dict[str, int]
) -> None:
    """The hyperparameters llama.cpp builds the model from, as its converter writes them."""
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    writer.add_name(str(config.get("_name_or_path") or src.name))
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    full = rope_parameters(config, "full_attention")
    writer.add_rope_freq_base(float(full.get("rope_theta") or 10000.0))
    if family.gguf_arch == "llama":
        writer.add_vocab_size(int(config["vocab_size"]))
        writer.add_rope_dimension_count(head_dim)
    if family.post_norms:  # Gemma 2 and 3
        if config.get("sliding_window"):
            writer.add_sliding_window(int(config["sliding_window"]))
        if config.get("attn_logit_softcapping"):
            writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
        if config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    matrices = {k: v for k, v in counts.items() if k != "F32"} or counts
    main = max(matrices, key=matrices.__getitem__)
    file_types = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_1": 9, "BF16": 32}
    writer.add_file_type(file_types[main])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _vocabulary(writer: Any, gguf: Any, src: Path, vocab_size: int) -> None:
    """tokenizer.ggml.*: the tokens in id order with their types, and (through
    gguf's SpecialVocab) merges, special token ids and the chat template. A
    byte-level BPE becomes llama.cpp's ``gpt2`` model; a BPE with byte
    fallback (Gemma's tokenizer.json) its ``llama`` (SentencePiece) model,
    scored by id as its merge order."""
    path = src / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{src}: no tokenizer.json; GGUF files carry their vocabulary")
    tok = json.loads(path.read_text())
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"{path}: a {model.get('type')} tokenizer; GGUF export reads BPE")
    T = gguf.TokenType
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [T.UNUSED] * vocab_size
    for text, i in model["vocab"].items():
        if 0 <= i < vocab_size:
            tokens[i], types[i] = text, T.NORMAL
    byte_fallback = bool(model.get("byte_fallback"))
    for added in tok.get("added_tokens", []):
        i = added["id"]
        if 0 <= i < vocab_size:
            tokens[i] = added["content"]
            types[i] = T.CONTROL if added.get("special") else T.USER_DEFINED
    if byte_fallback:
        for i, text in enumerate(tokens):
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                types[i] = T.BYTE
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores([-float(i) for i in range(vocab_size)])
        writer.add_add_space_prefix(False)
    else:
        writer.add_tokenizer_model("gpt2")
        pre = _BPE_PRE.get(_pre_key(tok))
        if pre is not None:
            writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    special = gguf.SpecialVocab(src, load_merges=not byte_fallback, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)


__all__ = ["ExportError", "ExportReport", "export_gguf"]
