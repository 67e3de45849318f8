"""``lowbit upcycle``: a dense checkpoint turned into a Mixture-of-Experts one.

Two modes, neither trains anything:

- ``copy`` (Sparse Upcycling, the reference documents' method): every expert
  is the dense FFN plus seeded Gaussian noise; a new router (random, zero, or
  mean hidden states of calibration text as mergekit-moe does). The top-k
  router weights are renormalised, so with sigma = 0 every token gets
  Σ w_e · FFN(x) = FFN(x): the dense model exactly. It does not save compute:
  top-k of N full-size copies costs k times the dense FFN.
- ``split`` (fine-grained, compute-saving): each FFN's intermediate neurons
  are partitioned into N experts of intermediate/N neurons, with a router
  and a refitted down projection fitted on calibration text, layer by layer
  (lowbit/upcycle_split.py says how). With top-k = N it is the dense FFN,
  exactly up to float rounding.

The output is a HuggingFace MoE checkpoint (Mixtral layout for Llama/Mistral,
Qwen2-MoE for Qwen2, Qwen3-MoE for Qwen3) written atomically (``OUT.partial``
renamed), and a report: parameters, FFN FLOPs, router load balance and the
KL divergence / perplexity change against the dense model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowbit import _core
from lowbit.eval.text import (
    DEFAULT_CONTEXT,
    DEFAULT_TOKENS,
    EvalWindows,
    encode_files,
    make_windows,
)
from lowbit.eval.validate import LogitComparison
from lowbit.formats.jobs import SafetensorsOutput, TensorJob
from lowbit.formats.safetensors import Checkpoint, TensorSpec, refuse_custom_code
from lowbit.models.config import check_layers, read_config
from lowbit.models.families import FAMILIES, UnsupportedArchitecture, family_of
from lowbit.models.family import Family
from lowbit.models.tensors import DENSE_FFN, SHARED_EXPERT, SHARED_EXPERT_GATE
from lowbit.models.tokenizer import TOKENIZER_FILE, Tokenizer
from lowbit.moe.split import SplitLayer, split_model, topk_mask
from lowbit.util.errors import LowbitError
from lowbit.util.outdir import check_target, copy_side_files, writing

MODES = ("copy", "split")
ROUTERS = ("random", "zero", "hidden")
# Calibration tokens by default, per mode: the default text's tokens right
# after the evaluation windows, so that nothing is judged on its own data.
# Copy mode needs them only for the "hidden" router and the load report;
# split mode refits each down projection (intermediate unknowns per output),
# which on SmolLM2-135M (1536 neurons, 8 experts, top-4) gave ΔPPL +161% from
# 4096 tokens and +69% from 16384.
CALIBRATION_TOKENS = {"copy": 2048, "split": 16384}
# Neurons of the stand-in shared expert of a Qwen2-MoE output without one.
NO_SHARED = 1


class UpcycleError(LowbitError):
    """Bad upcycling input: the message names the problem."""


@dataclass(frozen=True)
class Target:
    """The MoE layout a dense family upcycles into."""

    architecture: str
    config_class: str
    router: str  # tensor name template, {l} = layer
    expert: str  # {l}, {e}, {p} = gate|up|down
    proj: dict[str, str]  # gate/up/down -> the layout's projection name
    shared: bool  # the layout has a (sigmoid-gated) shared expert
    attention_bias: bool = False  # the layout has q/k/v biases


def _target(moe: Family) -> Target:
    """The layout of MoE family ``moe`` (lowbit.models.families) as upcycling writes it."""
    layout = moe.moe_layout
    assert layout is not None, moe.name
    # The shared expert's names are the vocabulary's (_SHARED below), Qwen2-MoE's.
    assert layout.shared_expert in (None, SHARED_EXPERT), moe.name
    proj = dict(zip(("gate", "up", "down"), layout.projections, strict=True))
    shared = layout.shared_expert is not None
    return Target(
        moe.architecture,
        layout.config_class,
        layout.router,
        layout.expert,
        proj,
        shared,
        layout.attention_bias,
    )


# Dense family -> the MoE layout it upcycles into, in the registry's order.
TARGETS: dict[str, Target] = {
    f.name: _target(FAMILIES[f.upcycles_to]) for f in FAMILIES.values() if f.upcycles_to
}
_SHARED = SHARED_EXPERT
_SHARED_GATE = SHARED_EXPERT_GATE
_DENSE = DENSE_FFN


@dataclass
class UpcycleReport:
    out: str
    mode: str
    architecture: str
    experts: int
    top_k: int
    expert_intermediate: int
    shared_intermediate: int
    noise: dict[str, Any]
    router: str
    total_params: int
    active_params: int
    dense_params: int
    ffn_flops_vs_dense: float
    load_balance: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- checks


def _check_args(
    config: dict[str, Any],
    mode: str,
    experts: int,
    top_k: int,
    noise: float | None,
    noise_relative: float | None,
    router: str,
    shared_expert: bool,
) -> tuple[str, Target, int]:
    """(family, target layout, dense intermediate size); UpcycleError otherwise."""
    try:
        family = family_of(config)
    except UnsupportedArchitecture as e:
        raise UpcycleError(str(e)) from None
    if family.moe:
        raise UpcycleError(f"{family.name} is already a Mixture-of-Experts model")
    if family.name not in TARGETS:
        raise UpcycleError(
            f"{family.name} has no MoE counterpart in transformers to upcycle into; "
            f"supported bases: {', '.join(TARGETS)}"
        )
    if config.get("mlp_bias") or (
        not TARGETS[family.name].attention_bias and config.get("attention_bias")
    ):
        raise UpcycleError(
            f"{family.name} with biases has no Mixtral counterpart (Mixtral has none)"
        )
    if mode not in MODES:
        raise UpcycleError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if router not in ROUTERS:
        raise UpcycleError(f"router must be one of {', '.join(ROUTERS)}, got {router!r}")
    if config.get("intermediate_size") is None:  # optional for lowbit, needed here
        raise UpcycleError("config.json: intermediate_size: missing; a dense FFN needs its size")
    inter = int(config["intermediate_size"])
    if experts < 1:
        raise UpcycleError(f"experts must be at least 1, got {experts}")
    if not 1 <= top_k <= experts:
        raise UpcycleError(
            f"top-k must be between 1 and the number of experts ({experts}), got {top_k}"
        )
    if shared_expert and not TARGETS[family.name].shared:
        raise UpcycleError(
            f"a shared expert needs the Qwen2-MoE layout; {family.name} upcycles into "
            f"{TARGETS[family.name].architecture}, which has none"
        )
    if mode == "split":
        # A shared expert takes one expert's share of the neurons.
        parts = experts + (1 if shared_expert else 0)
        if parts > inter:
            raise UpcycleError(
                f"{experts} experts but the FFN has only {inter} intermediate neurons to split"
            )
        if inter % parts:
            raise UpcycleError(
                f"{parts} experts{' (one shared)' if shared_expert else ''} do not divide "
                f"the {inter} intermediate neurons evenly"
            )
    if noise is not None and noise_relative is not None:
        raise UpcycleError("give either noise (absolute sigma) or noise_relative, not both")
    for name, v in (("noise", noise), ("noise_relative", noise_relative)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise UpcycleError(f"{name} must be a finite number >= 0, got {v}")
    if mode == "split" and (noise or noise_relative):
        raise UpcycleError("noise applies to copy mode only")
    if shared_expert and mode != "split":
        raise UpcycleError("a shared expert is built in split mode only")
    return family.name, TARGETS[family.name], inter


# ---------------------------------------------------------------- text and statistics


def _encode_text(src: Path, files: list[Path] | None) -> tuple[list[int], str]:
    """The calibration and evaluation text's token ids (SRC's tokenizer) and its label."""
    if not (src / TOKENIZER_FILE).is_file():
        raise UpcycleError(
            f"{src}: no {TOKENIZER_FILE}; calibration and evaluation text need the tokenizer"
        )
    return encode_files(Tokenizer(src), files)


def _windows_from_text(
    text: tuple[list[int], str], skip: int, tokens: int, context: int
) -> EvalWindows:
    """Windows of ``tokens`` ids after the first ``skip`` ones."""
    ids, source = text
    if len(ids) < skip + context:
        skip = 0  # a short user text: calibrate on it from the start
    return make_windows(ids[skip:], min(context, tokens), tokens, source)


def _as_windows(ids: np.ndarray, source: str) -> EvalWindows:
    ids = np.asarray(ids, np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    return EvalWindows(ids, ids.shape[1], source)


def _load_dense(src: Path):  # noqa: ANN202 (a transformers model)
    import torch
    import transformers

    refuse_custom_code(src)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        src, dtype=torch.float32, trust_remote_code=False, use_safetensors=True
    )
    return model.eval()


def _ffn_inputs(model, windows: EvalWindows) -> list[np.ndarray]:  # noqa: ANN001
    """Every layer's FFN inputs [tokens, hidden] over the calibration windows."""
    import torch

    layers = model.model.layers
    xs: list[list[np.ndarray]] = [[] for _ in layers]
    hooks = []
    for i, layer in enumerate(layers):

        def grab(_m, args, i=i):  # noqa: ANN001, ANN202
            xs[i].append(args[0].reshape(-1, args[0].shape[-1]).float().numpy().copy())

        hooks.append(layer.mlp.register_forward_pre_hook(grab))
    try:
        with torch.inference_mode():
            for w in windows.windows:
                model(torch.from_numpy(w)[None])
    finally:
        for h in hooks:
            h.remove()
    return [np.concatenate(x) for x in xs]


