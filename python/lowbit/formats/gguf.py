"""GGUF files as conversion input: imported into a float32 HuggingFace checkpoint.

llama.cpp's GGUF files store most matrices block-quantized (Q8_0, Q4_0, Q4_1,
the K-quants Q4_K and Q6_K, ...) and some in F16/F32, under llama.cpp's tensor
names, with llama's q/k projections permuted for its rotary layout. transformers'
GGUF loader undoes all of that (names, permutations, config, tokenizer) and the
``gguf`` package dequantizes every block type, so lowbit uses them rather than a
reader of its own. The import holds the model in float32 once (transformers
loads it whole): fine for the small GGUF-only models it is for.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from lowbit.formats.safetensors import refuse_custom_code
from lowbit.util.errors import LowbitError, check_float, check_int, where
from lowbit.util.outdir import IMPORT_RECORD, writing


class GGUFError(LowbitError):
    """A GGUF file that cannot be imported; the message names it."""


def is_gguf(path: Path) -> bool:
    """A file that starts with GGUF's magic bytes."""
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


# GGUF metadata keys (after "{arch}.") that transformers builds the model from:
# key -> (lo, hi) for integers.
_INT_KEYS = {
    "block_count": (1, 4096),
    "embedding_length": (1, 1 << 20),
    "feed_forward_length": (1, 1 << 20),
    "context_length": (1, 1 << 31),
    "attention.head_count": (1, 1 << 14),
    "attention.head_count_kv": (1, 1 << 14),
    "attention.key_length": (1, 1 << 20),
    "attention.value_length": (1, 1 << 20),
    "vocab_size": (1, 1 << 24),
    "expert_count": (0, 4096),
    "expert_used_count": (0, 4096),
}
_FLOAT_KEYS = ("rope.freq_base", "attention.layer_norm_rms_epsilon", "rope.scaling.factor")
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def read_gguf(gguf: Path) -> Any:
    """The file's GGUFReader, after checking the metadata transformers builds a
    model from against the tensors the file really holds.

    A GGUF file is untrusted input: ``block_count = 8126466`` would make
    transformers build eight million layers before any tensor is read, so
    every count and size is checked here first. Errors are GGUFErrors naming
    the file and the key.
    """
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise GGUFError(
            f"{gguf}: reading GGUF needs the gguf package (pip install 'lowbit[validate]'): {e}"
        ) from None
    try:
        reader = GGUFReader(gguf)
        fields = {name: field.contents() for name, field in reader.fields.items()}
        tensors = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        # The gguf package parses with numpy and struct and raises whatever
        # they raise (IndexError, ValueError, struct.error, UnicodeDecodeError,
        # ...) on a damaged file; all of them mean the same to the user.
        raise GGUFError(f"{gguf}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    _check_metadata(gguf, fields, tensors)
    return reader


def _check_metadata(
    gguf: Path, fields: dict[str, Any], tensors: dict[str, tuple[int, ...]]
) -> None:
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFError(f"{where(gguf, 'general.architecture')}: missing or not a string")
    values: dict[str, Any] = {}
    for key, (lo, hi) in _INT_KEYS.items():
        name = f"{arch}.{key}"
        if name in fields:
            values[key] = _gguf_value(check_int, gguf, name, fields[name], lo=lo, hi=hi)
    for key in _FLOAT_KEYS:
        name = f"{arch}.{key}"
        if name in fields:
            _gguf_value(check_float, gguf, name, fields[name], lo=0.0, hi=1e30, lo_open=True)
    blocks = {int(m.group(1)) for n in tensors if (m := _BLOCK.match(n))}
    declared = values.get("block_count")
    if declared is None:
        raise GGUFError(f"{where(gguf, arch + '.block_count')}: missing")
    if blocks != set(range(declared)):
        raise GGUFError(
            f"{where(gguf, arch + '.block_count')}: says {declared} but the file holds "
            f"tensors of {len(blocks)} blocks (blk.N with N in {_span(blocks)})"
        )
    heads = values.get("attention.head_count")
    kv = values.get("attention.head_count_kv")
    if heads and kv and heads % kv:
        raise GGUFError(
            f"{where(gguf, arch + '.attention.head_count_kv')}: {kv} does not divide "
            f"head_count ({heads})"
        )
    embd = tensors.get("token_embd.weight")
    if embd is not None and len(embd) == 2:
        _expect(gguf, f"{arch}.embedding_length", values.get("embedding_length"), embd[0])
        _expect(gguf, f"{arch}.vocab_size", values.get("vocab_size"), embd[1])
        tokens = fields.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list):
            _expect(gguf, "tokenizer.ggml.tokens", len(tokens), embd[1])


