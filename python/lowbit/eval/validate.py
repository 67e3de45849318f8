"""``lowbit validate``: how much did quantization cost?

Two levels, against the float checkpoint the model was converted from:

- weights: each stored tensor, reconstructed as the runtime sees it, against
  the baseline's tensor: relative Frobenius error, max |error|, SNR in dB and
  cosine similarity; checked against a per-bit-width tolerance;
- model: lowbit's runtime on the converted model against transformers running
  the baseline in float32, on the evaluation text (eval_text.py's protocol):
  perplexity of both and its change, KL divergence of the next-token
  distributions (mean and 99th percentile), how often the top token is the
  same, and the largest logit difference. The baseline's logits are cached on
  disk, so validating a second conversion does not rerun PyTorch.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.conversion.fold import FOLD_FILE, Fold, FoldError, read_fold
from lowbit.eval.metrics import weight_error
from lowbit.eval.text import (
    DEFAULT_CONTEXT,
    DEFAULT_TOKENS,
    EvalWindows,
    encode_files,
    make_windows,
)
from lowbit.eval.tolerances import Tolerances, load_tolerances, violations
from lowbit.formats.layout import stored_tensor
from lowbit.formats.manifest import Manifest
from lowbit.formats.manifest import read as read_manifest
from lowbit.formats.safetensors import Checkpoint, CheckpointError, refuse_custom_code
from lowbit.models.config import read_config
from lowbit.models.tokenizer import TOKENIZER_FILE, Tokenizer, TokenizerError
from lowbit.quant.schemes import get_scheme
from lowbit.runtime.model import load
from lowbit.sources.default_model import cache_dir
from lowbit.util import jsonout
from lowbit.util.errors import LowbitError

# Positions per step of the metric computation: float64 copies of [rows, vocab]
# logits stay near 25 MB for a 49k vocabulary.
ROWS_PER_STEP = 64


class ValidationError(LowbitError):
    """Validation cannot run: a baseline that does not match, a missing tokenizer."""


@dataclass
class ValidationReport:
    path: str
    baseline: str
    preset: str | None
    weights: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] | None = None
    tolerances: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def validate(
    model_dir: str | Path,
    baseline: str | Path,
    text_files: list[str | Path] | None = None,
    tolerances: str | Path | Tolerances | None = None,
    context: int = DEFAULT_CONTEXT,
    max_tokens: int = DEFAULT_TOKENS,
    model_level: bool = True,
    baseline_cache: str | Path | None = None,
) -> ValidationReport:
    """Validate ``model_dir`` against the float checkpoint ``baseline``."""
    model_dir = Path(model_dir)
    baseline = Path(baseline)
    manifest = read_manifest(model_dir)
    preset = (manifest.document.get("recipe") or {}).get("preset")
    tol = (
        tolerances
        if isinstance(tolerances, Tolerances)
        else load_tolerances(tolerances, preset=preset)
    )
    try:
        base_ck = Checkpoint(baseline)
    except CheckpointError as e:
        raise ValidationError(f"baseline: {e}") from None
    report = ValidationReport(str(model_dir), str(baseline), preset, tolerances=tol.as_dict())
    report.weights = weight_metrics(model_dir, manifest, base_ck)
    if model_level:
        files = [Path(f) for f in text_files] if text_files else None
        windows = evaluation_windows(model_dir, baseline, files, context, max_tokens)
        cache = Path(baseline_cache) if baseline_cache else cache_dir() / "baselines"
        base_logits = baseline_logits(baseline, windows, cache)
        report.model = model_metrics(model_dir, windows, base_logits)
    report.violations = violations(report.as_dict(), tol)
    return report


# ---------------------------------------------------------------- weights


def saved_fold(model_dir: Path, manifest: Manifest) -> Fold | None:
    """The input-channel scales folded into the model (lowbit.conversion.fold),
    when its recipe says it has them."""
    record = (manifest.document.get("recipe") or {}).get("fold")
    if record is None:
        return None
    if not isinstance(record, dict) or record.get("file") != FOLD_FILE:
        raise ValidationError(f"{model_dir}: manifest recipe.fold must name {FOLD_FILE}")
    config = read_config(model_dir / "config.json")
    shapes = {w.name: w.shape for w in manifest.weights}
    try:
        return read_fold(model_dir / FOLD_FILE, str(record.get("method")), shapes, config)
    except FoldError as e:
        raise ValidationError(str(e)) from None


def weight_metrics(model_dir: Path, manifest: Manifest, base: Checkpoint) -> list[dict[str, Any]]:
    """Per stored tensor: its error against the baseline's tensor of that name
    (with any folded input-channel scales divided back out first)."""
    ck = Checkpoint(model_dir, files=[f.name for f in manifest.files])
    fold = saved_fold(model_dir, manifest)
    out = []
    for w in manifest.weights:
        name = w.name
        try:
            ref = base.get_float(name)
        except CheckpointError as e:
            raise ValidationError(f"baseline has no tensor for {name}: {e}") from None
        if tuple(ref.shape) != w.shape:
            raise ValidationError(
                f"{name}: baseline shape {tuple(ref.shape)} differs from the model's "
                f"{w.shape}; is --baseline the checkpoint this model came from?"
            )
        if len(w.shape) > 1:
            x_hat = stored_tensor(ck, w).dequantize().reshape(ref.shape)
        else:
            x_hat = ck.get(w.stored.values).astype(np.float32)
        if fold is not None and name in fold:
            x_hat = fold.undo(name, x_hat)
        err = weight_error(ref, x_hat)
        out.append(
            {
                "name": name,
                "scheme": w.scheme,
                "bits": get_scheme(w.scheme).bits,
                "bits_per_weight": w.bits_per_weight,
                "rel_error": err.rel_error,
                "max_abs": err.max_abs,
                "snr_db": err.snr_db,
                # snr_db is infinite (null in JSON) when the copy is exact.
                "exact": err.max_abs == 0.0,
                "cosine": err.cosine,
            }
        )
    return out


# ---------------------------------------------------------------- model


def evaluation_windows(
    model_dir: Path, baseline: Path, files: list[Path] | None, context: int, max_tokens: int
) -> EvalWindows:
    """The evaluation text (``files``; None: the default text), tokenized with
    the model's tokenizer (or the baseline's)."""
    for where in (model_dir, baseline):
        if (where / TOKENIZER_FILE).is_file():
            tok = Tokenizer(where)
            break
    else:
        raise TokenizerError(
            f"model-level validation needs {TOKENIZER_FILE} in {model_dir} or {baseline}"
        )
    ids, source = encode_files(tok, files)
    return make_windows(ids, context, max_tokens, source)


def _baseline_key(baseline: Path, windows: EvalWindows) -> str:
    """Cache key: the token windows and protocol, and the baseline's files
    (path, size and modification time of each)."""
    import transformers

    h = hashlib.sha256(windows.digest().encode())
    h.update(f"transformers={transformers.__version__}".encode())
    for f in sorted(baseline.resolve().glob("*")):
        if f.suffix in (".safetensors", ".json"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def baseline_logits(baseline: Path, windows: EvalWindows, cache: Path) -> np.ndarray:
    """transformers' float32 logits [windows, context, vocab] for the baseline,
    from the cache or computed once and cached (written atomically)."""
    path = cache / f"{_baseline_key(baseline, windows)}.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            path.unlink()  # a damaged cache entry: recompute it
    import torch
    import transformers

    refuse_custom_code(baseline)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        baseline, dtype=torch.float32, trust_remote_code=False, use_safetensors=True
    )
    model.eval()
    cache.mkdir(parents=True, exist_ok=True)
    vocab = int(model.config.vocab_size)
    n, ctx = windows.windows.shape
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, ctx, vocab))
        with torch.inference_mode():
            for i in range(n):
                ids = torch.from_numpy(windows.windows[i])[None]
                out[i] = model(ids).logits[0, :, :vocab].float().numpy()
        out.flush()
        del out
        partial.replace(path)
    except BaseException:
        # Ctrl-C or a full disk: a cache entry as large as the logits is not
        # left behind (the name has the pid, so no other run is writing it).
        partial.unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


# Consecutive predictions of a text are correlated (a hard passage is hard
# for many tokens), so standard errors come from the means of batches of this
# many consecutive predictions rather than from the tokens one by one.
SE_BATCH = 32


def batch_means_se(x: np.ndarray, batch: int = SE_BATCH) -> float:
    """Standard error of the mean of ``x`` by batch means: the spread of the
    means of consecutive batches of ``batch`` values, over sqrt(batches).
    Fewer than two batches: the per-value standard error."""
    n = len(x) // batch
    if n < 2:
        return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0
    means = x[: n * batch].reshape(n, batch).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(n))


@dataclass
class LogitComparison:
    """Next-token agreement of a model with a baseline, accumulated block of
    rows by block of rows: perplexities, KL divergence, same top token."""

    nll_base: list[np.ndarray] = field(default_factory=list)
    nll_ours: list[np.ndarray] = field(default_factory=list)
    kld: list[np.ndarray] = field(default_factory=list)
    same: list[np.ndarray] = field(default_factory=list)
    max_delta: float = 0.0  # max |ours - base| over all logits

    def add(self, base: np.ndarray, ours: np.ndarray, targets: np.ndarray) -> None:
        """Logits [rows, vocab] of both models and each row's next token."""
        lp_b = _log_softmax(base)
        lp_o = _log_softmax(ours)
        rows = np.arange(len(targets))
        self.nll_base.append(-lp_b[rows, targets])
        self.nll_ours.append(-lp_o[rows, targets])
        self.kld.append(np.einsum("ij,ij->i", np.exp(lp_b), lp_b - lp_o))
        self.same.append(lp_b.argmax(1) == lp_o.argmax(1))
        self.max_delta = max(self.max_delta, float(np.abs(ours - base).max()))

    def metrics(self, base_name: str) -> dict[str, float]:
        """ppl_{base_name}, ppl, delta_ppl_pct and its standard error,
        kld_mean and its standard error, kld_p99, same_top."""
        kl = np.maximum(np.concatenate(self.kld), 0.0)  # rounding can dip a hair below 0
        nll_base = np.concatenate(self.nll_base).astype(np.float64)
        nll = np.concatenate(self.nll_ours).astype(np.float64)
        ppl_base = math.exp(float(nll_base.mean()))
        ppl = math.exp(float(nll.mean()))
        # ΔPPL% = 100 (exp(mean d) - 1) with d the per-token difference of
        # log-likelihoods; its standard error by the delta method.
        ratio = ppl / ppl_base
        return {
            f"ppl_{base_name}": ppl_base,
            "ppl": ppl,
            "delta_ppl_pct": 100.0 * (ratio - 1.0),
            "delta_ppl_pct_se": 100.0 * ratio * batch_means_se(nll - nll_base),
            "kld_mean": float(kl.mean()),
            "kld_mean_se": batch_means_se(kl),
            "kld_p99": float(np.percentile(kl, 99)),
            "same_top": float(np.concatenate(self.same).mean()),
        }