def _stream(*parts: object) -> int:
    """A stable 64-bit stream id for the noise of one tensor (names, not order)."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little")


def _normal(shape: tuple[int, ...], std: float, seed: int, *stream: object) -> np.ndarray:
    z = _core.gaussian_noise(math.prod(shape), seed, _stream(*stream))
    return (z * np.float32(std)).reshape(shape)


# ---------------------------------------------------------------- routers


def _hidden_router(x: np.ndarray, experts: int) -> np.ndarray:
    """mergekit-moe's "hidden" initialisation without per-expert prompts: the
    calibration tokens cut into ``experts`` consecutive chunks, each row the
    normalised mean FFN input of its chunk."""
    rows = np.stack([c.mean(axis=0) for c in np.array_split(x, experts)])
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- config


def _moe_config(
    config: dict[str, Any],
    target: Target,
    experts: int,
    top_k: int,
    expert_inter: int,
    shared_inter: int,
) -> dict[str, Any]:
    import transformers

    keep = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    keep.pop("transformers_version", None)
    moe = {
        "num_experts_per_tok": top_k,
        "router_aux_loss_coef": 0.001,
        "output_router_logits": False,
    }
    if target.config_class == "MixtralConfig":
        moe |= {"num_local_experts": experts, "intermediate_size": expert_inter}
    else:
        moe |= {
            "num_experts": experts,
            "moe_intermediate_size": expert_inter,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,
        }
        if target.shared:
            moe["shared_expert_intermediate_size"] = shared_inter
    cfg = getattr(transformers, target.config_class)(**{**keep, **moe})
    out = cfg.to_dict()
    out["architectures"] = [target.architecture]
    out.pop("transformers_version", None)
    return out


# ---------------------------------------------------------------- the job


@dataclass(frozen=True, eq=False)
class UpcycleOptions:
    """``upcycle``'s options (its keyword arguments; see there)."""

    experts: int
    top_k: int
    mode: str = "copy"
    noise: float | None = None
    noise_relative: float | None = None
    router: str = "random"
    seed: int = 0
    calibration_text: str | Path | list[str | Path] | None = None
    shared_expert: bool = False
    evaluate: bool = True
    calibration_ids: np.ndarray | None = None
    eval_ids: np.ndarray | None = None
    context: int = DEFAULT_CONTEXT
    eval_tokens: int = DEFAULT_TOKENS
    calibration_tokens: int | None = None
    force: bool = False

    @property
    def text_files(self) -> list[Path] | None:
        """The calibration and evaluation text's files (None: the default text)."""
        if self.calibration_text is None:
            return None
        text = self.calibration_text
        return [Path(p) for p in (text if isinstance(text, list) else [text])]


