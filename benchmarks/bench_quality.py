"""What quantization costs on the embedded default model (SmolLM2-135M-Instruct),
per preset and method, next to llama.cpp's Q8_0 and Q4_0 (through the gguf
package), all measured by ``lowbit validate``'s code against transformers
float32 on the license texts. Writes benchmarks/results/quality.json.

    python benchmarks/bench_quality.py [--cases NAME,...] [--tokens 1024]

Caveat printed with the table: the default model was imported from a GGUF
file whose linear layers are Q4_1 and embeddings Q8_0, so its weights already
sit on a 4-bit (and 8-bit, block-32) grid; 4-bit formats that share block 32
are flattered.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json


def main() -> None:
    from lowbit.eval.quality import CASES, run_case
    from lowbit.sources.default_model import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--tokens", type=int, default=1024)
    args = ap.parse_args()
    src = default_model_path()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            row = run_case(CASES[name], src, Path(tmp), max_tokens=args.tokens)
            rows.append(row)
            print(
                f"| {row['case']} | {row['method']} | {row['linear_bits_per_weight']:.2f} | "
                f"{row['bits_per_weight']:.2f} | {row['delta_ppl_pct']:+.2f}% | "
                f"{row['kld_mean']:.4f} | {row['kld_p99']:.4f} | {row['same_top']:.1%} |",
                flush=True,
            )
    path = write_json("quality.json", {"model": str(src), "tokens": args.tokens, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    print("| case | method | bpw linear | bpw all | ΔPPL | mean KLD | p99 KLD | same top |")
    print("|---|---|---|---|---|---|---|---|")
    main()
