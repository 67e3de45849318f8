"""Quantize / dequantize throughput of every scheme, next to a memory copy and NumPy.

Throughput counts bytes read plus bytes written (a float32 4096 x 4096 matrix is
64 MiB in, codes + scales out). Each figure is the median of repeated runs; the
memory copy and the NumPy reference are measured in the same run, so the
ratios hold on a shared, noisy machine. Writes benchmarks/results/kernels.json.

    python benchmarks/bench_kernels.py [--rows 4096] [--cols 4096] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# NumPy's OpenBLAS threads busy-wait between calls and would steal the two
# cores from the kernels under test; none of this benchmark uses BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lowbit
from common import median_seconds, memcpy_gbps, write_json
from lowbit import _core
from lowbit.quant import reference
from lowbit.quant.schemes import SCHEMES
from lowbit.quant.synthetic import heavy_tailed_matrix

# (scheme, method): every integer scheme with rtn, plus the search methods.
CASES = [(s.name, "rtn") for s in SCHEMES.values() if not s.is_float] + [
    ("int4", "mse"),
    ("uint4", "hqq"),
]
# The NumPy reference is slow: time it on this many rows and scale by bytes.
REFERENCE_ROWS = 512


def measure(x: np.ndarray, scheme: str, method: str, threads: int, repeats: int) -> dict:
    """Median quantize and dequantize throughput of one case at one thread count."""
    qt = lowbit.quantize(x, scheme, method=method)
    moved = x.nbytes + qt.nbytes  # bytes read + written, either direction
    t_q = median_seconds(lambda: lowbit.quantize(x, scheme, method=method), repeats)
    # Into a reused buffer, as the memory copy: first-touch page faults of a
    # fresh 64 MiB array would otherwise dominate.
    out = np.empty(x.shape, np.float32)
    t_d = median_seconds(lambda: qt.dequantize(out=out), repeats)
    return {
        "scheme": scheme,
        "method": method,
        "group_size": qt.group_size,
        "threads": threads,
        "quantize_gbps": moved / t_q / 1e9,
        "dequantize_gbps": moved / t_d / 1e9,
    }


def measure_numpy(x: np.ndarray, scheme: str, method: str, group_size: int | None) -> dict:
    """The NumPy reference's throughput on the first REFERENCE_ROWS rows."""
    s = SCHEMES[scheme]
    part = x[:REFERENCE_ROWS]
    t_q = median_seconds(lambda: reference.quantize(s, part, group_size, method), 3, 0)
    codes, scales, zeros = reference.quantize(s, part, group_size, method)
    t_d = median_seconds(
        lambda: reference.dequantize(s, codes, scales, zeros, x.shape[1], group_size), 3, 0
    )
    stored = codes.nbytes + scales.nbytes + (0 if zeros is None else zeros.nbytes)
    moved = part.nbytes + stored
    return {"numpy_quantize_gbps": moved / t_q / 1e9, "numpy_dequantize_gbps": moved / t_d / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    x = heavy_tailed_matrix(args.rows, args.cols, seed=0)
    rows = []
    copy_rate = {}
    before = lowbit.num_threads()
    for threads in (1, 2):
        lowbit.set_num_threads(threads)
        copy_rate[threads] = memcpy_gbps(x.nbytes, threads, args.repeats)
        for scheme, method in CASES:
            row = measure(x, scheme, method, threads, args.repeats)
            row["memcpy_gbps"] = copy_rate[threads]
            if threads == 1:
                row.update(measure_numpy(x, scheme, method, row["group_size"]))
            rows.append(row)
    lowbit.set_num_threads(before)

    numpy_rates = {(r["scheme"], r["method"]): r for r in rows if r["threads"] == 1}
    print(
        f"lowbit kernels on a {args.rows} x {args.cols} float32 matrix, "
        f"SIMD target {_core.dispatched_target()}; GB/s = (bytes read + written) / s, "
        f"median of {args.repeats}"
    )
    print(
        f"{'scheme':<8} {'method':<6} {'thr':>3} {'quant GB/s':>10} {'%copy':>6} {'x numpy':>8} "
        f"{'deq GB/s':>9} {'%copy':>6} {'x numpy':>8}"
    )
    for r in rows:
        ref = numpy_rates[(r["scheme"], r["method"])]
        r["quantize_vs_memcpy"] = r["quantize_gbps"] / r["memcpy_gbps"]
        r["dequantize_vs_memcpy"] = r["dequantize_gbps"] / r["memcpy_gbps"]
        r["quantize_vs_numpy"] = r["quantize_gbps"] / ref["numpy_quantize_gbps"]
        r["dequantize_vs_numpy"] = r["dequantize_gbps"] / ref["numpy_dequantize_gbps"]
        print(
            f"{r['scheme']:<8} {r['method']:<6} {r['threads']:>3} {r['quantize_gbps']:>10.2f} "
            f"{100 * r['quantize_vs_memcpy']:>5.0f}% {r['quantize_vs_numpy']:>8.1f} "
            f"{r['dequantize_gbps']:>9.2f} {100 * r['dequantize_vs_memcpy']:>5.0f}% "
            f"{r['dequantize_vs_numpy']:>8.1f}"
        )
    print(f"memory copy: {copy_rate[1]:.2f} GB/s (1 thread), {copy_rate[2]:.2f} GB/s (2 threads)")
    path = write_json(
        "kernels.json",
        {
            "matrix": [args.rows, args.cols],
            "simd_target": _core.dispatched_target(),
            "repeats": args.repeats,
            "memcpy_gbps": copy_rate,
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