def upcycle(
    src: str | Path,
    out: str | Path,
    experts: int,
    top_k: int,
    mode: str = "copy",
    noise: float | None = None,
    noise_relative: float | None = None,
    router: str = "random",
    seed: int = 0,
    calibration_text: str | Path | list[str | Path] | None = None,
    shared_expert: bool = False,
    evaluate: bool = True,
    calibration_ids: np.ndarray | None = None,
    eval_ids: np.ndarray | None = None,
    context: int = DEFAULT_CONTEXT,
    eval_tokens: int = DEFAULT_TOKENS,
    calibration_tokens: int | None = None,
    force: bool = False,
) -> UpcycleReport:
    """Upcycle the dense checkpoint ``src`` into an MoE checkpoint ``out``.

    ``calibration_ids`` / ``eval_ids`` ([windows, context] token ids) replace
    the text for checkpoints without a tokenizer; ``calibration_tokens``
    defaults to ``CALIBRATION_TOKENS[mode]``. Returns the report.
    """
    options = UpcycleOptions(
        experts=experts,
        top_k=top_k,
        mode=mode,
        noise=noise,
        noise_relative=noise_relative,
        router=router,
        seed=seed,
        calibration_text=calibration_text,
        shared_expert=shared_expert,
        evaluate=evaluate,
        calibration_ids=calibration_ids,
        eval_ids=eval_ids,
        context=context,
        eval_tokens=eval_tokens,
        calibration_tokens=calibration_tokens,
        force=force,
    )
    return _upcycle(Path(src), Path(out), options)


