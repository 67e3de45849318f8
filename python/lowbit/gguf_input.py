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
from collections import Counter
from pathlib import Path
from typing import Any

from lowbit.checkpoint import refuse_custom_code
from lowbit.errors import LowbitError

IMPORT_RECORD = "lowbit-import.json"


class GGUFError(LowbitError):
    """A GGUF file that cannot be imported; the message names it."""


def is_gguf(path: Path) -> bool:
    """A file that starts with GGUF's magic bytes."""
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def import_gguf(
    gguf: Path, out: Path, name: str | None = None, architecture: str | None = None
) -> dict[str, Any]:
    """Import a GGUF model into a float32 HuggingFace checkpoint directory ``out``.

    transformers dequantizes the GGUF tensors (with the ``gguf`` package) and
    rebuilds config and tokenizer; lowbit saves the float32 weights itself,
    because transformers refuses to save a model it loaded from GGUF. Written
    to ``out.partial`` and renamed when complete. Returns the import record,
    which says what precision each tensor had in the GGUF file.
    """
    import numpy as np
    from safetensors.numpy import save_file

    try:
        from gguf import GGUFReader
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise GGUFError(
            f"{gguf}: reading GGUF needs torch, transformers, accelerate and gguf "
            f"(pip install 'lowbit[validate]'): {e}"
        ) from None
    # transformers reads tokenizer_config.json (and config.json) beside the file.
    refuse_custom_code(gguf.parent)
    try:
        reader = GGUFReader(gguf)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype="float32", trust_remote_code=False
        )
    except (ValueError, KeyError, OSError, NotImplementedError, RuntimeError) as e:
        # Damaged files, unsupported architectures or tensor types.
        raise GGUFError(f"{gguf}: cannot import this GGUF file: {e}") from None
    # Imported here, not at the top: outdir imports this module's IMPORT_RECORD.
    from lowbit.outdir import writing

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
        if "tokenizer.ggml.model" in reader.fields:  # models may come without a tokenizer
            tokenizer = AutoTokenizer.from_pretrained(
                gguf.parent, gguf_file=gguf.name, trust_remote_code=False
            )
            tokenizer.save_pretrained(partial)
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
