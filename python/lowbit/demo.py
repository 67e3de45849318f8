"""``lowbit demo``: quantize a real-sized weight matrix with every scheme and method.

Until model conversion lands, the demo's data is a synthetic 4096 x 4096
heavy-tailed matrix (the size of a 7B model's attention projection).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lowbit import _core
from lowbit.metrics import weight_error
from lowbit.quantize import quantize
from lowbit.schemes import SCHEMES
from lowbit.synthetic import heavy_tailed_matrix


def run(rows: int = 4096, cols: int = 4096, seed: int = 0, quiet: bool = False) -> dict[str, Any]:
    """Quantize and measure every (scheme, method); print the table unless ``quiet``."""
    x = heavy_tailed_matrix(rows, cols, seed=seed)
    results = []
    for s in SCHEMES.values():
        for method in s.methods:
            t0 = time.perf_counter()
            qt = quantize(x, s.name, method=method, name="demo")
            t1 = time.perf_counter()
            x_hat = qt.dequantize()
            t2 = time.perf_counter()
            err = weight_error(x, x_hat)
            results.append(
                {
                    "scheme": s.name,
                    "method": method,
                    "group_size": qt.group_size,
                    "bits_per_weight": qt.bits_per_weight,
                    **err.as_dict(),
                    "quantize_ms": 1e3 * (t1 - t0),
                    "dequantize_ms": 1e3 * (t2 - t1),
                }
            )
    report = {
        "matrix": {"rows": rows, "cols": cols, "seed": seed, "kind": "student-t + outlier columns"},
        "simd_target": _core.dispatched_target(),
        "threads": _core.num_threads(),
        "results": results,
    }
    if not quiet:
        print(format_table(report))
    return report


def format_table(report: dict[str, Any]) -> str:
    m = report["matrix"]
    lines = [
        f"lowbit demo: {m['rows']} x {m['cols']} {m['kind']} matrix, "
        f"SIMD target {report['simd_target']}, {report['threads']} threads",
        "",
        f"{'scheme':<8} {'method':<6} {'group':>5} {'bits/w':>7} {'rel.err':>8} "
        f"{'SNR dB':>7} {'max|err|':>9} {'quant ms':>9} {'deq ms':>7}",
    ]
    for r in report["results"]:
        is_float = SCHEMES[r["scheme"]].is_float
        group = "-" if is_float else "row" if r["group_size"] is None else str(r["group_size"])
        method = "-" if is_float else r["method"]
        snr = r["snr_db"]
        lines.append(
            f"{r['scheme']:<8} {method:<6} {group:>5} {r['bits_per_weight']:>7.3f} "
            f"{100 * r['rel_error']:>7.3f}% {snr if np.isfinite(snr) else 999:>7.1f} "
            f"{r['max_abs']:>9.2e} {r['quantize_ms']:>9.1f} {r['dequantize_ms']:>7.1f}"
        )
    return "\n".join(lines)