@dataclass(frozen=True)
class _Sizes:
    """The MoE's dimensions, and copy mode's noise."""

    layers: int
    hidden: int
    expert_inter: int  # neurons per expert
    shared_inter: int  # neurons of the shared expert (NO_SHARED: a stand-in; 0: none)
    sigma: float  # noise std
    sigma_rel: float | None  # noise std relative to each projection's, when given


def _sizes(config: dict[str, Any], target: Target, inter: int, opts: UpcycleOptions) -> _Sizes:
    shared_inter = NO_SHARED if target.shared else 0
    if opts.mode == "copy":
        expert_inter = inter
        sigma_rel = opts.noise_relative
        sigma = opts.noise or 0.0
    else:
        expert_inter = inter // opts.experts
        sigma_rel, sigma = None, 0.0
        if opts.shared_expert:
            expert_inter = inter // (opts.experts + 1)
            shared_inter = expert_inter
    layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
    return _Sizes(layers, hidden, expert_inter, shared_inter, sigma, sigma_rel)


@dataclass(frozen=True, eq=False)
class _Calibration:
    """The text, tokenized once (the evaluation windows first, the
    calibration windows after them), the calibration windows, and the dense
    model that runs on them (loaded only when there are any)."""

    text: tuple[list[int], str] | None
    windows: EvalWindows | None
    dense: Any  # a transformers model, or None


def _calibrate(src: Path, opts: UpcycleOptions) -> _Calibration:
    # Calibration statistics: FFN inputs (router, load balance) and, in split
    # mode, the activations the neurons are clustered on.
    has_tok = (src / TOKENIZER_FILE).is_file()
    calib_from_text = opts.calibration_ids is None and (
        opts.mode == "split" or opts.router == "hidden" or (opts.evaluate and has_tok)
    )
    eval_from_text = opts.evaluate and opts.eval_ids is None and has_tok
    text = _encode_text(src, opts.text_files) if calib_from_text or eval_from_text else None
    calib = None
    if opts.calibration_ids is not None:
        calib = _as_windows(opts.calibration_ids, "calibration_ids")
    elif calib_from_text:
        assert text is not None
        tokens = opts.calibration_tokens or CALIBRATION_TOKENS[opts.mode]
        calib = _windows_from_text(text, opts.eval_tokens, tokens, opts.context)
    dense = _load_dense(src) if calib is not None else None
    return _Calibration(text, calib, dense)


def _statistics(
    cal: _Calibration, sizes: _Sizes, opts: UpcycleOptions
) -> tuple[list[SplitLayer] | None, list[np.ndarray] | None]:
    """(split mode: each layer's split; per layer: FFN inputs [tokens,
    hidden] over the calibration windows, None without any)."""
    if opts.mode == "split":
        assert cal.dense is not None
        assert cal.windows is not None
        n_shared = sizes.shared_inter if opts.shared_expert else 0
        splits = split_model(
            cal.dense, cal.windows.windows, opts.experts, opts.top_k, n_shared, opts.seed
        )
        return splits, [s.x for s in splits]
    if cal.windows is not None:
        return None, _ffn_inputs(cal.dense, cal.windows)
    return None, None


