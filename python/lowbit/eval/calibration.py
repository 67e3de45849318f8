"""Calibration statistics: E[x^2] of every linear layer's input, from lowbit's runtime.

The float model (the source converted to float32) runs over the calibration
text, and the core adds up, per input channel j of each input site, the
squares x_j^2 (``Model.collect_input_stats``). ``E[x_j^2]`` weights column j
of the weight matrices that read the site in the calibrated methods ``wmse`` and
``whqq``: the expected squared error of an output from an error d in column j is
``E[x_j^2] d^2`` (the diagonal of X^T X, llama.cpp's "importance matrix").

Default text: the Python language reference's topics, as every CPython ships
them (``pydoc_data.topics``), in sorted order; it shares no text with the
evaluation text (Debian's license texts, ``lowbit.eval.text``), which a test
checks. The statistics are saved as a safetensors file (``save``/``load``), so
that conversions with several presets calibrate once (``--imatrix``).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowbit.conversion.convert import ConvertSummary, convert
from lowbit.conversion.fold import FOLD_METHODS, Fold
from lowbit.eval.text import make_windows, read_text
from lowbit.formats.gguf import is_gguf
from lowbit.formats.safetensors import Checkpoint, CheckpointError, StreamingWriter, TensorSpec
from lowbit.models.tokenizer import TOKENIZER_FILE
from lowbit.quant.recipes import Recipe
from lowbit.quant.schemes import GPTQ
from lowbit.runtime.config import core_tensor
from lowbit.runtime.model import Model, load
from lowbit.util.errors import ArgumentError, LowbitError
from lowbit.util.outdir import check_target

if TYPE_CHECKING:
    from lowbit.eval.gptq import Solved

DEFAULT_TOKENS = 4096
CONTEXT = 512
IMATRIX_SUFFIX = ".imatrix.safetensors"

# The input site each core tensor reads: tensors reading the same activations
# share one (see src/model/input_stats.h).
_SITE_OF = {
    "q": "q",
    "k": "q",
    "v": "q",
    "o": "o",
    "gate": "gate",
    "up": "gate",
    "router": "gate",
    "expert_gate": "gate",
    "expert_up": "gate",
    "shared_gate": "gate",
    "shared_up": "gate",
    "shared_router": "gate",
    "down": "down",
    "expert_down": "expert_down",
    "shared_down": "shared_down",
    "lm_head": "lm_head",
}


class CalibrationError(LowbitError):
    """Calibration text or statistics that cannot be used."""


class NoTokenizerError(CalibrationError):
    """The model has no tokenizer to turn calibration text into tokens."""


def default_calibration_text() -> tuple[str, str]:
    """(text, label) of the default calibration text."""
    from pydoc_data.topics import topics  # part of CPython's standard library

    return "\n\n".join(topics[k] for k in sorted(topics)), "pydoc_data.topics"


def site_name(key_name: str) -> str | None:
    """The input site (a core weight name such as ``L3.q``) that the core
    tensor named ``key_name`` (``L3.k``, ``L0.E2.expert_down``) reads; None
    for tensors that read no activations (the embedding)."""
    prefix, _, tensor = key_name.rpartition(".")
    site = _SITE_OF.get(tensor)
    if site is None:
        return None
    if site == "expert_down":
        return key_name
    layer = prefix.split(".")[0]
    return f"{layer}.{site}" if layer else site


@dataclass(frozen=True)
class Imatrix:
    """Per checkpoint tensor name (the linear layers that read activations):
    E[x^2] of its input channels (float32 [in_features]) and the tokens that
    mean is over. Tensors reading one site share its vector."""

    mean_sq: dict[str, np.ndarray]
    rows: dict[str, int]
    tokens: int
    text: str
    # Per matrix, once a bit budget measured them (lowbit.eval.gains): saved
    # with the statistics, so another budget on the same model skips that.
    gains: dict[str, float] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Written atomically (``PATH.partial``, then renamed)."""
        sites = sorted(self.mean_sq)
        specs = []
        for s in sites:
            specs += [
                TensorSpec(f"{s}.mean_sq", np.dtype(np.float32), self.mean_sq[s].shape),
                TensorSpec(f"{s}.rows", np.dtype(np.int64), (1,)),
            ]
        specs += [TensorSpec(f"{n}.gain", np.dtype(np.float32), (1,)) for n in sorted(self.gains)]
        meta = {"tokens": str(self.tokens), "text": self.text, "what": "lowbit imatrix"}
        tmp = path.with_name(path.name + ".partial")
        try:
            with StreamingWriter(tmp, specs, meta) as w:
                for s in sites:
                    w.write(f"{s}.mean_sq", self.mean_sq[s])
                    w.write(f"{s}.rows", np.array([self.rows[s]], np.int64))
                for n in sorted(self.gains):
                    w.write(f"{n}.gain", np.array([self.gains[n]], np.float32))
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Imatrix:
        """Read through lowbit's validating safetensors reader; a bad file
        raises CalibrationError naming it and the tensor."""
        try:
            ck = Checkpoint(path)
            mean_sq, rows, gains = {}, {}, {}
            for name in ck.names():
                site, _, what = name.rpartition(".")
                if what == "mean_sq":
                    v = ck.get(name)
                    if v.dtype != np.float32 or v.ndim != 1:
                        raise CalibrationError(f"{path}: {name}: expected float32 [channels]")
                    if not np.isfinite(v).all() or (v < 0).any():
                        raise CalibrationError(f"{path}: {name}: negative, NaN or Inf values")
                    mean_sq[site] = v
                elif what == "rows":
                    r = ck.get(name)
                    if r.dtype != np.int64 or r.shape != (1,) or r[0] < 1:
                        raise CalibrationError(f"{path}: {name}: expected int64 [1], at least 1")
                    rows[site] = int(r[0])
                elif what == "gain":
                    g = ck.get(name)
                    if (
                        g.dtype != np.float32
                        or g.shape != (1,)
                        or not (np.isfinite(g[0]) and g[0] >= 0)
                    ):
                        raise CalibrationError(
                            f"{path}: {name}: expected float32 [1], finite, >= 0"
                        )
                    gains[site] = float(g[0])
                else:
                    raise CalibrationError(f"{path}: {name}: not an imatrix tensor")
        except CheckpointError as e:
            raise CalibrationError(str(e)) from None
        if not mean_sq or set(mean_sq) != set(rows):
            raise CalibrationError(f"{path}: not a lowbit imatrix (mean_sq and rows per site)")
        return cls(mean_sq, rows, max(rows.values()), str(path), gains)


