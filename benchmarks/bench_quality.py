"""What quantization costs on every real model available offline, per preset
and method, next to llama.cpp's Q8_0 and Q4_0 (through the gguf package), all
measured by ``lowbit validate``'s code against transformers float32 on the
license texts. Writes benchmarks/results/quality-<model>.json.

    python benchmarks/bench_quality.py [--models smollm2-135m,gemma3-270m]
                                       [--cases NAME,...] [--tokens 8192]

Each figure comes with its standard error (batch means over 32 consecutive
predictions), so a difference can be told from noise. The calibrated cases
calibrate once per model (4096 tokens of Python's pydoc topics, disjoint from
the evaluation text).

Caveat printed with each table: both models were imported from GGUF files, so
their weights already sit on quantization grids: SmolLM2-135M's matrices are
Q4_1 (uint4 in groups of 32 with a scale and a minimum: uint4 g32 recovers them
almost exactly, so only g64 and int4 figures mean anything there), its
embedding Q8_0; Gemma 3 270M's are Q5_0, Q4_K, Q6_K and Q8_0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_bench_models, write_json

GRIDS = {
    "smollm2-135m": "matrices Q4_1 (uint4 g32 + min), embedding Q8_0",
    "gemma3-270m": "matrices Q5_0 / Q4_K / Q6_K / Q8_0, embedding Q8_0",
}


def main() -> None:
    from lowbit.eval.quality import CASES, run_case
    from lowbit.sources.default_model import REAL_MODELS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(REAL_MODELS))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--tokens", type=int, default=8192)
    args = ap.parse_args()
    ensure_bench_models()
    for model in args.models.split(","):
        src = REAL_MODELS[model]()
        print(f"\n{model} ({src}); weights already on GGUF grids: {GRIDS[model]}")
        print("| case | method | bpw linear | bpw all | ΔPPL | mean KLD | p99 KLD | same top |")
        print("|---|---|---|---|---|---|---|---|")
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.cases.split(","):
                row = run_case(CASES[name], src, Path(tmp), max_tokens=args.tokens)
                rows.append(row)
                print(
                    f"| {row['case']} | {row['method']} | {row['linear_bits_per_weight']:.2f} | "
                    f"{row['bits_per_weight']:.2f} | {row['delta_ppl_pct']:+.2f}% "
                    f"± {row['delta_ppl_pct_se']:.2f} | {row['kld_mean']:.4f} "
                    f"± {row['kld_mean_se']:.4f} | {row['kld_p99']:.3f} | "
                    f"{row['same_top']:.1%} |",
                    flush=True,
                )
        payload = {"model": str(src), "grids": GRIDS[model], "tokens": args.tokens, "rows": rows}
        print(f"wrote {write_json(f'quality-{model}.json', payload)}")


if __name__ == "__main__":
    main()