def _upcycle(src: Path, out: Path, opts: UpcycleOptions) -> UpcycleReport:
    t0 = time.perf_counter()
    config = read_config(src / "config.json")
    _family, target, inter = _check_args(
        config,
        opts.mode,
        opts.experts,
        opts.top_k,
        opts.noise,
        opts.noise_relative,
        opts.router,
        opts.shared_expert,
    )
    check_target(out, opts.force)  # fails before the long calibration
    ck = Checkpoint(src)
    check_layers(config, ck.names(), src / "config.json")
    cal = _calibrate(src, opts)
    sizes = _sizes(config, target, inter, opts)
    splits, stats = _statistics(cal, sizes, opts)
    moe_config = _moe_config(
        config, target, opts.experts, opts.top_k, sizes.expert_inter, sizes.shared_inter
    )
    jobs, routers = _output_jobs(ck, config, target, sizes, opts, splits, stats)
    notes: list[str] = []
    with writing(out, force=opts.force) as partial:
        specs = [job.specs for job in jobs]
        with SafetensorsOutput(partial, specs, {"format": "pt"}) as output:
            for job in jobs:
                output.write(job.make())
        (partial / "config.json").write_text(json.dumps(moe_config, indent=2))
        copy_side_files(src, partial, skip=("config.json",))
        # Loaded by transformers (missing or unexpected weights refused) and
        # compared while still OUT.partial: a model that fails is never committed.
        comparison = None
        if opts.evaluate:
            comparison = _evaluate(src, partial, cal, opts)
            if comparison is None:
                load_moe(partial)  # the load check still runs
                notes.append("no tokenizer and no eval_ids: the model was not evaluated")

    report = _report(out, opts, target, config, sizes, [s for job in jobs for s in job.specs])
    if stats is not None:
        assert cal.windows is not None
        report.load_balance = _load_balance(routers, stats, opts.top_k, cal.windows)
    report.model = comparison
    report.notes = notes
    report.seconds = time.perf_counter() - t0
    return report


# ---------------------------------------------------------------- the output's tensors


def _output_jobs(
    ck: Checkpoint,
    config: dict[str, Any],
    target: Target,
    sizes: _Sizes,
    opts: UpcycleOptions,
    splits: list[SplitLayer] | None,
    stats: list[np.ndarray] | None,
) -> tuple[list[TensorJob], dict[int, np.ndarray]]:
    """The output's tensors as jobs, in the source's order: a tensor outside
    the FFNs is copied; each layer's FFN becomes one job (at its gate
    projection), its MoE block. And the dict that receives each block's
    router (float32), by layer, as its job is written (by layer, since the
    source's order is the names' lexicographic order: 0, 1, 10, 11, ...)."""
    dense_names = {
        _DENSE.format(l=i, p=p): (i, p) for i in range(sizes.layers) for p in ("gate", "up", "down")
    }
    for name in dense_names:
        ck.info(name)  # a clear error naming a missing FFN tensor
    jobs: list[TensorJob] = []
    routers: dict[int, np.ndarray] = {}
    for name in ck.names():
        dt = ck.get(name).dtype
        if name not in dense_names:
            spec = TensorSpec(name, dt, ck.info(name).shape)
            jobs.append(TensorJob((spec,), functools.partial(_copied, ck, name)))
            continue
        i, p = dense_names[name]
        if p != "gate":
            continue
        split = splits[i] if splits is not None else None
        x = stats[i] if stats else None
        copy_router = functools.partial(
            _copy_router, opts.router, opts.experts, sizes.hidden, config, opts.seed, i, x
        )
        jobs.append(_moe_block(ck, i, dt, target, sizes, opts, copy_router, split, routers))
    return jobs, routers


def _copied(ck: Checkpoint, name: str) -> tuple[np.ndarray]:
    return (ck.get(name),)


@dataclass(frozen=True, eq=False)
class _DenseFfn:
    """What one layer's MoE block is made from: its router (float32) and the
    dense FFN in float32 (gate, up, down), in split mode with the down
    projection refitted to the routed activations, in copy mode with the
    noise std of each projection."""

    router: np.ndarray
    w: dict[str, np.ndarray]
    std: dict[str, float]


