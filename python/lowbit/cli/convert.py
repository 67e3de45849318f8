"""``lowbit convert SRC OUT``: a HuggingFace checkpoint (or GGUF file) into a model directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.cli import common
from lowbit.conversion.convert import FORMATS, ConvertSummary
from lowbit.conversion.fold import FOLD_METHODS
from lowbit.quant.recipes import PRESETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="checkpoint directory (config.json + safetensors), or a GGUF file")
    p.add_argument("out", help="output model directory")
    p.add_argument("--preset", default="q4", choices=list(PRESETS), help="default: q4")
    p.add_argument(
        "--scheme",
        dest="rules",
        action="append",
        default=[],
        metavar="REGEX=SCHEME[:GROUP][:METHOD]",
        help="scheme for tensors whose name matches REGEX, before the preset (repeatable)",
    )
    p.add_argument(
        "--format",
        dest="fmt",
        default=FORMATS[0],
        choices=list(FORMATS),
        help="lowbit: safetensors + manifest (default); npz: the reference documents' NPZ layout",
    )
    cal = p.add_argument_group(
        "calibration (for the calibrated methods gptq, wmse and whqq, and AWQ, as in the q4 preset)"
    )
    cal.add_argument(
        "--calibration",
        type=Path,
        action="append",
        metavar="FILE",
        help="calibration text (repeatable; default: Python's pydoc topics, disjoint from "
        "the evaluation text)",
    )
    cal.add_argument(
        "--calibration-tokens",
        type=common.positive_int,
        default=4096,
        metavar="N",
        help="tokens of calibration text to run (default: 4096)",
    )
    cal.add_argument(
        "--imatrix",
        type=Path,
        metavar="FILE",
        help="reuse the statistics an earlier conversion saved (OUT.imatrix.safetensors)",
    )
    cal.add_argument(
        "--target-bpw",
        type=float,
        metavar="B",
        help="choose each matrix's scheme by measured sensitivity (calibrated) so that the "
        "matrices, embedding included, average at most B bits per weight",
    )
    cal.add_argument(
        "--max-kld",
        type=float,
        metavar="K",
        help="the smallest such recipe whose mean KL divergence against the float model, "
        "measured as `lowbit validate` does, is at most K (needs torch and transformers)",
    )
    cal.add_argument(
        "--fold",
        choices=list(FOLD_METHODS),
        help="input-channel scales folded into the model before quantizing: awq (searched "
        "on calibration activations), sinq (from the weights) or none (default: the "
        "preset's; none with --target-bpw or --max-kld)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    common.add_output_flags(p)


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
    from lowbit.eval.calibration import convert_calibrated

    summary = common.call(convert_calibrated, args, progress=False if common.quiet(args) else None)
    common.emit(args, summary.as_dict(), lambda: _summary(summary))
    return common.EXIT_OK
