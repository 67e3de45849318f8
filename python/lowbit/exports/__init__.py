"""Writing a lowbit model directory in the formats other tools run.

``export(DIR, OUT, to=...)``: ``gguf`` (one file for llama.cpp, Ollama and
transformers' GGUF loader, ``lowbit.exports.gguf``) or ``hf`` (a float32
HuggingFace checkpoint of the dequantized weights, for transformers,
lm-eval-harness and any engine, ``lowbit.conversion.dequantized``).
"""

from __future__ import annotations

from pathlib import Path

from lowbit.util.errors import ArgumentError

TARGETS = ("gguf", "hf")


def export(
    model_dir: str | Path,
    out: str | Path,
    to: str = "gguf",
    *,
    requantize: bool = False,
    force: bool = False,
) -> str:
    """Write ``model_dir`` to ``out`` in the format ``to``; returns a one-line
    summary of what was written. ``requantize`` (gguf): weights whose scheme
    GGUF cannot hold become Q8_0 instead of an error."""
    if to == "gguf":
        from lowbit.exports.gguf import export_gguf

        return export_gguf(model_dir, out, requantize=requantize, force=force).summary()
    if to == "hf":
        from lowbit.conversion.dequantized import write_dequantized

        path = write_dequantized(model_dir, out, force=force)
        return f"{path}: float32 HuggingFace checkpoint of the dequantized weights"
    raise ArgumentError(f"unknown export target {to!r}; choose from {', '.join(TARGETS)}")


__all__ = ["TARGETS", "export"]
