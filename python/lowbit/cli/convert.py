"""``lowbit convert SRC OUT``: a HuggingFace checkpoint (or GGUF file) into a model directory."""

from __future__ import annotations

import argparse

from lowbit.cli.common import EXIT_OK, add_output_flags, emit, quiet
from lowbit.conversion.convert import FORMATS, ConvertSummary, convert
from lowbit.quant.recipes import PRESETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="checkpoint directory (config.json + safetensors), or a GGUF file")
    p.add_argument("out", help="output model directory")
    p.add_argument("--preset", default="q4", choices=list(PRESETS), help="default: q4")
    p.add_argument(
        "--scheme",
        action="append",
        default=[],
        metavar="REGEX=SCHEME[:GROUP][:METHOD]",
        help="scheme for tensors whose name matches REGEX, before the preset (repeatable)",
    )
    p.add_argument(
        "--format",
        default=FORMATS[0],
        choices=list(FORMATS),
        help="lowbit: safetensors + manifest (default); npz: the reference documents' NPZ layout",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_output_flags(p)


def _summary(s: ConvertSummary) -> str:
    ratio = s.source_bytes / max(1, s.output_bytes)
    lines = [
        f"{s.out}: {s.tensors} tensors, {s.output_bytes / 2**20:.1f} MiB "
        f"({ratio:.2f}x smaller than the source), quantized weights at "
        f"{s.quantized_bits_per_weight:.3f} bits/weight, {s.seconds:.1f} s"
    ]
    if s.fallbacks:
        # Their reasons went to stderr as convert planned them.
        lines.append(
            f"  {len(s.fallbacks)} tensors use a fallback scheme (manifest.json records each)"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    summary = convert(
        args.src,
        args.out,
        preset=args.preset,
        rules=args.scheme,
        force=args.force,
        progress=False if quiet(args) else None,
        fmt=args.format,
    )
    emit(args, summary.as_dict(), lambda: _summary(summary))
    return EXIT_OK