def calibration_ids(
    tokenizer: object, files: list[Path] | None, tokens: int
) -> tuple[np.ndarray, str]:
    """Windows [n, CONTEXT] of the calibration text's first ``tokens`` tokens."""
    if files:
        text, label = read_text(files), ", ".join(f.name for f in files)
    else:
        text, label = default_calibration_text()
    ids = tokenizer.encode(text)  # type: ignore[attr-defined]
    context = min(CONTEXT, tokens)
    return make_windows(ids, context, tokens, label).windows, label


def calibrate(
    src: str | Path, files: list[Path] | None = None, tokens: int = DEFAULT_TOKENS
) -> Imatrix:
    """Run the float32 model of checkpoint ``src`` over the calibration text
    (``files``, or the default text) and return the statistics."""
    src = Path(src)
    with tempfile.TemporaryDirectory(prefix="lowbit-calibrate-") as tmp:
        model_dir = Path(tmp) / "f32"
        convert(src, model_dir, preset="f32", progress=False)
        model = load(model_dir, context_length=CONTEXT)
        if model.tokenizer is None:
            raise NoTokenizerError(f"{src}: no tokenizer.json to tokenize the calibration text")
        windows, label = calibration_ids(model.tokenizer, files, tokens)
        core = model._core
        core.collect_input_stats(True)
        try:
            for w in windows:
                model.forward(w)
        finally:
            core.collect_input_stats(False)
        imatrix = per_tensor(model, int(windows.size), label)
    if not imatrix.mean_sq:
        raise CalibrationError(f"{src}: calibration saw no linear layer inputs")
    return imatrix


def per_tensor(model: Model, tokens: int, text: str) -> Imatrix:
    """The core's collected sums per input site, as E[x^2] per checkpoint
    tensor of ``model`` (the tensors reading one site share its vector)."""
    stats = {str(k): v for k, v in model._core.input_stats().items()}
    mean_sq, rows = {}, {}
    for w in model._manifest.weights:
        if len(w.shape) != 2:
            continue
        place = core_tensor(w.name, model.family)
        site = None if place is None or place.key is None else site_name(place.key.name)
        if site is not None and site in stats:
            sums, r = stats[site]
            mean_sq[w.name] = (sums / max(1, r)).astype(np.float32)
            rows[w.name] = int(r)
    return Imatrix(mean_sq, rows, tokens, text)


def _has_tokenizer(src: Path) -> bool:
    """Whether ``src`` (a checkpoint directory, a safetensors or GGUF file)
    comes with a tokenizer that calibration can use; a GGUF file carries one."""
    if src.is_file():
        return is_gguf(src) or (src.parent / TOKENIZER_FILE).is_file()
    return (src / TOKENIZER_FILE).is_file()


