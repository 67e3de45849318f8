"""GPTQ over a whole model, layer by layer, on lowbit's own runtime.

Each transformer layer is quantized on the inputs that the already-quantized
layers before it produce, as GPTQ's paper does: the calibration windows are
embedded once, and for each layer in turn

1. the float layer runs over the windows' hidden states while the core adds
   up ``X^T X`` of each of its input sites (``collect_input_stats(gram=True)``:
   q/k/v share one, gate/up another, then o and down, and each expert's down);
2. every matrix of the layer whose plan says ``gptq`` is quantized with the
   Hessian of its site (``lowbit.quantize(..., method="gptq")``), and its
   reconstruction overwrites the float32 working copy in place;
3. the layer runs again, now quantized, and its outputs are the next layer's
   inputs.

With AWQ (``awq=True``), step 2 starts with each of the layer's inputs: the
input-channel scales that make its matrices' quantization error on the
layer's output smallest are searched on X^T X and folded into the working
copy (``lowbit.conversion.fold``), and GPTQ then quantizes the folded
matrices with the folded Hessians.

That is two passes of each layer over the calibration tokens, about two
forwards of the float model, plus the Gram products. Matrices outside the
layers (the lm_head) and fused 3-D expert stacks get no Hessian here; the
conversion gives them their scheme's weighted search instead and says so.
The results are held in memory until written (about the output's size).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowbit.conversion.convert import convert
from lowbit.conversion.fold import Fold, Site, sites
from lowbit.eval.calibration import CONTEXT, NoTokenizerError, calibration_ids, site_name
from lowbit.formats.gguf import is_gguf
from lowbit.formats.safetensors import Checkpoint
from lowbit.models.config import read_config
from lowbit.models.families import family_of
from lowbit.quant.gptq import HessianFactor
from lowbit.quant.quantize import QuantizedTensor, quantize
from lowbit.quant.recipes import Recipe, TensorPlan
from lowbit.quant.schemes import GPTQ, get_scheme
from lowbit.runtime.config import core_tensor
from lowbit.runtime.model import load


@dataclass(frozen=True)
class _Target:
    """A matrix GPTQ quantizes: its plan and the input site it reads."""

    plan: TensorPlan
    site: str  # the core's name of its input site, "L3.q"
    layer: int


def _targets(ck: Checkpoint, recipe: Recipe) -> list[_Target]:
    """The matrices of ``ck`` (a checkpoint with its config.json) that GPTQ
    quantizes under ``recipe``."""
    config = ck.path / "config.json" if ck.path.is_dir() else ck.path.parent / "config.json"
    family = family_of(read_config(config)).name
    out = []
    for name in ck.names():
        plan = recipe.plan(name, ck.info(name).shape)
        if plan.choice.method != GPTQ or len(plan.shape) != 2:
            continue
        place = core_tensor(name, family)
        if place is None or place.key is None or place.layer < 0:
            continue
        site = site_name(place.key.name)
        if site is not None:
            out.append(_Target(plan, site, place.layer))
    return out


@dataclass
class Solved:
    """What the layer-by-layer pass found: GPTQ results by checkpoint name,
    and the AWQ scales folded into the model (None without AWQ)."""

    tensors: dict[str, QuantizedTensor]
    fold: Fold | None = None


def solve(
    src: str | Path,
    recipe: Recipe,
    files: list[Path] | None,
    tokens: int,
    awq: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Solved:
    """The GPTQ result of every matrix of ``src`` whose plan under ``recipe``
    says ``gptq`` and that a transformer layer reads, by checkpoint name;
    calibrated on ``files`` (or the default text), ``tokens`` tokens. With
    ``awq``, each layer's input-channel scales are searched first (AWQ, on
    the layer's X^T X) and folded in, and GPTQ quantizes the folded matrices.
    ``progress(done, total)`` is called after each layer. NoTokenizerError
    when there is work but no tokenizer to read the text."""
    src = Path(src)
    if not awq and not is_gguf(src) and not _targets(Checkpoint(src), recipe):
        return Solved({})  # before the float32 copy (a GGUF file is imported first)
    with tempfile.TemporaryDirectory(prefix="lowbit-gptq-") as tmp:
        f32 = Path(tmp) / "f32"
        convert(src, f32, "f32", progress=False, quiet=True)
        stored = Checkpoint(f32)
        targets = _targets(stored, recipe)
        config = read_config(f32 / "config.json")
        layer_sites: dict[int, list[Site]] = {}
        if awq:
            for site in sites({n: stored.info(n).shape for n in stored.names()}, config):
                layer_sites.setdefault(int(site.name[1:].split(".")[0]), []).append(site)
        if not targets and not layer_sites:
            return Solved({})
        model = load(f32, context_length=CONTEXT)
        if model.tokenizer is None:
            raise NoTokenizerError(f"{src}: no tokenizer.json to tokenize the calibration text")
        windows, _ = calibration_ids(model.tokenizer, files, tokens)
        by_layer: dict[int, list[_Target]] = {}
        for t in targets:
            by_layer.setdefault(t.layer, []).append(t)
        hidden = [model._core.embed(w) for w in windows]
        last = max([*by_layer, *layer_sites])
        out = Solved({}, Fold("awq", family_of(config).norm_plus_one) if awq else None)
        for layer in range(last + 1):
            if layer in by_layer or layer in layer_sites:
                grams = _layer_grams(model, hidden, layer)
                if out.fold is not None:
                    for site in _search_order(layer_sites.get(layer, [])):
                        _fold_awq(stored, site, grams, recipe, model.family, out.fold)
                factors: dict[str, HessianFactor] = {}
                for t in by_layer.get(layer, []):
                    if t.site not in grams:
                        continue  # no token reached it (an expert never routed to)
                    if t.site not in factors:
                        factors[t.site] = HessianFactor.of(grams[t.site], name=t.plan.name)
                    out.tensors[t.plan.name] = _quantize(stored, t, factors[t.site])
            # The runtime reads the float32 file through a shared read-only
            # memory map, so the layer just overwritten runs quantized.
            if layer < last:
                _run_layer(model, hidden, layer)
            if progress is not None:
                progress(layer + 1, last + 1)
        return out


# AWQ's grid of exponents a for the scales s = E[x_j^2]^(a/2). All 21 points:
# searching every 0.2 and then the 0.05 steps near the best (10 trials) gave
# SmolLM2-135M a mean KLD of 0.120 instead of 0.110 (8192 tokens): the error
# is not smooth enough in a for that.
AWQ_GRID = np.linspace(0.0, 1.0, 21)


def _search_order(layer_sites: list[Site]) -> list[Site]:
    """Sites whose producers are another site's readers first (o's input
    changes v's rows, down's changes up's), so each search sees the matrices
    as they will be stored."""
    return sorted(layer_sites, key=lambda s: not s.producers)


def _gram_site(site: Site, family: str) -> str | None:
    place = core_tensor(site.readers[0], family)
    return None if place is None or place.key is None else site_name(place.key.name)


def _fold_awq(
    stored: Checkpoint,
    site: Site,
    grams: dict[str, np.ndarray],
    recipe: Recipe,
    family: str,
    fold: Fold,
) -> None:
    """AWQ's search for one site (Lin et al., 2023): the scales s among
    E[x_j^2]^(a/2), a in AWQ_GRID (normalised to max x min = 1, tied for o),
    whose readers, quantized as W diag(s) by their plan's scheme with the
    weighted search and divided back, change the layer's output least on the
    calibration inputs (tr(D H D^T), H = X^T X); a = 0 (no scaling) is among
    them, so it is never worse on that measure. The scales are folded into the
    working copy and the site's Gram matrix (H / (s s^T)), and recorded."""
    key = _gram_site(site, family)
    if key is None or key not in grams:
        return
    h = grams[key]
    act = np.sqrt(np.maximum(np.diag(h), 1e-30))
    readers = []
    for name in site.readers:
        plan = recipe.plan(name, stored.info(name).shape)
        if len(plan.shape) == 2 and get_scheme(plan.choice.scheme).takes_group_size:
            readers.append((plan, stored.get_float(name).astype(np.float32)))
    if not readers:
        return
    best, best_err = np.ones_like(act), np.inf
    for a in AWQ_GRID:
        s = site.tied(act**a)
        s = s / np.sqrt(s.max() * s.min())
        err = sum(_output_error(plan, w, h, s) for plan, w in readers)
        if err < best_err:
            best, best_err = s, err
    for name in site.tensors:
        info = stored.info(name)
        view = np.memmap(info.file, np.float32, "r+", info.offset, info.shape)
        view[...] = site.transform(name, np.array(view), best, fold.plus_one)
        view.flush()
        del view
    grams[key] = h / np.outer(best, best)
    fold.add(site, best)


