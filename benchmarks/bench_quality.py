"""What quantization costs on every real model available offline, per preset
and method, next to llama.cpp's Q8_0 and Q4_0 (through the gguf package) and
llama.cpp's own K-quants and IQ4_XS, with and without its importance matrix
(llama-quantize and llama-imatrix, built by benchmarks/llama_cpp_tools.py), all
measured by ``lowbit validate``'s code against transformers float32 on the
license texts. Writes benchmarks/results/quality-<model>.json.

    python benchmarks/bench_quality.py [--models smollm2-135m,gemma3-270m]
                                       [--cases NAME,...] [--llama-cpp TYPE[+imatrix],...]
                                       [--budgets BPW,...] [--tokens 8192]

llama.cpp's models go through its own pipeline: convert_hf_to_gguf.py makes a
float32 GGUF of the same float checkpoint, llama-imatrix runs it over the same
calibration text lowbit calibrates on (4096 tokens, windows of 512), and
llama-quantize writes each type; the result is dequantized exactly (the gguf
package, through lowbit's GGUF import) and validated like every other row.
Its bits per weight are the GGUF file's own tensor sizes.

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
import datetime
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ensure_bench_models, write_json

LLAMA_CPP = (
    "Q4_K_M",
    "Q4_K_M+imatrix",
    "Q4_K_S",
    "Q4_K_S+imatrix",
    "IQ4_XS",
    "IQ4_XS+imatrix",
    "Q3_K_M",
    "Q3_K_M+imatrix",
)

# lowbit next to a llama.cpp row: at its size (--target-bpw = its bits per
# weight over all matrices) and at its quality (--max-kld = its mean KLD,
# measured on validate's default 1024 tokens, the ones --max-kld searches on).
MATCHED = ("Q4_K_M+imatrix", "Q3_K_M+imatrix")

GRIDS = {
    "smollm2-135m": "matrices Q4_1 (uint4 g32 + min), embedding Q8_0",
    "gemma3-270m": "matrices Q5_0 / Q4_K / Q6_K / Q8_0, embedding Q8_0",
}


def print_row(row: dict) -> None:
    print(
        f"| {row['case']} | {row['method']} | {row['linear_bits_per_weight']:.2f} | "
        f"{row['bits_per_weight']:.2f} | {row['delta_ppl_pct']:+.2f}% "
        f"± {row['delta_ppl_pct_se']:.2f} | {row['kld_mean']:.4f} "
        f"± {row['kld_mean_se']:.4f} | {row['kld_p99']:.3f} | "
        f"{row['same_top']:.1%} |",
        flush=True,
    )


def llama_cpp_rows(src: Path, tmp: Path, cases: list[str], **validate_options: object):
    """Rows of llama.cpp's own quantizations (module docstring), one per case
    "TYPE" or "TYPE+imatrix"."""
    if not cases:
        return
    import llama_cpp_tools as llama_cpp
    from lowbit.eval.calibration import CONTEXT, DEFAULT_TOKENS, default_calibration_text
    from lowbit.eval.quality import run_float_peer
    from lowbit.formats.gguf import import_gguf

    f32 = llama_cpp.to_gguf(src, tmp / "llama-cpp-f32.gguf")
    imatrix = None
    if any(c.endswith("+imatrix") for c in cases):
        text = tmp / "calibration.txt"
        text.write_text(default_calibration_text()[0])
        imatrix = llama_cpp.compute_imatrix(
            f32, text, tmp / "llama-cpp-imatrix.gguf", CONTEXT, DEFAULT_TOKENS // CONTEXT
        )
    for case in cases:
        qtype, _, with_imatrix = case.partition("+")
        where = tmp / f"llama-cpp-{qtype}"
        where.mkdir(exist_ok=True)
        gguf = llama_cpp.quantize(
            f32, where / "model.gguf", qtype, imatrix if with_imatrix else None
        )
        bits = llama_cpp.gguf_bits(gguf)
        # Weights only: validation tokenizes with the source's tokenizer.
        import_gguf(gguf, tmp / "llama-cpp-hf", tokenizer=False)
        gguf.unlink()
        method = "llama.cpp imatrix" if with_imatrix else "llama.cpp"
        yield run_float_peer(
            f"llama.cpp {case}",
            method,
            tmp / "llama-cpp-hf",
            bits,
            src,
            tmp,
            also_default_tokens=case in MATCHED,
            **validate_options,
        )


def matched_rows(src: Path, tmp: Path, rows: list[dict], **validate_options: object):
    """lowbit at each MATCHED peer's size and at its quality (on 1024 tokens)."""
    from lowbit.eval.max_kld import MaxKldError
    from lowbit.eval.quality import Case, run_case

    for peer in (r for r in rows if r["case"].removeprefix("llama.cpp ") in MATCHED):
        name = peer["case"].removeprefix("llama.cpp ")
        bpw = peer["bits_per_weight"]
        yield run_case(
            Case(f"--target-bpw {bpw:.2f} ({name}'s size)", "q4", method="whqq", target_bpw=bpw),
            src,
            tmp,
            **validate_options,
        )
        kld = peer["kld_mean_default_tokens"]
        case = Case(f"--max-kld {kld:.4f} ({name}'s quality)", "q4", method="whqq", max_kld=kld)
        try:
            yield run_case(case, src, tmp, **validate_options)
        except MaxKldError as e:
            # A peer that reproduces the source's own grid (Gemma's Q4_K_M)
            # has a KLD no other recipe reaches: said, not a crash.
            print(f"| {case.name} | {e} |", flush=True)