def _dense_ffn(
    ck: Checkpoint,
    layer: int,
    sizes: _Sizes,
    copy_router: Callable[[], np.ndarray],
    split: SplitLayer | None,
) -> _DenseFfn:
    """What layer ``layer``'s MoE block is made from, its router split
    mode's fitted one or copy mode's ``copy_router()``."""
    w = {
        q: ck.get_float(_DENSE.format(l=layer, p=q)).astype(np.float32)
        for q in ("gate", "up", "down")
    }
    if split is not None:
        w["down"] = split.down  # refitted to the routed activations
        return _DenseFfn(split.router, w, {})
    r = copy_router()
    # Noise std per projection: the same for every expert's copy.
    std = {
        q: sizes.sigma
        if sizes.sigma_rel is None
        else sizes.sigma_rel * float(w[q].std(dtype=np.float64))
        for q in w
    }
    return _DenseFfn(r, w, std)


@dataclass(frozen=True)
class _Part:
    """One tensor of a layer's MoE block: name, shape, and how to make it
    (float32) from the layer's dense FFN."""

    name: str
    shape: tuple[int, int]
    make: Callable[[_DenseFfn], np.ndarray]


def _moe_block(
    ck: Checkpoint,
    layer: int,
    dt: np.dtype,
    target: Target,
    sizes: _Sizes,
    opts: UpcycleOptions,
    copy_router: Callable[[], np.ndarray],
    split: SplitLayer | None,
    routers: dict[int, np.ndarray],
) -> TensorJob:
    """Layer ``layer``'s MoE block as one job: the router, the experts (gate,
    up, down each), then the shared expert, in ``dt``. The router is made and
    the dense FFN read when the job is written, so one layer's is in memory
    at a time; the router goes into ``routers[layer]`` then."""
    parts = _block_parts(layer, target, sizes, opts, split)
    specs = tuple(TensorSpec(part.name, dt, part.shape) for part in parts)

    def make() -> Iterator[np.ndarray]:
        ffn = _dense_ffn(ck, layer, sizes, copy_router, split)
        routers[layer] = ffn.router
        for part in parts:
            yield part.make(ffn).astype(dt)

    return TensorJob(specs, make)


def _block_parts(
    i: int,
    target: Target,
    sizes: _Sizes,
    opts: UpcycleOptions,
    split: SplitLayer | None,
) -> list[_Part]:
    hidden = sizes.hidden

    def shape(q: str, neurons: int) -> tuple[int, int]:
        return (hidden, neurons) if q == "down" else (neurons, hidden)

    parts = [_Part(target.router.format(l=i), (opts.experts, hidden), lambda ffn: ffn.router)]
    for e in range(opts.experts):
        for q in ("gate", "up", "down"):
            if split is None:
                make = functools.partial(_noisy_copy, e=e, q=q, layer=i, seed=opts.seed)
            else:
                make = functools.partial(_split_part, q=q, neurons=split.groups[e], k=opts.top_k)
            name = target.expert.format(l=i, e=e, p=target.proj[q])
            parts.append(_Part(name, shape(q, sizes.expert_inter), make))
    if target.shared:
        idx = split.shared if split is not None else None
        for q in ("gate", "up", "down"):
            make = functools.partial(_shared_part, q=q, neurons=idx, hidden=hidden)
            parts.append(
                _Part(_SHARED.format(l=i, p=target.proj[q]), shape(q, sizes.shared_inter), make)
            )
        zeros = np.zeros((1, hidden), np.float32)
        parts.append(_Part(_SHARED_GATE.format(l=i), (1, hidden), lambda _: zeros))
    return parts


def _noisy_copy(ffn: _DenseFfn, e: int, q: str, layer: int, seed: int) -> np.ndarray:
    """Copy mode: expert ``e``'s projection ``q``, the dense one plus its noise."""
    t = ffn.w[q].copy()
    s = ffn.std[q]
    if s > 0:
        _core.add_gaussian_noise(t, s, seed, _stream(layer, e, q), f"layer {layer} expert {e} {q}")
    return t


