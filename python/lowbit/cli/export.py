"""``lowbit export DIR OUT --to gguf|hf``: a model directory in a format other tools run."""

from __future__ import annotations

import argparse

from lowbit.cli import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write a lowbit model directory as a GGUF file (llama.cpp, Ollama, transformers' "
        "GGUF loader) or a float32 HuggingFace checkpoint. "
        "Example: lowbit export ./smollm2-q4 smollm2-q4.gguf --to gguf"
    )
    p.add_argument("out", help="model directory (from lowbit convert)")
    p.add_argument("dest", help="the file (gguf) or directory (hf) to write")
    p.add_argument("--to", default="gguf", choices=["gguf", "hf"], help="default: gguf")
    p.add_argument(
        "--requantize",
        action="store_true",
        help="gguf: re-quantize weights whose scheme GGUF cannot hold to Q8_0 "
        "(the added error is reported) instead of refusing",
    )
    p.add_argument("--force", action="store_true", help="replace an existing DEST")


def run(args: argparse.Namespace) -> int:
    from lowbit.exports import export

    common.model_dir(args.out)
    print(export(args.out, args.dest, args.to, requantize=args.requantize, force=args.force))
    return common.EXIT_OK
