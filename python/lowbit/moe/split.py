"""Split upcycling: each dense FFN's neurons partitioned into experts, without training.

A SwiGLU FFN is a sum over its intermediate neurons, so any partition of the
neurons into N groups is N experts whose sum is the dense FFN. What decides
the quality of top-k routing is how much of each token's output the k chosen
groups carry. Per layer, on calibration text:

1. Each neuron's output on each token is measured by its *mass*
   |a_j| * ||down[:, j]|| (a = act(gate x) * up x).
2. Neurons are grouped by balanced spherical k-means on their mass over the
   tokens (co-activation), then moved between groups so that every token's
   top-k groups hold more of its energy (mass squared); both run in the C++
   core (``_core.balanced_kmeans``, ``_core.refine_for_top_k``).
3. The router is a ridge least-squares fit, from the FFN input, of which k
   groups carry the most energy on each token (the oracle choice). Its
   logits are scaled down (spread ``LOGIT_SPREAD``) so the renormalised
   weights of the k chosen experts are 1/k up to that spread; every expert's
   down projection is multiplied by k.
4. The down projection is refitted by ridge least squares so that the routed
   FFN's output matches the dense FFN's on the calibration tokens; the
   kept neurons then stand in for the correlated part of the dropped ones.
   The ridge pulls towards the dense weights.

Layers are calibrated in order in one pass: layer i sees the inputs that the
already-split layers 0..i-1 produce, so a layer's fit corrects for what the
layers before it lost (as GPTQ quantises layer by layer).

The same model gives the same split on every machine. The partition is a
chain of discrete choices (k-means assignments, each token's top-k groups,
the router's top-k), and each layer's choices shape the next layer's inputs;
computed in float32, the ulp-level differences between SIMD targets and BLAS
thread counts flipped a few near-ties and moved hundreds of neurons (one model
measured 82-111% ΔPPL on one machine). So the calibration pass and every fit
run in float64, where those differences are ~1e-16 and no choice sees them;
the clustering kernels' float32 inputs are rounded from float64 and their
similarities accumulated in float64 (see DotReproducible in the core). The
exported router and down projections are rounded to float32 at the end.

With top-k = N nothing is fitted: the router is zero (all weights 1/N, times
N) and the down projection the dense one, which gives the dense FFN exactly
up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit import _core

# Standard deviation of the router logits over the calibration tokens. Small,
# so that the renormalised top-k weights stay within about this fraction of
# 1/k; large enough for float32 softmax to keep the ranking (probabilities
# ~1/N differ by ~1e-4 of themselves, against a float32 ulp of ~1e-7).
LOGIT_SPREAD = 1e-3
KMEANS_ITERS = 30
REFINE_ITERS = 30
# Ridge of the router fit, relative to the mean diagonal of x^T x.
ROUTER_RIDGE = 1e-3
# Ridge of the down-projection refit towards the dense weights, relative to
# the mean diagonal of the routed activations' Gram matrix. Measured on
# SmolLM2-135M (8 experts, top-4): 0.1 gave a lower held-out output error
# than 0.01; larger values drift back towards the unfitted weights.
REFIT_RIDGE = 0.1


@dataclass
class SplitLayer:
    """One layer's split: what the checkpoint writer needs."""

    router: np.ndarray  # [experts, hidden] float32
    groups: list[np.ndarray]  # ascending neuron indices of each expert
    shared: np.ndarray | None  # neuron indices of the always-on shared expert
    down: np.ndarray  # [hidden, intermediate] float32, refitted, before the x k
    x: np.ndarray  # [tokens, hidden] float32 FFN inputs on the calibration text


def topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """[tokens, experts] 0/1 float32: the k largest per token (ties to the
    lower index, as torch.topk and lowbit's runtime pick equal logits)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, np.float32)
    np.put_along_axis(mask, order, 1.0, axis=1)
    return mask


def _ridge(gram: np.ndarray, rhs: np.ndarray, ridge: float, prior: np.ndarray | None = None):  # noqa: ANN202
    """argmin_w ||X w - y||^2 + lam ||w - prior||^2 from gram = X^T X, rhs = X^T y,
    lam = ridge * mean diagonal of gram (scale-free)."""
    gram = gram.astype(np.float64)
    lam = ridge * float(np.trace(gram)) / gram.shape[0] or ridge
    rhs = rhs.astype(np.float64)
    if prior is not None:
        rhs = rhs + lam * prior
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), rhs)


def split_layer(
    x: np.ndarray,
    act: np.ndarray,
    down: np.ndarray,
    experts: int,
    top_k: int,
    shared: int,
    seed: int,
    name: str,
) -> tuple[SplitLayer, np.ndarray]:
    """Split one FFN from its calibration inputs x [T, hidden] and
    activations act [T, intermediate]; down is the dense [hidden, intermediate].
    Also returns the layer's output on the calibration tokens [T, hidden]
    (the activations as the MoE layer weighs them, times the refitted down
    projection). Computed in float64 whatever the inputs' type."""
    x = np.asarray(x, np.float64)
    act = np.asarray(act, np.float64)
    down = np.asarray(down, np.float64)
    mass = np.abs(act) * np.linalg.norm(down, axis=0)[None]
    neurons = np.arange(act.shape[1])
    shared_idx = None
    if shared:
        # The neurons active on most tokens (above the layer's median mass)
        # are always on: routing them would waste selections.
        busy = (mass > np.median(mass)).mean(axis=0)
        shared_idx = np.sort(np.argsort(-busy, kind="stable")[:shared])
        neurons = np.setdiff1d(neurons, shared_idx)
    features = np.ascontiguousarray(mass[:, neurons].T, np.float32)
    labels = _core.balanced_kmeans(features, experts, KMEANS_ITERS, seed, name)
    energy = np.square(features)  # [neurons, tokens]
    if top_k < experts:
        labels = _core.refine_for_top_k(energy, labels, experts, top_k, REFINE_ITERS, name)
    groups = [np.sort(neurons[labels == e]) for e in range(experts)]
    x32 = x.astype(np.float32)
    if top_k == experts:
        zero = np.zeros((experts, x.shape[1]), np.float32)
        return SplitLayer(zero, groups, shared_idx, down.astype(np.float32), x32), act @ down.T

    # The router: which groups hold the most energy on each token.
    group_energy = np.stack(
        [energy[labels == e].sum(axis=0, dtype=np.float64) for e in range(experts)], axis=1
    )
    oracle = topk_mask(group_energy, top_k)
    coef = _ridge(x.T @ x, x.T @ oracle, ROUTER_RIDGE)  # [hidden, experts]
    spread = float((x @ coef).std()) or 1.0
    router = coef.T * (LOGIT_SPREAD / spread)

    # The down projection refitted to the routed activations.
    z = act * _neuron_weights(x, router, groups, shared_idx, top_k, act.shape[1])
    dense_out = act @ down.T
    refit = _ridge(z.T @ z, z.T @ dense_out, REFIT_RIDGE, prior=down.T)
    layer = SplitLayer(
        router.astype(np.float32), groups, shared_idx, refit.T.astype(np.float32), x32
    )
    return layer, z @ refit


def _neuron_weights(
    x: np.ndarray,
    router: np.ndarray,
    groups: list[np.ndarray],
    shared: np.ndarray | None,
    top_k: int,
    intermediate: int,
) -> np.ndarray:
    """[T, intermediate] float64: what the MoE layer multiplies each neuron's
    activation by (top_k x its expert's renormalised routing weight, 0 if not
    chosen; 1 for the shared expert, sigmoid(0) x 2), as transformers computes it."""
    logits = np.asarray(x, np.float64) @ np.asarray(router, np.float64).T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    chosen = topk_mask(logits, top_k) * probs
    weights = chosen / chosen.sum(axis=1, keepdims=True) * top_k
    # Column len(groups) is the shared expert's constant 1.
    owner = np.full(intermediate, len(groups))
    for e, g in enumerate(groups):
        owner[g] = e
    columns = np.concatenate([weights, np.ones((x.shape[0], 1))], axis=1)
    return columns[:, owner]


