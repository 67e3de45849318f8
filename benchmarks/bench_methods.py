"""Methods measured next to lowbit's 4-bit ones and not kept: AWQ-style
input-channel scaling folded into the norms, and SINQ-style dual scaling.

All rows quantize the linear layers at uint4 group 64 (4.5 bits per weight)
and the embedding at int8 group 32, as ``q4`` does, and are validated by
``lowbit validate``'s code against transformers float32 on 8192 tokens of
the license texts (16 windows of 512), each figure ± one standard error.

- ``whqq``, ``gptq``: lowbit's weighted hqq and GPTQ (q4), for reference.
- ``awq + whqq``, ``awq + gptq``: AWQ's search (Lin et al., 2023) on X^T X
  of the float model over the calibration text: per input site, the input
  channel scales s = E[x_j^2]^(a/2) with a in 0, 0.05, .., 1 that minimise
  the layer's output error tr(D H D^T) of its matrices quantized as W
  diag(s) (weighted hqq), then folded exactly: q/k/v's into the attention
  norm, gate/up's into the FFN norm (Gemma's (1 + w) norms as (1 + w) / s -
  1), o's into v's rows (shared by the query heads of a kv head), down's into
  up's rows. The folded float32 model is converted like any checkpoint.
- ``sinq (hqq)``: calibration-free, SINQ-style (Müller et al., 2025): each
  matrix is balanced by alternately dividing its rows and columns by their
  standard deviations (16 rounds), quantized with hqq, and multiplied back;
  the column scales would be a stored vector per matrix (not counted in its
  bits here), the row scales merge into the group scales.
- ``hqq``: q4-nocal, the calibration-free method it competes with.

    python benchmarks/bench_methods.py [--models smollm2-135m,gemma3-270m]
                                       [--cases "awq + whqq,sinq (hqq)"] [--tokens 8192]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_bench_models, write_json

F32 = np.float32
ALPHAS = np.linspace(0.0, 1.0, 21)
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
LINEAR = r"(self_attn|mlp)\..*proj\.weight$"


def float_grams(src: Path) -> tuple[dict[str, np.ndarray], int]:
    """X^T X per input site of the float model over the calibration text
    (lowbit's runtime, q/k/v sharing one, gate/up another), by site name."""
    import lowbit
    from lowbit.eval.calibration import CONTEXT, DEFAULT_TOKENS, calibration_ids

    with tempfile.TemporaryDirectory() as tmp:
        lowbit.convert(src, Path(tmp) / "f32", preset="f32", progress=False)
        model = lowbit.load(Path(tmp) / "f32", context_length=CONTEXT)
        windows, _ = calibration_ids(model.tokenizer, None, DEFAULT_TOKENS)
        model._core.collect_input_stats(True, gram=True)
        for w in windows:
            model.forward(w)
        model._core.collect_input_stats(False)
        grams = {str(k): g for k, (g, _) in model._core.input_gram().items()}
    return grams, int(windows.size)


def _deq(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    from lowbit.quant.quantize import quantize

    x = np.ascontiguousarray(x, F32)
    method = "hqq" if importance is None else "whqq"
    return quantize(x, "uint4", 64, method, importance=importance).dequantize()


def _output_error(ws: list[np.ndarray], h: np.ndarray, s: np.ndarray) -> float:
    imp = (np.diag(h) / s**2).astype(F32)
    total = 0.0
    for w in ws:
        d = (w - _deq(w * s[None, :], imp) / s[None, :]).astype(np.float64)
        total += float(((d @ h) * d).sum())
    return total


def _search(ws: list[np.ndarray], h: np.ndarray, tie=None) -> tuple[float, np.ndarray]:
    """AWQ's grid search of the exponent a for the matrices ``ws`` that read one input."""
    act = np.sqrt(np.maximum(np.diag(h), 1e-20))
    best = (0.0, np.ones_like(act))
    best_err = _output_error(ws, h, best[1])
    for a in ALPHAS[1:]:
        s = act**a
        if tie is not None:
            s = tie(s)
        s = s / np.sqrt(s.max() * s.min())
        err = _output_error(ws, h, s)
        if err < best_err:
            best, best_err = (float(a), s), err
    return best


def awq_fold(src: Path, out: Path) -> dict[str, float]:
    """``src`` with AWQ's scales folded in, as a float32 checkpoint at ``out``;
    returns the exponent a chosen per site."""
    from lowbit.formats.safetensors import Checkpoint
    from safetensors.numpy import save_file

    config = json.loads((src / "config.json").read_text())
    gemma = config["model_type"].startswith("gemma")
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    grams, _ = float_grams(src)
    ck = Checkpoint(src)
    w = {n: np.array(ck.get_float(n), F32) for n in ck.names()}

    def fold_norm(name: str, s: np.ndarray) -> None:
        w[name] = ((1 + w[name]) / s - 1) if gemma else w[name] / s

    def o_tie(s: np.ndarray) -> np.ndarray:
        g = heads // kv  # o's columns of one kv head's query heads share v's row
        per_row = s.reshape(kv, g, head_dim).mean(axis=1)
        return np.repeat(per_row[:, None, :], g, axis=1).reshape(-1)

    alphas = {}
    for i in range(config["num_hidden_layers"]):
        p, a, m = f"model.layers.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        qkv = [a + f"{x}_proj.weight" for x in "qkv"]
        alphas[f"{i}.qkv"], s = _search([w[n] for n in qkv], grams[f"L{i}.q"])
        for n in qkv:
            w[n] = w[n] * s[None, :]
        fold_norm(p + "input_layernorm.weight", s)
        gu = [m + "gate_proj.weight", m + "up_proj.weight"]
        alphas[f"{i}.gate_up"], s = _search([w[n] for n in gu], grams[f"L{i}.gate"])
        for n in gu:
            w[n] = w[n] * s[None, :]
        ffn_norm = "pre_feedforward_layernorm" if gemma else "post_attention_layernorm"
        fold_norm(p + f"{ffn_norm}.weight", s)
        o = a + "o_proj.weight"
        alphas[f"{i}.v_o"], s = _search([w[o]], grams[f"L{i}.o"], o_tie)
        w[o] = w[o] * s[None, :]
        v_rows = s.reshape(kv, heads // kv, head_dim)[:, 0, :].reshape(-1)
        w[a + "v_proj.weight"] = w[a + "v_proj.weight"] / v_rows[:, None]
        d = m + "down_proj.weight"
        alphas[f"{i}.up_down"], s = _search([w[d]], grams[f"L{i}.down"])
        w[d] = w[d] * s[None, :]
        w[m + "up_proj.weight"] = w[m + "up_proj.weight"] / s[:, None]
    out.mkdir(parents=True)
    for f in SIDE_FILES:
        if (src / f).exists():
            shutil.copy(src / f, out / f)
    save_file(
        {n: np.ascontiguousarray(v, F32) for n, v in w.items()}, str(out / "model.safetensors")
    )
    return alphas


def sinq_dequantized(src: Path, out: Path, rounds: int = 16) -> None:
    """``src`` with every linear matrix SINQ-balanced, quantized (hqq) and
    multiplied back, the embedding int8 group 32, as a float32 checkpoint."""
    import re

    from lowbit.formats.safetensors import Checkpoint
    from lowbit.quant.quantize import quantize
    from safetensors.numpy import save_file

    ck = Checkpoint(src)
    out.mkdir(parents=True)
    tensors = {}
    for n in ck.names():
        x = np.array(ck.get_float(n), F32)
        if re.search(LINEAR, n):
            rows, cols = np.ones(x.shape[0], F32), np.ones(x.shape[1], F32)
            b = x.copy()
            for _ in range(rounds):
                c = b.std(axis=0) + 1e-12
                b, cols = b / c[None, :], cols * c
                r = b.std(axis=1) + 1e-12
                b, rows = b / r[:, None], rows * r
            x = (rows[:, None] * _deq(b)) * cols[None, :]
        elif x.ndim == 2:
            x = quantize(np.ascontiguousarray(x), "int8", 32).dequantize()
        tensors[n] = np.ascontiguousarray(x, F32)
    for f in SIDE_FILES:
        if (src / f).exists():
            shutil.copy(src / f, out / f)
    save_file(tensors, str(out / "model.safetensors"))


CASES = ("whqq", "gptq", "awq + whqq", "awq + gptq", "hqq", "sinq (hqq)")


def run(model: str, cases: list[str], tokens: int) -> list[dict]:
    from lowbit.eval.quality import LINEAR as Q_LINEAR
    from lowbit.eval.quality import Case, run_case, run_float_peer
    from lowbit.sources.default_model import REAL_MODELS

    assert LINEAR == Q_LINEAR
    src = REAL_MODELS[model]()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as tmp:
        work = Path(tmp)
        folded = None
        # The folded model's own calibration statistics (its inputs are
        # scaled): a work directory of its own, as run_case keeps one per
        # directory.
        (work / "folded").mkdir()
        for name in cases:
            method = name.rpartition(" ")[2].strip("()")
            if name.startswith("awq"):
                if folded is None:
                    folded = work / "awq-folded"
                    awq_fold(src, folded)
                case = Case(name, "q4", (f"{LINEAR}=uint4:64:{method}",), method)
                # The folded checkpoint is converted; validation is against
                # the original float model.
                row = run_case(case, folded, work / "folded", src, max_tokens=tokens)
            elif name.startswith("sinq"):
                peer = work / "sinq"
                sinq_dequantized(src, peer)
                row = run_float_peer(name, "hqq", peer, (4.5, float("nan")), src, work,
                                     max_tokens=tokens)  # fmt: skip
            else:
                case = Case(name, "q4", (f"{LINEAR}=uint4:64:{method}",), method)
                row = run_case(case, src, work, max_tokens=tokens)
            ppl = f"{row['delta_ppl_pct']:+.2f}% ± {row['delta_ppl_pct_se']:.2f}"
            kld = f"{row['kld_mean']:.4f} ± {row['kld_mean_se']:.4f}"
            print(f"| {model} | {name} | {ppl} | {kld} | {row['same_top']:.1%} |", flush=True)
            rows.append(row)
    return rows


def main() -> None:
    from lowbit.sources.default_model import REAL_MODELS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(REAL_MODELS))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--tokens", type=int, default=8192)
    args = ap.parse_args()
    ensure_bench_models()
    print("| model | case | ΔPPL | mean KLD | same top |\n|---|---|---|---|---|")
    results = {}
    for m in args.models.split(","):
        results[m] = run(m, args.cases.split(","), args.tokens)
    print(f"wrote {write_json('methods.json', results)}")


if __name__ == "__main__":
    main()