def _uncalibrated(
    src: str | Path,
    out: Path,
    preset: str,
    rules: list[str] | tuple[str, ...],
    quiet: bool,
    budgeted: bool,
    fold: str,
    kwargs: dict[str, Any],
) -> ConvertSummary:
    """No text can be run through a model without a tokenizer: the
    calibrated methods use their plain searches and AWQ gives way to SINQ,
    said once here and in every tensor's manifest entry. A bit budget cannot
    do without the statistics."""
    if budgeted:
        raise NoTokenizerError(
            f"{src}: --target-bpw and --max-kld measure sensitivity on calibration statistics, "
            "and this model has no tokenizer for calibration text; give --imatrix FILE"
        )
    if not quiet:
        print(
            f"lowbit: {src}: no tokenizer to tokenize calibration text; "
            "calibrated methods fall back to their uncalibrated searches"
            + (" and SINQ's scales replace AWQ's" if fold == "awq" else ""),
            file=sys.stderr,
        )
    fold = "sinq" if fold == "awq" else fold
    return convert(src, out, preset, rules, fold=_convert_fold(fold), **kwargs)


def _convert_fold(fold: str) -> str | None:
    """What convert takes for a fold that needs no calibration."""
    return None if fold == "none" else fold


def convert_calibrated(
    src: str | Path,
    out: str | Path,
    preset: str = "q4",
    rules: list[str] | tuple[str, ...] = (),
    calibration: list[Path] | None = None,
    calibration_tokens: int = DEFAULT_TOKENS,
    imatrix: str | Path | None = None,
    target_bpw: float | None = None,
    max_kld: float | None = None,
    *,
    fold: str | None = None,
    force: bool = False,
    progress: bool | None = None,
    fmt: str = "lowbit",
    quiet: bool = False,
    **kwargs: Any,
) -> ConvertSummary:
    """``convert``, with the calibration statistics its recipe needs.

    With ``imatrix`` (a file saved by an earlier run) the statistics are read
    from it; otherwise, when the recipe uses a calibrated method, they are
    computed (``calibrate``: ``calibration`` files or the default text,
    ``calibration_tokens`` tokens) and saved beside OUT as
    ``OUT.imatrix.safetensors``, for the next conversion to reuse. A source
    without a tokenizer cannot be calibrated on text: its calibrated methods
    fall back to their plain searches (stderr and the manifest say so). The
    other arguments are convert's.

    ``target_bpw``: choose each matrix's scheme by measured sensitivity so
    that the matrices (embedding included) average at most that many bits
    per weight (``lowbit.eval.budget``); the choices become ``--scheme`` rules
    after the given ones, printed and recorded in the manifest.

    ``max_kld``: the smallest such budget whose model has a mean KL
    divergence of at most that against the float baseline, measured as
    ``lowbit validate`` measures it (``lowbit.eval.max_kld``; needs torch
    and transformers for the baseline).

    ``fold``: input-channel scales folded into the model before quantizing
    (``lowbit.conversion.fold``): ``awq`` (searched on calibration
    activations, in GPTQ's layer-by-layer pass), ``sinq`` (from the weights
    alone) or ``none``; default the preset's, and ``none`` with a budget (its
    sensitivities are measured on the unfolded matrices).
    """
    kwargs.update(force=force, progress=progress, fmt=fmt, quiet=quiet)
    out = Path(out)
    recipe = Recipe.from_args(preset, list(rules))
    if target_bpw is not None and max_kld is not None:
        raise ArgumentError("give --target-bpw or --max-kld, not both")
    if target_bpw is None and max_kld is None:
        target_bpw = recipe.preset.target_bpw  # a budget preset
    budgeted = target_bpw is not None or max_kld is not None
    if fold is None:
        fold = "none" if budgeted else recipe.preset.fold
    if fold not in FOLD_METHODS:
        raise ArgumentError(f"unknown fold {fold!r}; choose from {', '.join(FOLD_METHODS)}")
    needs_stats = recipe.calibrated or budgeted or fold == "awq"
    if imatrix is None and not needs_stats:
        return convert(src, out, preset, rules, fold=_convert_fold(fold), **kwargs)
    if imatrix is None and not calibration and not _has_tokenizer(Path(src)):
        return _uncalibrated(src, out, preset, rules, quiet, budgeted, fold, kwargs)
    check_target(out, force)  # before the long calibration
    if imatrix is not None:
        stats, saved = Imatrix.load(Path(imatrix)), Path(imatrix)
    else:
        try:
            stats = calibrate(src, calibration, calibration_tokens)
        except NoTokenizerError:
            if calibration:
                raise  # the user's own text cannot be read by this model
            return _uncalibrated(src, out, preset, rules, quiet, budgeted, fold, kwargs)
        saved = out.with_name(out.name + IMATRIX_SUFFIX)
        stats.save(saved)
    about: dict[str, Any] = {
        "imatrix": str(saved.resolve()),
        "tokens": stats.tokens,
        "text": stats.text,
    }
    if budgeted:
        budget = (target_bpw, max_kld)
        chosen = _budget(src, out, preset, rules, stats, about, calibration, *budget, kwargs)
        rules = [*rules, *chosen]
    solved, fold = _layer_pass(
        src, Recipe.from_args(preset, list(rules)), calibration, calibration_tokens, fold, quiet
    )
    if solved.tensors:
        from lowbit.quant.gptq import GPTQ_DAMP

        about["gptq"] = {
            "matrices": len(solved.tensors),
            "damp": GPTQ_DAMP,
            "tokens": calibration_tokens,
        }
    return convert(
        src,
        out,
        preset,
        rules,
        importance=stats.mean_sq,
        calibration=about,
        solved=solved.tensors,
        fold=fold,
        **kwargs,
    )


