"""Linear layers on stored weights: lowbit's MatMul next to memory bandwidth and NumPy.

For each weight shape [rows, cols] and scheme: decoding (GEMV, n = 1 token) and
prefill (GEMM, n = 512 tokens) with 1 and 2 threads. GB/s counts the stored
weight bytes read once (codes + scales + zero points); "%read" divides it by
a plain read of a 256 MiB float32 array with the same thread count (the C++
core's SumFloats); "x numpy" is NumPy's float32 ``x @ W.T`` time (OpenBLAS,
same thread count) over lowbit's. All figures are medians, measured in one
run, so the ratios hold on a shared, noisy machine. Writes
benchmarks/results/matmul.json.

    python benchmarks/bench_matmul.py [--repeats 15] [--shapes 576x576,4096x4096]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path

# OpenBLAS reads its thread count once; the runtime setter below changes it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lowbit
from common import median_seconds, write_json
from lowbit import _core
from lowbit.quant.synthetic import heavy_tailed_matrix

# SmolLM2-135M's projections and vocabulary, and a 7B-class square matrix.
SHAPES = [(576, 576), (1536, 576), (576, 1536), (49152, 576), (4096, 4096)]
# (scheme, group size): int4's default groups of 32, uint4's default per row.
SCHEMES = [("f32", None), ("int8", None), ("int4", 32), ("uint4", None)]
TOKENS = (1, 512)
READ_BYTES = 256 << 20


def openblas_threads_setter() -> Callable[[int], None] | None:
    """OpenBLAS's set_num_threads from the library NumPy loaded, if found."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for name in (
            "scipy_openblas_set_num_threads64_",
            "openblas_set_num_threads64_",
            "openblas_set_num_threads",
        ):
            fn = getattr(lib, name, None)
            if fn is not None:
                return lambda n, fn=fn: fn(ctypes.c_int(n))
    return None


def read_gbps(threads: int, repeats: int) -> float:
    """Memory read bandwidth: SumFloats over READ_BYTES with `threads` threads."""
    data = np.ones(READ_BYTES // 4, np.float32)
    lowbit.set_num_threads(threads)
    return READ_BYTES / median_seconds(lambda: _core.sum_floats(data), repeats) / 1e9


def repeats_for(rows: int, cols: int, n: int, base: int) -> int:
    """Fewer repetitions for the long GEMMs (seconds in all)."""
    return base if n * rows * cols < (1 << 28) else max(3, base // 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument(
        "--shapes",
        default=",".join(f"{r}x{c}" for r, c in SHAPES),
        help="comma-separated ROWSxCOLS",
    )
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]

    read = {t: read_gbps(t, args.repeats) for t in (1, 2)}
    rng = np.random.default_rng(0)
    results = []
    numpy_s: dict[tuple[int, int, int, int], float] = {}
    before = lowbit.num_threads()
    for rows, cols in shapes:
        w = heavy_tailed_matrix(rows, cols, seed=0)
        xs = {n: rng.standard_normal((n, cols)).astype(np.float32) for n in TOKENS}
        for scheme, gs in SCHEMES:
            qt = lowbit.quantize(w, scheme, group_size=gs)
            weight = qt.weight()
            for n in TOKENS:
                reps = repeats_for(rows, cols, n, args.repeats)
                for threads in (1, 2):
                    lowbit.set_num_threads(threads)
                    x = xs[n]
                    seconds = median_seconds(lambda weight=weight, x=x: weight.matmul(x), reps)
                    results.append(
                        {
                            "rows": rows,
                            "cols": cols,
                            "scheme": scheme,
                            "group_size": gs,
                            "n": n,
                            "threads": threads,
                            "ms": seconds * 1e3,
                            "weight_bytes": qt.nbytes,
                            "gbps": qt.nbytes / seconds / 1e9,
                            "gflops": 2 * rows * cols * n / seconds / 1e9,
                        }
                    )
        # NumPy last: OpenBLAS threads spin after each call and would slow
        # the lowbit kernels timed right after.
        set_blas = openblas_threads_setter()
        for n in TOKENS:
            reps = repeats_for(rows, cols, n, args.repeats)
            for threads in (1, 2):
                if set_blas is not None:
                    set_blas(threads)
                x = xs[n]
                numpy_s[(rows, cols, n, threads)] = median_seconds(lambda x=x, w=w: x @ w.T, reps)
    lowbit.set_num_threads(before)

    print(
        f"lowbit MatMul, SIMD target {_core.dispatched_target()}; medians of {args.repeats} "
        f"(GEMM at n=512 fewer); read bandwidth {read[1]:.1f} GB/s (1 thread), "
        f"{read[2]:.1f} GB/s (2 threads)"
    )
    print(
        f"{'shape':>11} {'scheme':<6} {'n':>4} {'thr':>3} {'ms':>9} {'GB/s':>7} {'%read':>6} "
        f"{'GFLOP/s':>8} {'numpy ms':>9} {'x numpy':>8}"
    )
    for r in results:
        ref = numpy_s[(r["rows"], r["cols"], r["n"], r["threads"])]
        r["read_gbps"] = read[r["threads"]]
        r["read_fraction"] = r["gbps"] / read[r["threads"]]
        r["numpy_ms"] = ref * 1e3
        r["speedup_vs_numpy"] = ref * 1e3 / r["ms"]
        print(
            f"{r['rows']:>5}x{r['cols']:<5} {r['scheme']:<6} {r['n']:>4} {r['threads']:>3} "
            f"{r['ms']:>9.3f} {r['gbps']:>7.2f} {100 * r['read_fraction']:>5.0f}% "
            f"{r['gflops']:>8.1f} {r['numpy_ms']:>9.3f} {r['speedup_vs_numpy']:>8.2f}"
        )
    path = write_json(
        "matmul.json",
        {
            "simd_target": _core.dispatched_target(),
            "repeats": args.repeats,
            "read_gbps": read,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
