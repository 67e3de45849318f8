"""What each preset and method costs on a real model, next to llama.cpp's
Q8_0 and Q4_0: the cases of benchmarks/bench_quality.py and the
model_accuracy notebook, measured with ``lowbit validate``'s code."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.conversion.convert import convert
from lowbit.eval.calibration import IMATRIX_SUFFIX, convert_calibrated
from lowbit.eval.gguf_peer import gguf_roundtrip
from lowbit.eval.validate import validate
from lowbit.formats.manifest import WeightInfo
from lowbit.formats.manifest import read as read_manifest

# The linear layers (not embeddings, norms or routers): where rules apply.
LINEAR = r"(self_attn|mlp)\..*proj\.weight$"


@dataclass(frozen=True)
class Case:
    name: str
    preset: str = "f32"
    rules: tuple[str, ...] = ()
    method: str = "rtn"
    gguf: tuple[str, str] | None = None  # (linear type, embedding type)
    target_bpw: float | None = None  # lowbit convert --target-bpw
    max_kld: float | None = None  # lowbit convert --max-kld
    fold: str | None = None  # lowbit convert --fold (None: the preset's)


def _with(scheme: str, method: str) -> tuple[str, ...]:
    return (f"{LINEAR}={scheme}:{method}",)


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("q8 (int8 g32)", "q8"),
        Case("q8 mse", "q8", (r".*\.weight=int8:32:mse",), "mse"),
        Case("int8 per row", "q8", (r".*\.weight=int8:row",)),
        Case("GGUF Q8_0", gguf=("Q8_0", "Q8_0")),
        Case("q4 (uint4 g64 gptq)", "q4", method="gptq"),
        Case("uint4 g64 whqq", "q4", _with("uint4:64", "whqq"), "whqq"),
        Case("uint4 g64 gptq + awq", "q4", method="gptq + awq", fold="awq"),
        Case("uint4 g64 hqq + sinq", "q4-nocal", method="hqq + sinq", fold="sinq"),
        Case("q4-nocal (uint4 g64 hqq)", "q4-nocal", method="hqq"),
        Case("q4-int4 (int4 g32)", "q4-int4"),
        Case("q5 (budget 5.5 bpw)", "q5", method="whqq"),
        Case("int4 g32 mse", "q4", _with("int4:32", "mse"), "mse"),
        Case("int4 g32 wmse", "q4", _with("int4:32", "wmse"), "wmse"),
        Case("uint4 g64 rtn", "q4", _with("uint4:64", "rtn")),
        Case("uint4 g64 mse", "q4", _with("uint4:64", "mse"), "mse"),
        Case("uint4 g64 wmse", "q4", _with("uint4:64", "wmse"), "wmse"),
        Case("int4 g32 gptq", "q4", _with("int4:32", "gptq"), "gptq"),
        Case("uint3 g64 gptq", "q4", _with("uint3:64", "gptq"), "gptq"),
        Case("uint3 g64 whqq", "q4", _with("uint3:64", "whqq"), "whqq"),
        Case("uint5 g64 gptq", "q6", _with("uint5:64", "gptq"), "gptq"),
        Case("q6 (uint6 g64 gptq)", "q6", method="gptq"),
        Case("uint2 g32 gptq", "q2", _with("uint2:32", "gptq"), "gptq"),
        Case("GGUF Q4_0", gguf=("Q4_0", "Q8_0")),
        Case("uint2 g32 rtn", "q2", _with("uint2:32", "rtn")),
        Case("uint2 g32 mse", "q2", _with("uint2:32", "mse"), "mse"),
        Case("q2 (uint2 g32 hqq)", "q2", method="hqq"),
        Case("uint2 g32 whqq", "q2", _with("uint2:32", "whqq"), "whqq"),
    )
}


def linear_bits_per_weight(weights: Iterable[WeightInfo]) -> tuple[float, float]:
    """(bits per weight over all matrices, over the linear layers only)."""
    tot = n = lin = n_lin = 0.0
    for w in weights:
        if len(w.shape) < 2:
            continue
        size = w.size
        tot += size * w.bits_per_weight
        n += size
        if w.role not in ("embed", "lm_head", "router", "shared_router"):
            lin += size * w.bits_per_weight
            n_lin += size
    return tot / n, lin / n_lin


def run_case(
    case: Case,
    src: Path,
    workdir: Path,
    baseline: Path | None = None,
    **validate_options: Any,
) -> dict[str, Any]:
    """Convert (or round-trip through GGUF), validate, and summarise one case.
    ``baseline``: the float model to validate against, when ``src`` is a
    transformed copy of it (default: ``src``)."""
    slug = _slug(case.name)
    out = workdir / slug
    if case.gguf:
        peer = workdir / f"{slug}-hf"
        stats = gguf_roundtrip(src, peer, *case.gguf)
        bits = (stats["bits_per_weight"], stats["linear_bits_per_weight"])
        return run_float_peer(case.name, case.method, peer, bits, src, workdir, **validate_options)
    # One calibration per source and work directory, reused by every case.
    saved = workdir / f"calibration{IMATRIX_SUFFIX}"
    convert_calibrated(
        src,
        out,
        preset=case.preset,
        rules=list(case.rules),
        imatrix=saved if saved.is_file() else None,
        target_bpw=case.target_bpw,
        max_kld=case.max_kld,
        fold=case.fold,
        force=True,
        progress=False,
        quiet=True,
    )
    made = out.with_name(out.name + IMATRIX_SUFFIX)
    if made.is_file():
        made.replace(saved)
    bits = linear_bits_per_weight(read_manifest(out).weights)
    row = _row(case.name, case.method, bits, validate(out, baseline or src, **validate_options))
    shutil.rmtree(out)
    return row


def run_float_peer(
    name: str,
    method: str,
    peer: Path,
    bits: tuple[float, float],
    src: Path,
    workdir: Path,
    also_default_tokens: bool = False,
    **validate_options: Any,
) -> dict[str, Any]:
    """Validate a peer's quantized model, given dequantized as the float
    checkpoint ``peer`` (removed afterwards) with its stored ``bits`` (over all
    matrices, over the linear layers), through the same code as lowbit's own.
    ``also_default_tokens``: add its mean KLD on validate's default tokens, the
    ones ``--max-kld`` is measured on."""
    out = workdir / f"{_slug(name)}-f32"
    convert(peer, out, preset="f32", force=True, progress=False)
    shutil.rmtree(peer)
    row = _row(name, method, bits, validate(out, src, **validate_options))
    if also_default_tokens:
        row["kld_mean_default_tokens"] = (validate(out, src).model or {}).get("kld_mean")
    shutil.rmtree(out)
    return row


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name)


def _row(name: str, method: str, bits: tuple[float, float], report: Any) -> dict[str, Any]:
    m = report.model or {}
    return {
        "case": name,
        "method": method,
        "bits_per_weight": bits[0],
        "linear_bits_per_weight": bits[1],
        **{
            k: m.get(k)
            for k in (
                "delta_ppl_pct",
                "delta_ppl_pct_se",
                "kld_mean",
                "kld_mean_se",
                "kld_p99",
                "same_top",
                "ppl",
                "ppl_baseline",
            )
        },
    }
