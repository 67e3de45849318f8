"""Measured gains: what a matrix's output noise does to the model's output.

The budget's proxy (``lowbit.eval.budget``) is the relative noise quantizing a
matrix adds to its layer's output. Alone it ranks matrices poorly (Spearman
0.37 against the real effect on SmolLM2-135M, benchmarks/bench_sensitivity.py):
noise in q/k barely moves the softmax, the FFNs of the first and last layers
move the output most, a layer whose input has a few huge channels gets a
proxy dominated by them, and the embedding's noise goes straight into the
residual stream. So the effect is measured: each matrix is quantized alone at
GAIN_RUNG, everything else float32, and the mean KL divergence of the model's
next-token distribution against the float model's, on the calibration text
(never the evaluation text), over the proxy at that rung, is its gain. The
estimate at another rung is gain x proxy there: KL divergence is quadratic in
a small perturbation of the logits, so linear in noise power, as the proxy is
(uint2 against uint4 on SmolLM2: real ratios 18-19, proxy ratios 23-25).

Cost: per matrix of layer i, layers i.. over GAIN_TOKENS from the float
model's stored hidden states at layer i's input, on the float32 model whose
one matrix is overwritten in place (no conversion or reload per trial).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.conversion.convert import convert
from lowbit.models.families import role_of
from lowbit.quant.recipes import Choice
from lowbit.quant.schemes import CALIBRATED_METHODS

# Where gains are measured: the preset's own 4-bit rung, so the estimate is
# most accurate where the allocator decides most (4 vs 5 vs 8 bits).
GAIN_RUNG = Choice("uint4", 64, "whqq")
# One short window of calibration text: the KLD on it is exact, not sampled;
# benchmarks/bench_sensitivity.py checks that it ranks matrices as the
# evaluation text does.
GAIN_TOKENS = 256


def layer_of(name: str) -> int | None:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


class _Baseline:
    """The float model's next-token distributions, kept in the form that makes
    each trial's mean KL divergence one pass of exp over its logits:
    KL(p || q) = sum p log p - sum p z + logsumexp(z) per row, for q =
    softmax(z) (about 3x faster than two log-softmaxes on SmolLM2's 49152
    logits per row)."""

    def __init__(self, logits: np.ndarray) -> None:
        z = logits.astype(np.float64)
        log_p = z - _logsumexp(z)[:, None]
        self.p = np.exp(log_p)
        self.neg_entropy = np.einsum("ij,ij->i", self.p, log_p)

    def kld(self, logits: np.ndarray) -> float:
        z = logits.astype(np.float64)
        rows = self.neg_entropy - np.einsum("ij,ij->i", self.p, z) + _logsumexp(z)
        return float(rows.mean())


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


class _LayerRun:
    """The float model's hidden states at each layer's input over ``ids``,
    kept so that a trial with one matrix of layer i changed runs only layers
    i.. (half a forward on average); the embedding and lm_head (no layer) run
    from the start."""

    def __init__(self, core: Any, layers: int, ids: np.ndarray) -> None:
        self.core = core
        self.inputs = [core.embed(ids)]
        for layer in range(layers):
            h = self.inputs[-1].copy()
            core.rewind(0)
            core.forward_layers(h, layer, layer + 1)
            self.inputs.append(h)
        self.ids = ids

    def logits_from(self, layer: int) -> np.ndarray:
        h = self.core.embed(self.ids) if layer == 0 else self.inputs[layer].copy()
        self.core.rewind(0)
        self.core.forward_layers(h, layer, len(self.inputs) - 1)
        return self.core.logits(h)


def _shared_key(name: str) -> str | tuple[str, int]:
    """Matrices measured once for many: an MoE layer's experts share a gain
    per role (measuring each of 64 experts would cost 64 forwards)."""
    role, i = role_of(name), layer_of(name)
    return (role, i) if role.startswith("expert") and i is not None else name


def measured_gains(
    src: Path,
    names: list[str],
    proxy_at_rung: Mapping[str, float],
    importance: Mapping[str, np.ndarray],
    calibration: list[Path] | None = None,
) -> dict[str, float]:
    """Gain of every matrix in ``names``, measured for those in
    ``proxy_at_rung`` (their proxy at GAIN_RUNG, which fits them); the others
    (the rung does not fit them) get the median gain of their role."""
    from lowbit.eval.calibration import calibration_ids
    from lowbit.formats.safetensors import Checkpoint
    from lowbit.quant.quantize import quantize
    from lowbit.runtime.model import load

    ch = GAIN_RUNG
    measured: dict[str, float] = {}
    shared: dict[str | tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="lowbit-gains-") as tmp:
        f32 = Path(tmp) / "f32"
        convert(src, f32, "f32", progress=False, quiet=True)
        # The runtime reads the float32 file through a shared memory map, so
        # a matrix overwritten in the file runs quantized in this one model.
        model = load(f32, context_length=GAIN_TOKENS)
        windows, _ = calibration_ids(model.tokenizer, calibration, GAIN_TOKENS)
        run = _LayerRun(model._core, int(model.config["num_hidden_layers"]), windows[0])
        base = _Baseline(run.logits_from(0))
        stored = Checkpoint(f32)  # the float32 model's own file, ours to overwrite
        for name in names:
            key = _shared_key(name)
            if name not in proxy_at_rung:
                continue
            if key not in shared:
                info = stored.info(name)
                view = np.memmap(info.file, np.float32, "r+", info.offset, info.shape)
                original = np.array(view)
                weights = importance.get(name)
                method = ch.method if weights is not None else CALIBRATED_METHODS[ch.method]
                qt = quantize(
                    original, ch.scheme, ch.group_size, method, name=name, importance=weights
                )
                view[...] = qt.dequantize()
                view.flush()
                try:
                    ours = run.logits_from(layer_of(name) or 0)
                finally:
                    view[...] = original
                    view.flush()
                    del view
                shared[key] = base.kld(ours) / max(proxy_at_rung[name], 1e-12)
            measured[name] = shared[key]
    by_role: dict[str, list[float]] = {}
    for n, g in measured.items():
        by_role.setdefault(role_of(n), []).append(g)
    everyone = float(np.median(list(measured.values()))) if measured else 1.0
    return {
        n: measured.get(
            n, float(np.median(by_role[role_of(n)])) if role_of(n) in by_role else everyone
        )
        for n in names
    }


__all__ = ["GAIN_RUNG", "GAIN_TOKENS", "measured_gains"]