def split_model(
    model: Any,  # a transformers dense causal LM, float32
    windows: np.ndarray,  # [windows, context] calibration token ids
    experts: int,
    top_k: int,
    shared: int,
    seed: int,
) -> list[SplitLayer]:
    """Every layer split in order, in one forward pass over all windows as a
    batch: each layer's FFN is replaced, as the pass reaches it, by its split
    (the output the MoE checkpoint computes), so later layers calibrate on the
    MoE model's own inputs. The pass runs in float64 (see ``float64_pass``)."""
    import torch

    layers = model.model.layers
    built: list[SplitLayer] = []

    def split_forward(mlp: Any, i: int):  # noqa: ANN202
        def forward(h: torch.Tensor) -> torch.Tensor:
            shape = h.shape
            x = h.reshape(-1, shape[-1])
            act = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
            layer, out = split_layer(
                x.numpy(), act.numpy(), mlp.down_proj.weight.detach().numpy(),
                experts, top_k, shared, seed + i, f"layer {i} FFN neurons",
            )  # fmt: skip
            built.append(layer)
            return torch.from_numpy(out).reshape(*shape[:-1], -1).to(h.dtype)

        return forward

    with float64_pass(model):
        try:
            for i, layer in enumerate(layers):
                layer.mlp.forward = split_forward(layer.mlp, i)
            with torch.inference_mode():
                model(torch.from_numpy(np.asarray(windows, np.int64)))
        finally:
            for layer in layers:
                layer.mlp.__dict__.pop("forward", None)  # the class's forward again
    return built


@contextmanager
def float64_pass(model: Any) -> Iterator[None]:
    """The model computes in float64 throughout while inside.

    ``model.to(float64)`` alone is not enough: transformers' RMSNorm and rotary
    embedding compute in float32 whatever the model's type, and their float32
    rounding (1e-7, different on AVX2 and AVX-512) is what made the split
    machine-dependent. Both are replaced, for the duration, by float64 versions
    of the same formulas; a norm whose output the replacement does not
    reproduce is an error rather than a silent change of model. The weights
    are float32 values, so converting back at the end is exact.
    """
    import torch

    from lowbit.models.config import head_dim
    from lowbit.models.rope import inv_freq, rope_parameters

    patched: list[Any] = []
    dtype = next(model.parameters()).dtype
    try:
        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                _check_standard_rms_norm(module)
                module.forward = _rms_norm_float64(module)
                patched.append(module)
        config = model.config.to_dict()
        freq, scaling = inv_freq(rope_parameters(config), head_dim(config))
        rotary = model.model.rotary_emb
        rotary.forward = _rotary_float64(torch.from_numpy(freq.astype(np.float64)), scaling)
        patched.append(rotary)
        model.to(torch.float64)
        yield
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
        model.to(dtype)


def _rms_norm_float64(module: Any):  # noqa: ANN202
    import torch

    eps = float(module.variance_epsilon)

    def forward(h: torch.Tensor) -> torch.Tensor:
        return module.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))

    return forward


def _check_standard_rms_norm(module: Any) -> None:
    """The module computes weight * x / rms(x) (not Gemma's (1 + weight))."""
    import torch

    if not hasattr(module, "variance_epsilon") or not hasattr(module, "weight"):
        raise NotImplementedError(f"{type(module).__name__}: not a weight * x / rms(x) norm")
    x = torch.linspace(-2.0, 3.0, module.weight.shape[-1], dtype=module.weight.dtype)[None]
    with torch.inference_mode():
        ours = _rms_norm_float64(module)(x)
        theirs = module(x)
    if not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6):
        raise NotImplementedError(f"{type(module).__name__}: not a weight * x / rms(x) norm")


def _rotary_float64(freq: Any, scaling: float):  # noqa: ANN202 (a torch tensor)
    import torch

    def forward(x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = position_ids[..., None].to(torch.float64) * freq
        emb = torch.cat((angles, angles), dim=-1)
        return (emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype)

    return forward