def model_metrics(model_dir: Path, windows: EvalWindows, base: np.ndarray) -> dict[str, Any]:
    """Perplexities, KL divergence and agreement of lowbit's runtime against
    the baseline logits, over every predicted position of every window."""
    model = load(model_dir, context_length=windows.context)
    vocab = model.vocab_size
    if base.shape[2] != vocab:
        raise ValidationError(
            f"baseline vocabulary {base.shape[2]} differs from the model's {vocab}"
        )
    comparison = LogitComparison()
    for w, ids in enumerate(windows.windows):
        ours = model.forward(ids)
        targets = ids[1:]
        for r0 in range(0, len(targets), ROWS_PER_STEP):
            r1 = min(r0 + ROWS_PER_STEP, len(targets))
            comparison.add(base[w, r0:r1], ours[r0:r1], targets[r0:r1])
    return {
        "text": windows.source,
        "context": windows.context,
        "windows": int(windows.windows.shape[0]),
        "predictions": windows.predictions,
        **comparison.metrics("baseline"),
        "max_delta_logit": comparison.max_delta,
    }


# ---------------------------------------------------------------- output


def format_report(report: ValidationReport) -> str:
    lines = [f"{report.path} against {report.baseline} (preset {report.preset})", ""]
    by_scheme: dict[str, list[dict[str, Any]]] = {}
    for w in report.weights:
        by_scheme.setdefault(w["scheme"], []).append(w)
    lines.append(
        "| scheme | tensors | worst rel. error | mean rel. error | min SNR dB | min cosine |"
    )
    lines.append("|---|---|---|---|---|---|")
    for scheme, ws in by_scheme.items():
        rel = [w["rel_error"] for w in ws]
        snr = [w["snr_db"] for w in ws]
        lines.append(
            f"| {scheme} | {len(ws)} | {max(rel):.4f} | {np.mean(rel):.4f} | "
            f"{min(snr):.1f} | {min(w['cosine'] for w in ws):.5f} |"
        )
    m = report.model
    if m:
        lines += [
            "",
            f"model, {m['predictions']} predictions ({m['windows']} windows of {m['context']} "
            f"tokens of {m['text']}):",
            f"  perplexity {m['ppl']:.4f} vs baseline {m['ppl_baseline']:.4f} "
            f"({m['delta_ppl_pct']:+.3f}% ± {m['delta_ppl_pct_se']:.3f})",
            f"  KL divergence mean {m['kld_mean']:.5f} ± {m['kld_mean_se']:.5f}, "
            f"p99 {m['kld_p99']:.5f}; "
            f"same top token {m['same_top']:.2%}; max |Δlogit| {m['max_delta_logit']:.4f}",
            f"  (± one standard error, from means of batches of {SE_BATCH} "
            "consecutive predictions)",
        ]
    lines.append("")
    if report.ok:
        lines.append("within tolerance")
    else:
        lines += [f"FAILED: {v}" for v in report.violations]
    return "\n".join(lines)


def write_report(report: ValidationReport, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(jsonout.dumps(report.as_dict()))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
