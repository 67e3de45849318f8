"""What the forward pass needs from config.json: dimensions, the features each
family switches on, and the canonical name of every checkpoint tensor.

The C++ model knows no family by name (src/model/model.h); this module turns
a family's config into switches (norm form, activation, scaling, windows,
rope per layer, routing) and its tensor names into the core's names.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from lowbit import _core
from lowbit.models.config import head_dim as model_head_dim
from lowbit.models.families import family_of
from lowbit.models.rope import inv_freq, rope_parameters
from lowbit.util.errors import LowbitError

# Families whose RMSNorm multiplies by (1 + w) and whose embeddings are scaled
# by sqrt(hidden); Gemma 2 and 3 also norm the outputs of attention and FFN.
GEMMA = ("gemma", "gemma2", "gemma3")
POST_NORMS = ("gemma2", "gemma3")

_ACTIVATIONS = {
    "silu": _core.Activation.SILU,
    "swish": _core.Activation.SILU,
    "gelu_pytorch_tanh": _core.Activation.GELU_TANH,
    "gelu_tanh": _core.Activation.GELU_TANH,
}

# Checkpoint tensors the forward pass does not read (precomputed buffers).
IGNORED = re.compile(r"rotary_emb\.inv_freq$")


class RuntimeConfigError(LowbitError):
    """config.json describes something the runtime cannot run."""


def _activation(config: dict[str, Any], family: str) -> _core.Activation:
    name = config.get("hidden_activation") or config.get("hidden_act") or "silu"
    if family in GEMMA and name == "gelu":
        # Gemma's reference code always used the tanh approximation.
        name = "gelu_pytorch_tanh"
    if name not in _ACTIVATIONS:
        raise RuntimeConfigError(
            f"config.json: activation {name!r} is not supported; "
            f"supported: {', '.join(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


def layer_types(config: dict[str, Any]) -> list[str]:
    """``full_attention`` or ``sliding_attention`` for every layer."""
    n = int(config["num_hidden_layers"])
    types = config.get("layer_types")
    if types:
        if len(types) != n:
            raise RuntimeConfigError(
                f"config.json: layer_types has {len(types)} entries for {n} layers"
            )
        return list(types)
    sliding = config.get("sliding_window") and config.get("use_sliding_window", True)
    return ["sliding_attention" if sliding else "full_attention"] * n


def core_config(config: dict[str, Any]) -> _core.ModelConfig:
    """The core's ModelConfig from config.json contents."""
    family = family_of(config).name
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = model_head_dim(config)
    c = _core.ModelConfig()
    c.hidden = hidden
    c.heads = heads
    c.kv_heads = int(config.get("num_key_value_heads") or heads)
    c.head_dim = head_dim
    c.vocab = int(config["vocab_size"])
    c.rms_eps = float(config.get("rms_norm_eps") or 1e-6)
    c.activation = _activation(config, family)
    if family in GEMMA:
        # HF multiplies by the normaliser rounded to the hidden states' dtype.
        c.embed_scale = float(np.float32(math.sqrt(hidden)))
    scalar = config.get("query_pre_attn_scalar") if family in POST_NORMS else None
    c.attn_scale = float(scalar) ** -0.5 if scalar else head_dim**-0.5
    c.attn_softcap = float(config.get("attn_logit_softcapping") or 0.0)
    c.final_softcap = float(config.get("final_logit_softcapping") or 0.0)
    c.experts_per_token = int(config.get("num_experts_per_tok") or 0)
    # Mixtral always renormalises its top-k weights; Qwen's MoE models say.
    c.norm_topk_prob = family == "mixtral" or bool(config.get("norm_topk_prob", False))
    window = int(config.get("sliding_window") or 0)
    layers = []
    for i, kind in enumerate(layer_types(config)):
        lc = _core.LayerConfig()
        lc.sliding_window = window if kind == "sliding_attention" else 0
        freq, scaling = inv_freq(
            rope_parameters(config, kind), head_dim, f"config.json (layer {i})"
        )
        lc.inv_freq = freq.tolist()
        lc.rope_scaling = scaling
        layers.append(lc)
    c.layers = layers
    return c


_LAYER = r"^model\.layers\.(?P<layer>\d+)\."
_MOE = r"(?:block_sparse_moe|mlp)\."
# (pattern, canonical name with {layer} and {expert}); first match wins.
_NAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), name)
    for p, name in (
        (r"^model\.embed_tokens\.weight$", "embed"),
        (r"^lm_head\.weight$", "lm_head"),
        (r"^model\.norm\.weight$", "final_norm"),
        (_LAYER + r"input_layernorm\.weight$", "L{layer}.attn_norm"),
        (_LAYER + r"pre_feedforward_layernorm\.weight$", "L{layer}.ffn_norm"),
        (_LAYER + r"post_feedforward_layernorm\.weight$", "L{layer}.ffn_post_norm"),
        (_LAYER + r"post_attention_layernorm\.weight$", "L{layer}.post_attention"),
        (_LAYER + r"self_attn\.(?P<p>[qkvo])_proj\.weight$", "L{layer}.{p}"),
        (_LAYER + r"self_attn\.(?P<p>[qkv])_proj\.bias$", "L{layer}.{p}_bias"),
        (_LAYER + r"self_attn\.(?P<p>[qk])_norm\.weight$", "L{layer}.{p}_norm"),
        (_LAYER + r"mlp\.(?P<p>gate|up|down)_proj\.weight$", "L{layer}.{p}"),
        (_LAYER + _MOE + r"gate\.weight$", "L{layer}.router"),
        (_LAYER + r"block_sparse_moe\.experts\.(?P<e>\d+)\.w1\.weight$", "L{layer}.E{e}.gate"),
        (_LAYER + r"block_sparse_moe\.experts\.(?P<e>\d+)\.w3\.weight$", "L{layer}.E{e}.up"),
        (_LAYER + r"block_sparse_moe\.experts\.(?P<e>\d+)\.w2\.weight$", "L{layer}.E{e}.down"),
        (
            _LAYER + r"mlp\.experts\.(?P<e>\d+)\.(?P<p>gate|up|down)_proj\.weight$",
            "L{layer}.E{e}.{p}",
        ),
        (_LAYER + _MOE + r"experts\.gate_up_proj$", "L{layer}.experts_gate_up"),
        (_LAYER + _MOE + r"experts\.down_proj$", "L{layer}.experts_down"),
        (
            _LAYER + r"mlp\.shared_expert\.(?P<p>gate|up|down)_proj\.weight$",
            "L{layer}.shared_{p}",
        ),
        (_LAYER + r"mlp\.shared_expert_gate\.weight$", "L{layer}.shared_router"),
    )
)


def canonical_name(name: str, family: str) -> str | None:
    """The core's name for checkpoint tensor ``name``; None for ignored buffers.

    ``L<i>.experts_gate_up`` and ``L<i>.experts_down`` are the fused 3-D
    expert tensors, which the loader splits per expert.
    """
    if IGNORED.search(name):
        return None
    for pattern, template in _NAMES:
        m = pattern.search(name)
        if m:
            out = template.format(**m.groupdict())
            if out.endswith(".post_attention"):
                # Llama's "post attention" norm is the FFN's input norm;
                # Gemma 2/3 apply it to the attention output.
                suffix = "attn_post_norm" if family in POST_NORMS else "ffn_norm"
                out = out[: -len("post_attention")] + suffix
            return out
    raise RuntimeConfigError(f"tensor {name!r}: the runtime does not know where it goes")


def norm_plus_one(family: str) -> bool:
    """Whether the family's norm weights w act as (1 + w)."""
    return family in GEMMA
