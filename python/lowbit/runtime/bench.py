"""``lowbit bench``: prompt processing and generation speed, as llama-bench
reports them (tokens per second, median of repetitions, threads used)."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lowbit import _core
from lowbit.runtime.model import MAX_CONTEXT, load
from lowbit.util.errors import ArgumentError


@dataclass
class BenchResult:
    model: str
    prompt_tokens: int
    gen_tokens: int
    repetitions: int
    threads: int
    kv_cache: str
    simd_target: str
    pp_tokens_per_second: float  # median over repetitions
    pp_stdev: float
    tg_tokens_per_second: float
    tg_stdev: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run_bench(
    model_dir: str | Path,
    prompt_tokens: int = 512,
    gen_tokens: int = 128,
    repetitions: int = 5,
    kv_cache: str = "f32",
    seed: int = 0,
) -> BenchResult:
    """pp: one forward pass over ``prompt_tokens`` random ids (logits of the
    last one). tg: ``gen_tokens`` single-token decode steps from an empty
    cache. Both on random token ids, so no tokenizer is needed."""
    if prompt_tokens < 0 or gen_tokens < 0 or repetitions < 1:
        raise ArgumentError("prompt and generation lengths must be >= 0, repetitions >= 1")
    for name, value in (("prompt_tokens", prompt_tokens), ("gen_tokens", gen_tokens)):
        if value > MAX_CONTEXT:
            raise ArgumentError(
                f"{name}={value}: more than the {MAX_CONTEXT} positions a KV cache holds"
            )
    context = max(prompt_tokens, gen_tokens, 1)
    model = load(model_dir, context_length=context, kv_cache=kv_cache)
    ids = np.random.default_rng(seed).integers(0, model.vocab_size, context).astype(np.int32)
    pp: list[float] = []
    tg: list[float] = []
    core = model._core
    # One untimed pass of each: page in the weights, warm the caches.
    core.rewind(0)
    core.forward(ids[: max(min(prompt_tokens, 16), 1)], False)
    for _ in range(repetitions):
        if prompt_tokens:
            core.rewind(0)
            t0 = time.perf_counter()
            core.forward(ids[:prompt_tokens], False)
            pp.append(prompt_tokens / (time.perf_counter() - t0))
        if gen_tokens:
            core.rewind(0)
            t0 = time.perf_counter()
            for i in range(gen_tokens):
                core.forward(ids[i : i + 1], False)
            tg.append(gen_tokens / (time.perf_counter() - t0))
    return BenchResult(
        model=str(model_dir),
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        repetitions=repetitions,
        threads=_core.num_threads(),
        kv_cache=kv_cache,
        simd_target=_core.dispatched_target(),
        pp_tokens_per_second=statistics.median(pp) if pp else 0.0,
        pp_stdev=statistics.stdev(pp) if len(pp) > 1 else 0.0,
        tg_tokens_per_second=statistics.median(tg) if tg else 0.0,
        tg_stdev=statistics.stdev(tg) if len(tg) > 1 else 0.0,
    )


def format_bench(r: BenchResult) -> str:
    lines = [
        "| model | threads | simd | test | t/s |",
        "|---|---|---|---|---|",
    ]
    name = Path(r.model).name
    if r.prompt_tokens:
        lines.append(
            f"| {name} | {r.threads} | {r.simd_target} | pp{r.prompt_tokens} | "
            f"{r.pp_tokens_per_second:.2f} ± {r.pp_stdev:.2f} |"
        )
    if r.gen_tokens:
        lines.append(
            f"| {name} | {r.threads} | {r.simd_target} | tg{r.gen_tokens} | "
            f"{r.tg_tokens_per_second:.2f} ± {r.tg_stdev:.2f} |"
        )
    return "\n".join(lines)
