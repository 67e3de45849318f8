"""Does the sensitivity estimate of --target-bpw / --max-kld rank matrices
like their real effect on the model's output?

The estimate (``lowbit.eval.gains``) is each matrix's measured effect at
uint4 g64 whqq on 256 tokens of calibration text, carried to other rungs by
the proxy's ratio (relative output noise weighted by E[x^2]). This checks
both steps on the matrices of four layers (at 1/8, 3/8, 5/8 and 7/8 of the
depth): each is quantized alone at ``--rung``, everything else float32, and
the model's mean KL divergence against the float model is measured on
validate's evaluation text (512 tokens, not the calibration text). Prints per
matrix the bare proxy, the estimate and the real KLD; Spearman's rank
correlation of each against the real effect; and the estimate's total over
the real total. At uint4:64:whqq it checks the transfer from calibration to
evaluation text; at uint2:32:whqq also the step between rungs.

    python benchmarks/bench_sensitivity.py [--models smollm2-135m,gemma3-270m]
                                           [--rung uint2:32:whqq] [--tokens 512]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ensure_bench_models, write_json


def _ranks(x: list[float]) -> np.ndarray:
    return np.argsort(np.argsort(np.asarray(x))).astype(np.float64)


def spearman(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def measure(model: str, rung: str, tokens: int) -> dict:
    from lowbit.conversion.convert import convert
    from lowbit.eval.budget import measure_sensitivity
    from lowbit.eval.calibration import calibrate
    from lowbit.eval.gains import layer_of
    from lowbit.eval.text import DEFAULT_CONTEXT
    from lowbit.eval.validate import baseline_logits, evaluation_windows, model_metrics
    from lowbit.models.families import role_of
    from lowbit.quant.recipes import parse_rule
    from lowbit.sources.default_model import REAL_MODELS, cache_dir

    src = REAL_MODELS[model]()
    choice = parse_rule(f"x={rung}").choice
    stats = calibrate(src)
    sens = measure_sensitivity(src, stats.mean_sq)
    n = 1 + max(i for name in sens.candidates if (i := layer_of(name)) is not None)
    layers = {(k * n) // 8 for k in (1, 3, 5, 7)}
    sample = [name for name in sens.candidates if layer_of(name) in layers]
    windows = evaluation_windows(src, src, None, DEFAULT_CONTEXT, tokens)
    base = baseline_logits(src, windows, cache_dir() / "baselines")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sample:
            est = [c.loss for c in sens.candidates[name] if c.choice == choice]
            if not est:
                continue  # the rung does not fit this matrix
            out = Path(tmp) / "one"
            rule = f"^{re.escape(name)}$={rung}"
            convert(
                src,
                out,
                "f32",
                [rule],
                importance=stats.mean_sq,
                force=True,
                quiet=True,
                progress=False,
            )
            kld = float(model_metrics(out, windows, base)["kld_mean"])
            proxy = est[0] / sens.gains[name]
            rows.append(
                {
                    "tensor": name,
                    "role": role_of(name),
                    "proxy": proxy,
                    "estimate": est[0],
                    "kld": kld,
                }
            )
            print(
                f"  {name:50s} proxy {proxy:.2e}  estimate {est[0]:.2e}  KLD {kld:.2e}", flush=True
            )
    real = [r["kld"] for r in rows]
    return {
        "model": str(src),
        "rung": rung,
        "tokens": windows.predictions,
        "layers": sorted(layers),
        "spearman_proxy": spearman([r["proxy"] for r in rows], real),
        "spearman_estimate": spearman([r["estimate"] for r in rows], real),
        "estimate_over_real": sum(r["estimate"] for r in rows) / sum(real),
        "rows": rows,
    }


def main() -> None:
    from lowbit.sources.default_model import REAL_MODELS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(REAL_MODELS))
    ap.add_argument("--rung", default="uint2:32:whqq")
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    ensure_bench_models()
    for model in args.models.split(","):
        print(f"\n{model}: each matrix alone at {args.rung}")
        result = measure(model, args.rung, args.tokens)
        print(
            f"{len(result['rows'])} matrices of layers {result['layers']}: Spearman vs real "
            f"KLD: bare proxy {result['spearman_proxy']:.3f}, estimate "
            f"{result['spearman_estimate']:.3f}; estimate total / real total "
            f"{result['estimate_over_real']:.2f}"
        )
        print(f"wrote {write_json(f'sensitivity-{model}.json', result)}")


if __name__ == "__main__":
    main()