def main() -> None:
    from lowbit.eval.quality import CASES, Case, run_case
    from lowbit.sources.default_model import REAL_MODELS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(REAL_MODELS))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--llama-cpp", default=",".join(LLAMA_CPP), help="'' for none")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument(
        "--budgets",
        default="",
        help="bits per weight over all matrices, comma-separated: "
        "a --target-bpw row each (e.g. a llama.cpp type's size)",
    )
    args = ap.parse_args()
    ensure_bench_models()
    for model in args.models.split(","):
        src = REAL_MODELS[model]()
        print(f"\n{model} ({src}); weights already on GGUF grids: {GRIDS[model]}")
        print("| case | method | bpw linear | bpw all | ΔPPL | mean KLD | p99 KLD | same top |")
        print("|---|---|---|---|---|---|---|---|")
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            cases = [CASES[name] for name in filter(None, args.cases.split(","))]
            cases += [
                Case(f"--target-bpw {b}", "q4", method="whqq", target_bpw=float(b))
                for b in filter(None, args.budgets.split(","))
            ]
            for case in cases:
                rows.append(run_case(case, src, Path(tmp), max_tokens=args.tokens))
                print_row(rows[-1])
            peers = [c for c in args.llama_cpp.split(",") if c]
            for row in llama_cpp_rows(src, Path(tmp), peers, max_tokens=args.tokens):
                rows.append(row)
                print_row(row)
            for row in matched_rows(src, Path(tmp), rows, max_tokens=args.tokens):
                rows.append(row)
                print_row(row)
        name = f"quality-{model}.json"
        payload = {
            "model": str(src),
            "grids": GRIDS[model],
            "tokens": args.tokens,
            "rows": _merged(RESULTS / name, args.tokens, rows),
        }
        print(f"wrote {write_json(name, payload)}")


def _merged(path: Path, tokens: int, rows: list[dict]) -> list[dict]:
    """The rows of an earlier run on as many tokens, each replaced by this
    run's row of the same case, then this run's new rows: a run of a few
    cases adds to the table instead of replacing it. Each row has its date."""
    today = datetime.date.today().isoformat()
    for r in rows:
        r["measured"] = today
    by_case: dict[str, dict] = {}
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier.get("tokens") == tokens:
            by_case = {r["case"]: r for r in earlier["rows"]}
    by_case.update({r["case"]: r for r in rows})
    return list(by_case.values())


if __name__ == "__main__":
    main()