def _split_part(ffn: _DenseFfn, q: str, neurons: np.ndarray, k: int) -> np.ndarray:
    """Split mode: projection ``q`` of the expert made of ``neurons``."""
    if q != "down":
        return ffn.w[q][neurons]
    # Every selected expert gets weight 1/k (see the module docstring):
    # scaling by k makes their sum the dense FFN's.
    return np.ascontiguousarray(ffn.w["down"][:, neurons]) * np.float32(k)


def _shared_part(ffn: _DenseFfn, q: str, neurons: np.ndarray | None, hidden: int) -> np.ndarray:
    """Projection ``q`` of the shared expert made of ``neurons`` (None: none)."""
    if neurons is None:
        # Qwen2-MoE always has a shared expert; one all-zero neuron adds
        # exactly 0 (act(0) * 0), where a zero-size one would be refused by
        # lowbit convert.
        rows_cols = (hidden, NO_SHARED) if q == "down" else (NO_SHARED, hidden)
        return np.zeros(rows_cols, np.float32)
    if q != "down":
        return ffn.w[q][neurons]
    # sigmoid(0) = 0.5 exactly: a zero gate and a doubled down projection
    # make the shared expert always on at weight 1.
    return np.ascontiguousarray(ffn.w["down"][:, neurons]) * np.float32(2.0)


def _evaluate(
    src: Path, moe_dir: Path, cal: _Calibration, opts: UpcycleOptions
) -> dict[str, Any] | None:
    """``compare_models`` on the evaluation windows, or None without any."""
    if opts.eval_ids is not None:
        ev = _as_windows(opts.eval_ids, "eval_ids")
    elif cal.text is not None:
        ev = _windows_from_text(cal.text, 0, opts.eval_tokens, opts.context)
    else:
        return None
    return compare_models(src, moe_dir, ev, cal.dense)


def _copy_router(
    kind: str,
    experts: int,
    hidden: int,
    config: dict[str, Any],
    seed: int,
    layer: int,
    x: np.ndarray | None,
) -> np.ndarray:
    if kind == "zero":
        return np.zeros((experts, hidden), np.float32)
    if kind == "random":
        # transformers' own initialisation of a Linear: N(0, initializer_range).
        std = float(config.get("initializer_range", 0.02))
        return _normal((experts, hidden), std, seed, layer, "router")
    if x is None:
        raise UpcycleError("router 'hidden' needs calibration text (a tokenizer in SRC)")
    return _hidden_router(x, experts)


# ---------------------------------------------------------------- report


def _report(
    out: Path,
    opts: UpcycleOptions,
    target: Target,
    config: dict[str, Any],
    sizes: _Sizes,
    specs: list[TensorSpec],
) -> UpcycleReport:
    n_layers = int(config["num_hidden_layers"])
    hidden = int(config["hidden_size"])
    inter = int(config["intermediate_size"])
    experts, top_k = opts.experts, opts.top_k
    shared_inter = sizes.shared_inter
    total = sum(math.prod(s.shape) for s in specs)
    per_expert = 3 * hidden * sizes.expert_inter
    inactive = n_layers * (experts - top_k) * per_expert
    dense_ffn = 3 * hidden * inter
    # Multiply-adds per token of one layer's FFN: router + k experts + shared
    # expert (its gate is 1 x hidden), against the dense FFN's.
    moe_ffn = hidden * experts + top_k * per_expert
    if target.shared:
        moe_ffn += 3 * hidden * shared_inter + hidden
    dense_total = total - n_layers * (experts * per_expert + hidden * experts - dense_ffn)
    if target.shared:
        dense_total -= n_layers * (3 * hidden * shared_inter + hidden)
    return UpcycleReport(
        out=str(out),
        mode=opts.mode,
        architecture=target.architecture,
        experts=experts,
        top_k=top_k,
        expert_intermediate=sizes.expert_inter,
        shared_intermediate=shared_inter,
        noise={"sigma": sizes.sigma, "relative": sizes.sigma_rel, "seed": opts.seed},
        router=opts.router if opts.mode == "copy" else "fit",
        total_params=int(total),
        active_params=int(total - inactive),
        dense_params=int(dense_total),
        ffn_flops_vs_dense=moe_ffn / dense_ffn,
    )


