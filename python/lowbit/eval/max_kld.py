"""``--max-kld K``: the smallest recipe whose model stays within a mean KL
divergence of K against the float baseline.

The sensitivities are measured once (``lowbit.eval.budget``); each budget then
has one recipe. Bits per weight against measured KLD is monotone along the
allocator's path up to noise, so a bisection over the budget finds the
smallest that meets K in a handful of trial conversions. Each trial is measured
exactly as ``lowbit validate`` measures (same evaluation text, windows and
float32 transformers baseline, whose logits are cached after the first trial),
so the chosen model passes ``lowbit validate`` with ``max_kld_mean = K``: the
conversion and the CI tolerance meet.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbit.eval.budget import Sensitivity
from lowbit.eval.text import DEFAULT_CONTEXT, DEFAULT_TOKENS
from lowbit.util.errors import LowbitError

# Stop bisecting when the bracket is this narrow (bits per weight over the
# matrices): one step of a 2-D weight between ladder rungs moves a 135M model
# by about 0.01, below the KLD's own noise at 1024 tokens.
BPW_RESOLUTION = 0.05
MAX_TRIALS = 10


class MaxKldError(LowbitError):
    """No recipe on the ladder meets the requested KL divergence."""


def bisect_budget(
    lo: float, hi: float, kld_at: Callable[[float], float], max_kld: float
) -> tuple[float, list[tuple[float, float]]]:
    """The smallest budget in [lo, hi] (to BPW_RESOLUTION) whose ``kld_at`` is
    at most ``max_kld``, and every (budget, KLD) tried. ``hi`` is tried first:
    when even it is over, nothing is."""
    trials: list[tuple[float, float]] = []

    def passes(b: float) -> bool:
        k = kld_at(b)
        trials.append((b, k))
        return k <= max_kld

    if not passes(hi):
        raise MaxKldError(
            f"--max-kld {max_kld}: the largest recipe ({hi:.3f} bits per weight) has mean KLD "
            f"{trials[-1][1]:.4g}; no recipe on the ladder is within it"
        )
    if passes(lo):
        return lo, trials
    while hi - lo > BPW_RESOLUTION and len(trials) < MAX_TRIALS:
        mid = (lo + hi) / 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi, trials


def smallest_within(
    sens: Sensitivity,
    src: Path,
    max_kld: float,
    trial_convert: Callable[[list[str], Path], None],
    work: Path,
    tokens: int = DEFAULT_TOKENS,
    context: int = DEFAULT_CONTEXT,
) -> tuple[list[str], dict[str, Any]]:
    """(rules, summary) of the smallest budget of ``sens`` (the sensitivities
    of ``src``'s matrices) whose model has mean KLD at most ``max_kld``.
    ``trial_convert(rules, out)`` writes a trial model; trials go to a
    temporary directory under ``work`` and are removed."""
    from lowbit.eval.validate import baseline_logits, evaluation_windows, model_metrics
    from lowbit.sources.default_model import cache_dir

    windows = evaluation_windows(src, src, None, context, tokens)
    base = baseline_logits(src, windows, cache_dir() / "baselines")
    measured: dict[tuple[str, ...], float] = {}  # budgets that give one recipe: measured once
    with tempfile.TemporaryDirectory(dir=work, prefix=".lowbit-max-kld-") as tmp:

        def kld_at(bpw: float) -> float:
            rules = tuple(sens.rules(bpw)[0])
            if rules not in measured:
                trial = Path(tmp) / f"trial-{len(measured)}"
                trial_convert(list(rules), trial)
                measured[rules] = float(model_metrics(trial, windows, base)["kld_mean"])
                shutil.rmtree(trial)
            return measured[rules]

        lo, hi = sens.bpw_range()
        chosen, trials = bisect_budget(lo, hi, kld_at, max_kld)
    rules, summary = sens.rules(chosen)
    summary.update(
        max_kld=max_kld,
        kld_mean=dict(trials)[chosen],
        text=windows.source,
        predictions=windows.predictions,
        trials=[{"target_bpw": b, "kld_mean": k} for b, k in trials],
    )
    return rules, summary


__all__ = ["BPW_RESOLUTION", "MaxKldError", "bisect_budget", "smallest_within"]