def _layer_pass(
    src: str | Path,
    recipe: Recipe,
    calibration: list[Path] | None,
    tokens: int,
    fold: str,
    quiet: bool,
) -> tuple[Solved, Fold | str | None]:
    """The layer-by-layer pass (lowbit.eval.gptq) when the recipe uses GPTQ or
    the fold is AWQ: (its GPTQ results, the fold for convert). Without a
    tokenizer for the text (given --imatrix), GPTQ's matrices get their
    weighted search and AWQ gives way to SINQ, said once here and in the
    manifest."""
    from lowbit.eval.gptq import Solved, solve

    awq = fold == "awq"
    if not recipe.uses(GPTQ) and not awq:
        return Solved({}), _convert_fold(fold)
    try:
        solved = solve(src, recipe, calibration, tokens, awq=awq)
    except NoTokenizerError:
        if calibration:
            raise  # the user's own text cannot be read by this model
        if not quiet:
            print(
                f"lowbit: {src}: no tokenizer to tokenize calibration text for GPTQ and AWQ; "
                "GPTQ's matrices get the weighted search of their scheme"
                + (", and SINQ's scales replace AWQ's" if awq else ""),
                file=sys.stderr,
            )
        return Solved({}), "sinq" if awq else _convert_fold(fold)
    return solved, solved.fold if awq else _convert_fold(fold)


def _budget(
    src: str | Path,
    out: Path,
    preset: str,
    rules: list[str] | tuple[str, ...],
    stats: Imatrix,
    about: dict[str, Any],
    calibration: list[Path] | None,
    target_bpw: float | None,
    max_kld: float | None,
    kwargs: dict[str, Any],
) -> list[str]:
    """The rules that ``target_bpw`` or ``max_kld`` choose (convert_calibrated's
    arguments); records the budget in ``about``. Gains measured here are saved
    with the statistics beside OUT, for the next budget to reuse."""
    from lowbit.eval.budget import describe_rules, measure_sensitivity

    sens = measure_sensitivity(src, stats.mean_sq, calibration, gains=stats.gains or None)
    if not stats.gains:
        saved = out.with_name(out.name + IMATRIX_SUFFIX)
        replace(stats, gains=sens.gains).save(saved)
        about["imatrix"] = str(saved.resolve())
    if target_bpw is not None:
        chosen, about["budget"] = sens.rules(target_bpw)
        flag = ""
    else:
        from lowbit.eval.max_kld import smallest_within

        def trial(extra: list[str], where: Path) -> None:
            trial_kwargs = {**kwargs, "force": True, "progress": False, "quiet": True}
            convert(src, where, preset, [*rules, *extra], importance=stats.mean_sq, **trial_kwargs)

        out.parent.mkdir(parents=True, exist_ok=True)
        chosen, about["budget"] = smallest_within(sens, Path(src), max_kld, trial, out.parent)
        b = about["budget"]
        flag = f"--max-kld {max_kld} (mean KLD {b['kld_mean']:.4g} on {b['predictions']} tokens)"
    if not kwargs.get("quiet"):
        print(describe_rules(chosen, about["budget"], flag), file=sys.stderr)
    return chosen


__all__ = ["DEFAULT_TOKENS", "CalibrationError", "Imatrix", "calibrate", "convert_calibrated"]
