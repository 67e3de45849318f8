"""Tolerances for validation: how much quantization may cost, read from TOML.

File format (every table optional; unknown keys are errors)::

    [weights.max_rel_error]   # relative Frobenius error by stored bits per code
    8 = 0.02
    4 = 0.10

    [model]                   # against the PyTorch baseline on the evaluation text
    max_delta_ppl_pct = 3.0   # perplexity increase, percent
    max_kld_mean = 0.01       # mean KL divergence (nats per token)
    max_kld_p99 = 0.1         # 99th percentile of the per-token KL divergence
    min_same_top = 0.95       # share of positions whose top token is unchanged
    max_delta_logit = 5.0     # largest |logit difference|

    [presets.q4.model]        # for models converted with that preset: replaces keys above
    max_kld_mean = 0.05

Defaults: the reference documents' weight table (8-bit 2%, 4-bit 10%, 2-bit 20%,
1-bit 50%; float16/bfloat16 0.5%, float32 exact), with 3, 5 and 6 bits between
their neighbours (14%, 6.7%, 4.5%), no model-level limits.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit.util.errors import LowbitError

# By stored bits: the reference documents' table, plus float16/bfloat16
# (rounding: at most 2^-9 relative, bfloat16) and float32 (exact copies). The
# table has no 3, 5 or 6 bits: theirs are geometric interpolations of it
# (3: sqrt(20% x 10%); 5 and 6: a quarter and half of the way from 4 to 8
# bits at the 2-to-4-bit rate, 10% x 0.2^(1/4) and 10% x 0.2^(1/2)).
DEFAULT_WEIGHT_REL_ERROR = {
    8: 0.02,
    6: 0.045,
    5: 0.067,
    4: 0.10,
    3: 0.14,
    2: 0.20,
    1: 0.50,
    16: 0.005,
    32: 1e-6,
}

# model metric key -> (report field, "max" or "min")
MODEL_LIMITS = {
    "max_delta_ppl_pct": ("delta_ppl_pct", "max"),
    "max_kld_mean": ("kld_mean", "max"),
    "max_kld_p99": ("kld_p99", "max"),
    "min_same_top": ("same_top", "min"),
    "max_delta_logit": ("max_delta_logit", "max"),
}


class ToleranceError(LowbitError):
    """A tolerances file that cannot be read or has unknown keys."""


@dataclass
class Tolerances:
    weight_rel_error: dict[int, float] = field(
        default_factory=lambda: dict(DEFAULT_WEIGHT_REL_ERROR)
    )
    model: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": {"max_rel_error": {str(k): v for k, v in self.weight_rel_error.items()}},
            "model": dict(self.model),
        }


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ToleranceError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _unknown(keys: set[str], known: set[str] | list[str], where: str) -> None:
    bad = sorted(set(keys) - set(known))
    if bad:
        raise ToleranceError(
            f"{where}: unknown key {bad[0]!r}; expected one of {', '.join(sorted(known))}"
        )


def _apply(tol: Tolerances, data: dict[str, Any], where: str) -> None:
    _unknown(set(data), {"weights", "model"}, where)
    weights = data.get("weights", {})
    if not isinstance(weights, dict):
        raise ToleranceError(f"{where}: [weights] must be a table")
    _unknown(set(weights), {"max_rel_error"}, f"{where} [weights]")
    table = weights.get("max_rel_error", {})
    if not isinstance(table, dict):
        raise ToleranceError(f"{where}: [weights.max_rel_error] must be a table of bits = limit")
    for bits, value in table.items():
        widths = sorted(DEFAULT_WEIGHT_REL_ERROR)
        if bits not in {str(b) for b in widths}:
            raise ToleranceError(
                f"{where} [weights.max_rel_error]: key {bits!r} is not a bit width "
                f"({', '.join(map(str, widths))})"
            )
        tol.weight_rel_error[int(bits)] = _number(value, f"{where} weights.max_rel_error.{bits}")
    model = data.get("model", {})
    if not isinstance(model, dict):
        raise ToleranceError(f"{where}: [model] must be a table")
    _unknown(set(model), list(MODEL_LIMITS), f"{where} [model]")
    for key, value in model.items():
        tol.model[key] = _number(value, f"{where} model.{key}")


def load_tolerances(path: str | Path | None = None, preset: str | None = None) -> Tolerances:
    """Tolerances from a TOML file (defaults when ``path`` is None), with the
    ``[presets.<preset>]`` table applied on top when there is one."""
    tol = Tolerances()
    if path is None:
        return tol
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ToleranceError(f"{path}: no such tolerances file") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ToleranceError(f"{path}: not valid TOML ({e})") from None
    presets = data.pop("presets", {})
    if not isinstance(presets, dict):
        raise ToleranceError(f"{path}: [presets] must be a table of preset tables")
    _apply(tol, data, str(path))
    for name, table in presets.items():
        if not isinstance(table, dict):
            raise ToleranceError(f"{path}: [presets.{name}] must be a table")
        scratch = Tolerances()
        _apply(scratch, table, f"{path} [presets.{name}]")  # typos caught for every preset
        if name == preset:
            _apply(tol, table, f"{path} [presets.{name}]")
    return tol


def violations(report: dict[str, Any], tol: Tolerances) -> list[str]:
    """What in a validation report (``ValidationReport.as_dict()``) exceeds ``tol``."""
    out = []
    for w in report.get("weights", []):
        limit = tol.weight_rel_error.get(w["bits"])
        if limit is not None and w["rel_error"] > limit:
            out.append(
                f"weight {w['name']} ({w['scheme']}): relative error {w['rel_error']:.4g} "
                f"> {limit:g} allowed for {w['bits']}-bit"
            )
    model = report.get("model") or {}
    for key, limit in tol.model.items():
        metric, kind = MODEL_LIMITS[key]
        if metric not in model:
            out.append(f"model {metric}: not measured, but {key} = {limit:g} is set")
            continue
        value = model[metric]
        if (kind == "max" and value > limit) or (kind == "min" and value < limit):
            word = "above" if kind == "max" else "below"
            out.append(f"model {metric} = {value:.6g} is {word} the tolerance {key} = {limit:g}")
    return out