def _load_balance(
    routers: dict[int, np.ndarray], stats: list[np.ndarray], top_k: int, calib: EvalWindows
) -> dict[str, Any]:
    """Fraction of routed slots per expert over the calibration tokens (each
    layer's router on the dense model's FFN inputs, ``stats[layer]``), and its
    coefficient of variation (0: perfectly even)."""
    if sorted(routers) != list(range(len(stats))):
        raise AssertionError(f"routers of layers {sorted(routers)} for {len(stats)} layers")
    fractions = []
    for layer, s in enumerate(stats):
        r = routers[layer]
        mask = topk_mask(s @ r.T.astype(np.float32), top_k)
        fractions.append(mask.sum(axis=0) / mask.sum())
    f = np.stack(fractions)
    cv = f.std(axis=1) / f.mean(axis=1)
    return {
        "tokens": int(calib.windows.size),
        "text": calib.source,
        "fraction_per_expert_mean": f.mean(axis=0).tolist(),
        "cv_per_layer": cv.tolist(),
        "cv_mean": float(cv.mean()),
        "cv_max": float(cv.max()),
    }


def _logits(model, windows: EvalWindows) -> np.ndarray:  # noqa: ANN001
    import torch

    with torch.inference_mode():
        return np.stack(
            [model(torch.from_numpy(w)[None]).logits[0].float().numpy() for w in windows.windows]
        )


def compare_models(
    dense_dir: Path,
    moe_dir: Path,
    windows: EvalWindows,
    dense: Any = None,  # a transformers model already loaded from dense_dir
) -> dict[str, Any]:
    """KL divergence, perplexities and agreement of the MoE checkpoint against
    the dense one, both run by transformers in float32 on ``windows``."""
    dense = dense if dense is not None else _load_dense(dense_dir)
    base = _logits(dense, windows)
    moe, _info = load_moe(moe_dir)
    ours = _logits(moe, windows)
    comparison = LogitComparison()
    for w, ids in enumerate(windows.windows):
        comparison.add(base[w, :-1], ours[w, :-1], ids[1:])
    return {
        "text": windows.source,
        "predictions": windows.predictions,
        **comparison.metrics("dense"),
        # The last position has no target, but its logits count here.
        "max_rel_logit_error": float(np.abs(ours - base).max() / np.abs(base).max()),
    }


def load_moe(path: str | Path):  # noqa: ANN201 (a transformers model, loading info)
    """The checkpoint in transformers (float32), refusing any missing or
    unexpected weight: a missing one would be silently random-initialised."""
    import torch
    import transformers

    refuse_custom_code(path)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.float32,
        output_loading_info=True,
        trust_remote_code=False,
        use_safetensors=True,
    )
    bad = {
        k: v
        for k, v in info.items()
        if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if bad:
        raise UpcycleError(f"{path}: transformers reports {bad}")
    return model.eval(), info


def format_report(r: UpcycleReport) -> str:
    lines = [
        f"{r.out}: {r.architecture}, {r.experts} experts of {r.expert_intermediate} neurons, "
        f"top-{r.top_k} ({r.mode} mode, router {r.router})",
        f"  parameters {r.total_params / 1e6:.2f} M total, {r.active_params / 1e6:.2f} M active "
        f"(dense {r.dense_params / 1e6:.2f} M); "
        f"FFN FLOPs per token {r.ffn_flops_vs_dense:.3f}x dense",
    ]
    if r.shared_intermediate > NO_SHARED:
        lines.append(f"  shared expert of {r.shared_intermediate} neurons, always on")
    if r.load_balance:
        lb = r.load_balance
        frac = " ".join(f"{f:.3f}" for f in lb["fraction_per_expert_mean"])
        lines.append(
            f"  router load over {lb['tokens']} calibration tokens: {frac} "
            f"(CV mean {lb['cv_mean']:.3f}, max {lb['cv_max']:.3f})"
        )
    if r.model:
        m = r.model
        lines.append(
            f"  against the dense model ({m['predictions']} predictions): KL {m['kld_mean']:.5f} "
            f"(p99 {m['kld_p99']:.5f}), perplexity {m['ppl']:.4f} vs {m['ppl_dense']:.4f} "
            f"({m['delta_ppl_pct']:+.3f}%), same top token {m['same_top']:.2%}"
        )
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)
