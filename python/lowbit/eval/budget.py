"""``--target-bpw``: measure each matrix's sensitivity and spend the bit budget
where it lowers the estimated loss most (``lowbit.quant.allocate``).

Estimated loss of quantizing matrix W alone with a candidate scheme: a
proxy, the relative noise it adds to the layer's output,
``sum_ij E[x_j^2] (W_ij - W^_ij)^2 / sum_ij E[x_j^2] W_ij^2``, with E[x^2] from
calibration (1 for the embedding, whose rows are looked up, not multiplied),
times the matrix's gain, measured (``lowbit.eval.gains``): the estimate is the
model's mean KL divergence from this matrix alone. Summed over matrices (on
SmolLM2-135M the single-matrix KLDs at 4 bits add up to about the KLD of all of
them quantized together). The result is a list of ``--scheme`` rules, one per matrix, so the
recipe is printed, recorded in the manifest and reproducible.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lowbit.formats.safetensors import Checkpoint
from lowbit.models.families import role_of
from lowbit.quant.allocate import Candidate, allocate
from lowbit.quant.quantize import quantize
from lowbit.quant.recipes import FLOAT32_ROLES, Choice
from lowbit.quant.schemes import CALIBRATED_METHODS, fitting_group_sizes
from lowbit.util.errors import ArgumentError

# The ladder each matrix may take, smallest first (bits per weight with
# float16 scales and zero points): 3.0, 3.5, 4.5, 5.0, 5.5, 6.5, 8.5. The 5-
# and 6-bit rungs fill the gap that left Gemma 3 270M's budget at Q4_K_M's
# size with its 262144 x 640 embedding at 5 bits and every linear layer at
# 8.5 (README, Quality).
LADDER = (
    Choice("uint2", 32, "whqq"),
    Choice("uint3", 64, "whqq"),
    Choice("uint4", 64, "whqq"),
    Choice("uint4", 32, "whqq"),
    Choice("uint5", 64, "whqq"),
    Choice("uint6", 64, "whqq"),
    Choice("int8", 32),
)


def _candidates(x: np.ndarray, importance: np.ndarray | None, name: str) -> list[Candidate]:
    m = np.ones(x.shape[1], np.float32) if importance is None else importance
    x64 = x.astype(np.float64)
    signal = float((m * x64**2).sum()) or 1.0
    out = []
    for c in LADDER:
        if c.group_size not in fitting_group_sizes(x.shape[1]):
            continue
        method = c.method
        if method in CALIBRATED_METHODS and importance is None:
            method = CALIBRATED_METHODS[method]
        w = importance if method in CALIBRATED_METHODS else None
        qt = quantize(x, c.scheme, c.group_size, method, name=name, importance=w)
        noise = float((m * (x64 - qt.dequantize()) ** 2).sum())
        out.append(
            Candidate(
                Choice(c.scheme, c.group_size, method), qt.bits_per_weight * x.size, noise / signal
            )
        )
    return out


@dataclass(frozen=True)
class Sensitivity:
    """Every matrix's candidate schemes with their size and estimated loss:
    measured once, then allocated for any number of budgets."""

    source: str
    candidates: dict[str, list[Candidate]]  # loss: gain x proxy
    params: int  # weights in the matrices the budget covers
    gains: dict[str, float] = field(default_factory=dict)  # lowbit.eval.gains; 1 if absent

    def bpw_range(self) -> tuple[float, float]:
        """(smallest, largest) bits per weight a recipe of these candidates has."""
        lo = sum(min(c.bits for c in v) for v in self.candidates.values())
        hi = sum(max(c.bits for c in v) for v in self.candidates.values())
        return lo / self.params, hi / self.params

    def rules(self, target_bpw: float) -> tuple[list[str], dict[str, float]]:
        """(``--scheme`` rules, one per matrix, and a summary) choosing every
        matrix's scheme so that they average at most ``target_bpw`` bits per
        weight (codes, scales and zero points; the embedding included)."""
        smallest = self.bpw_range()[0]
        if target_bpw < smallest - 1e-9:
            raise ArgumentError(
                f"--target-bpw {target_bpw}: below the smallest recipe "
                f"({smallest:.3f} bits per weight)"
            )
        picked = allocate(self.candidates, target_bpw * self.params)
        rules = []
        for name, c in picked.items():
            ch = c.choice
            rules.append(f"^{re.escape(name)}$={ch.scheme}:{ch.group_size}:{ch.method}")
        summary = {
            "target_bpw": target_bpw,
            "bpw": sum(c.bits for c in picked.values()) / self.params,
            "estimated_loss": sum(c.loss for c in picked.values()),
        }
        return rules, summary


def measure_sensitivity(
    src: str | Path,
    importance: Mapping[str, np.ndarray],
    calibration: list[Path] | None = None,
    gains: Mapping[str, float] | None = None,
    measure: bool = True,
) -> Sensitivity:
    """Quantize every 2-D weight of ``src`` alone at each rung of LADDER that
    fits it and estimate its loss: the proxy (module docstring) times the
    matrix's gain: ``gains`` given (saved by an earlier budget), else measured
    (``lowbit.eval.gains``, on ``calibration`` text or the default); with
    ``measure=False`` and no gains, the bare proxy."""
    ck = Checkpoint(src)
    cands: dict[str, list[Candidate]] = {}
    params = 0
    for name in ck.names():
        shape = ck.info(name).shape
        if (
            len(shape) != 2
            or role_of(name) in FLOAT32_ROLES
            or role_of(name) in ("router", "shared_router")
        ):
            continue
        x = np.ascontiguousarray(ck.get_float(name), np.float32)
        found = _candidates(x, importance.get(name), name)
        if found:
            cands[name] = found
            params += x.size
    if not cands:
        raise ArgumentError(f"{src}: no matrices to spend a bit budget on")
    if gains is not None and set(gains) >= set(cands):
        g = {n: gains[n] for n in cands}
    elif not measure:
        return Sensitivity(str(src), cands, params)
    else:
        from lowbit.eval.gains import GAIN_RUNG, measured_gains

        rung = (GAIN_RUNG.scheme, GAIN_RUNG.group_size)
        at_rung = {
            n: c.loss
            for n, v in cands.items()
            for c in v
            if (c.choice.scheme, c.choice.group_size) == rung
        }
        g = measured_gains(Path(src), list(cands), at_rung, importance, calibration)
    scaled = {n: [replace(c, loss=c.loss * g[n]) for c in v] for n, v in cands.items()}
    return Sensitivity(str(src), scaled, params, g)


def describe_rules(rules: list[str], summary: dict[str, float], flag: str = "") -> str:
    """How many matrices got each scheme, and the bits reached; ``flag``
    names the option that chose them (default: the target bits)."""
    counts: dict[str, int] = {}
    for r in rules:
        spec = r.rpartition("=")[2]
        counts[spec] = counts.get(spec, 0) + 1
    parts = ", ".join(f"{n} x {spec}" for spec, n in sorted(counts.items()))
    flag = flag or f"--target-bpw {summary['target_bpw']}"
    return (
        f"lowbit convert: {flag}: {parts}; {summary['bpw']:.3f} bits per weight over the "
        f"matrices, estimated mean KLD {summary['estimated_loss']:.3g} "
        "(every rule is in the manifest's recipe)"
    )


__all__ = ["LADDER", "Sensitivity", "describe_rules", "measure_sensitivity"]