def _gguf_value(check: Any, gguf: Path, name: str, value: Any, **bounds: Any) -> Any:
    try:
        return check(value, path=gguf, field=name, **bounds)
    except LowbitError as e:
        raise GGUFError(str(e)) from None


def _expect(gguf: Path, name: str, declared: int | None, held: int) -> None:
    if declared is not None and declared != held:
        raise GGUFError(f"{where(gguf, name)}: says {declared} but token_embd.weight holds {held}")


def _span(blocks: set[int]) -> str:
    return f"{min(blocks)}..{max(blocks)}" if blocks else "none"


def import_gguf(
    gguf: Path,
    out: Path,
    name: str | None = None,
    architecture: str | None = None,
    tokenizer: bool = True,
) -> dict[str, Any]:
    """Import a GGUF model into a float32 HuggingFace checkpoint directory ``out``.

    transformers dequantizes the GGUF tensors (with the ``gguf`` package) and
    rebuilds config and tokenizer; lowbit saves the float32 weights itself,
    because transformers refuses to save a model it loaded from GGUF. Written
    to ``out.partial`` and renamed when complete. Returns the import record,
    which says what precision each tensor had in the GGUF file.
    ``tokenizer=False``: weights and config only (a peer's GGUF of a model
    whose tokenizer is already at hand).
    """
    import numpy as np
    from safetensors.numpy import save_file

    reader = read_gguf(gguf)  # checked before transformers builds anything
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise GGUFError(
            f"{gguf}: reading GGUF needs torch, transformers, accelerate and gguf "
            f"(pip install 'lowbit[validate]'): {e}"
        ) from None
    # transformers reads tokenizer_config.json (and config.json) beside the file.
    refuse_custom_code(gguf.parent)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype="float32", trust_remote_code=False
        )
    except (ValueError, KeyError, OSError, NotImplementedError, RuntimeError) as e:
        # Damaged files, unsupported architectures or tensor types.
        raise GGUFError(f"{gguf}: cannot import this GGUF file: {e}") from None
    with writing(out, force=True) as partial:
        tied = bool(model.config.tie_word_embeddings)
        weights = {
            name: np.ascontiguousarray(t.detach().numpy())
            for name, t in model.state_dict().items()
            if not (tied and name == "lm_head.weight")
        }
        save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = [architecture or type(model).__name__]
        config["_name_or_path"] = name or gguf.stem
        (partial / "config.json").write_text(json.dumps(config, indent=2))
        if tokenizer and "tokenizer.ggml.model" in reader.fields:  # may come without one
            AutoTokenizer.from_pretrained(
                gguf.parent, gguf_file=gguf.name, trust_remote_code=False
            ).save_pretrained(partial)
        model.generation_config.save_pretrained(partial)
        record = {
            "source": str(gguf),
            "gguf_tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
            "gguf_tensors": {t.name: t.tensor_type.name for t in reader.tensors},
            "note": "weights were dequantized from these GGUF types to float32: a 4-bit "
            "source sits on a 4-bit grid, which flatters 4-bit formats that share it",
        }
        (partial / IMPORT_RECORD).write_text(json.dumps(record, indent=1))
    return record
