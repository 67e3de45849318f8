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
from lowbit.eval.calibration import CONTEXT, NoTokenizerError, calibration_ids, site_name
from lowbit.formats.gguf import is_gguf
from lowbit.formats.safetensors import Checkpoint
from lowbit.models.config import read_config
from lowbit.models.families import family_of
from lowbit.quant.gptq import HessianFactor
from lowbit.quant.quantize import QuantizedTensor, quantize
from lowbit.quant.recipes import Recipe, TensorPlan
from lowbit.quant.schemes import GPTQ
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


def solve(
    src: str | Path,
    recipe: Recipe,
    files: list[Path] | None,
    tokens: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, QuantizedTensor]:
    """The GPTQ result of every matrix of ``src`` whose plan under ``recipe``
    says ``gptq`` and that a transformer layer reads, by checkpoint name;
    calibrated on ``files`` (or the default text), ``tokens`` tokens.
    ``progress(done, total)`` is called after each layer. NoTokenizerError
    when there are such matrices but no tokenizer to read the text."""
    src = Path(src)
    if not is_gguf(src) and not _targets(Checkpoint(src), recipe):
        return {}  # before the float32 copy (a GGUF file is imported first)
    with tempfile.TemporaryDirectory(prefix="lowbit-gptq-") as tmp:
        f32 = Path(tmp) / "f32"
        convert(src, f32, "f32", progress=False, quiet=True)
        stored = Checkpoint(f32)
        targets = _targets(stored, recipe)
        if not targets:
            return {}
        model = load(f32, context_length=CONTEXT)
        if model.tokenizer is None:
            raise NoTokenizerError(f"{src}: no tokenizer.json to tokenize the calibration text")
        windows, _ = calibration_ids(model.tokenizer, files, tokens)
        by_layer: dict[int, list[_Target]] = {}
        for t in targets:
            by_layer.setdefault(t.layer, []).append(t)
        hidden = [model._core.embed(w) for w in windows]
        last = max(by_layer)
        solved: dict[str, QuantizedTensor] = {}
        for layer in range(last + 1):
            if layer in by_layer:
                grams = _layer_grams(model, hidden, layer)
                factors: dict[str, HessianFactor] = {}
                for t in by_layer[layer]:
                    if t.site not in grams:
                        continue  # no token reached it (an expert never routed to)
                    if t.site not in factors:
                        factors[t.site] = HessianFactor.of(grams[t.site], name=t.plan.name)
                    solved[t.plan.name] = _quantize(stored, t, factors[t.site])
            # The runtime reads the float32 file through a shared read-only
            # memory map, so the layer just overwritten runs quantized.
            if layer < last:
                _run_layer(model, hidden, layer)
            if progress is not None:
                progress(layer + 1, last + 1)
        return solved


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


__all__ = ["solve"]