def _output_error(plan: TensorPlan, w: np.ndarray, h: np.ndarray, s: np.ndarray) -> float:
    """tr(D H D^T) of W quantized as W diag(s) and divided back."""
    c = plan.choice
    scheme = get_scheme(c.scheme)
    method = "whqq" if scheme.asymmetric else "wmse"
    importance = (np.diag(h) / (s * s)).astype(np.float32)
    scaled = np.ascontiguousarray(w * s[None, :], np.float32)
    try:
        qt = quantize(scaled, c.scheme, c.group_size, method, name=plan.name, importance=importance)
    except ValueError as e:
        # Gemma's activations span 1e6: at large a some group's scale or zero
        # point leaves float16's range. That a is not a candidate.
        if "overflows float16" in str(e):
            return float("inf")
        raise
    # float64: Gemma's X^T X spans twelve orders of magnitude. (float32 gave
    # the same KLD on Gemma 3 270M, 0.2425 on 8192 tokens; float64 is kept as
    # the safe choice for larger models, at twice the time of this step.)
    d = (w - qt.dequantize() / s[None, :]).astype(np.float64)
    return float(((d @ h) * d).sum())


def _run_layer(model: object, hidden: list[np.ndarray], layer: int) -> None:
    core = model._core  # type: ignore[attr-defined]
    for h in hidden:
        core.rewind(0)
        core.forward_layers(h, layer, layer + 1)


def _layer_grams(model: object, hidden: list[np.ndarray], layer: int) -> dict[str, np.ndarray]:
    """X^T X of each input site of ``layer``, the float layer run over copies
    of the hidden states (which stay the layer's inputs)."""
    core = model._core  # type: ignore[attr-defined]
    core.collect_input_stats(True, gram=True)
    try:
        for h in hidden:
            core.rewind(0)
            core.forward_layers(h.copy(), layer, layer + 1)
    finally:
        core.collect_input_stats(False)
    return {str(k): g for k, (g, _) in core.input_gram().items()}


def _quantize(stored: Checkpoint, t: _Target, factor: HessianFactor) -> QuantizedTensor:
    """GPTQ of one matrix; its reconstruction replaces it in the float32
    working copy (``stored``), so the layers after it see it quantized."""
    name, choice = t.plan.name, t.plan.choice
    info = stored.info(name)
    view = np.memmap(info.file, np.float32, "r+", info.offset, info.shape)
    try:
        x = np.array(view)
        qt = quantize(x, choice.scheme, choice.group_size, GPTQ, name=name, hessian=factor)
        view[...] = qt.dequantize()
        view.flush()
    finally:
        del view
    return qt


__all__ = ["AWQ_GRID", "Solved", "solve"]
