"""What the forward pass needs from config.json: dimensions, the features each
family switches on, and where every checkpoint tensor goes in the core.

The C++ model knows no family by name (src/model/model.h); this module turns
a family's traits (``lowbit.models.families``) and config into switches (norm
form, activation, scaling, windows, rope per layer, routing), and its tensor
names (``lowbit.models.tensors``) into the core's weight keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit import _core
from lowbit.models.config import head_dim as model_head_dim
from lowbit.models.families import Family, family_named, family_of
from lowbit.models.rope import inv_freq, rope_parameters
from lowbit.models.tensors import TensorKind, match
from lowbit.util.errors import LowbitError

_ACTIVATIONS = {
    "silu": _core.Activation.SILU,
    "swish": _core.Activation.SILU,
    "gelu_pytorch_tanh": _core.Activation.GELU_TANH,
    "gelu_tanh": _core.Activation.GELU_TANH,
}


class RuntimeConfigError(LowbitError):
    """config.json describes something the runtime cannot run."""


def _activation(config: dict[str, Any], family: Family) -> _core.Activation:
    name = config.get("hidden_activation") or config.get("hidden_act") or family.activation
    if family.gelu_is_tanh and name == "gelu":
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
    family = family_of(config)
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
    if family.embed_scale:
        # HF multiplies by the normaliser rounded to the hidden states' dtype.
        c.embed_scale = float(np.float32(math.sqrt(hidden)))
    scalar = config.get("query_pre_attn_scalar") if family.query_pre_attn_scalar else None
    c.attn_scale = float(scalar) ** -0.5 if scalar else head_dim**-0.5
    c.attn_softcap = float(config.get("attn_logit_softcapping") or 0.0)
    c.final_softcap = float(config.get("final_logit_softcapping") or 0.0)
    c.experts_per_token = int(config.get("num_experts_per_tok") or 0)
    # Mixtral always renormalises its top-k weights; Qwen's MoE models say.
    fixed = family.norm_topk_prob
    c.norm_topk_prob = bool(config.get("norm_topk_prob", False)) if fixed is None else fixed
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


@dataclass(frozen=True)
class CoreTensor:
    """Where one checkpoint tensor goes in the core."""

    kind: TensorKind
    name: str  # the core's name, as its errors print it: "L3.q", "L3.E2.gate"
    key: _core.WeightKey | None  # None for a fused expert stack
    layer: int

    def expert_keys(self, expert: int) -> list[_core.WeightKey]:
        """A fused stack's per-expert keys, in the order its rows hold them."""
        return [_core.WeightKey(_tensor(s), self.layer, expert) for s in self.kind.fused]


def _tensor(slot: str) -> _core.Tensor:
    return getattr(_core.Tensor, slot)


def _family(family: Family | str) -> Family:
    return family if isinstance(family, Family) else family_named(family)


def core_tensor(name: str, family: Family | str) -> CoreTensor | None:
    """Where checkpoint tensor ``name`` goes; None for buffers the forward pass
    does not read; RuntimeConfigError for a name the runtime has no place for."""
    m = match(name)
    if m is not None and m.kind.ignored:
        return None
    if m is None or (m.kind.slot is None and not m.kind.fused):
        raise RuntimeConfigError(f"tensor {name!r}: the runtime does not know where it goes")
    layer = -1 if m.layer is None else m.layer
    if m.kind.fused:
        return CoreTensor(m.kind, f"L{layer}.{m.kind.name}", None, layer)
    slot = m.kind.slot
    if _family(family).post_norms and m.kind.post_norm_slot:
        slot = m.kind.post_norm_slot
    assert slot is not None
    try:
        key = _core.WeightKey(_tensor(slot), layer, -1 if m.expert is None else m.expert)
    except ValueError as e:  # an index past the core's int32
        raise RuntimeConfigError(f"tensor {name!r}: {e}") from None
    return CoreTensor(m.kind, key.name, key, layer)


def canonical_name(name: str, family: Family | str) -> str | None:
    """The core's name for checkpoint tensor ``name``; None for ignored buffers.

    ``L<i>.experts_gate_up`` and ``L<i>.experts_down`` are the fused 3-D
    expert tensors, which the loader splits per expert.
    """
    place = core_tensor(name, family)
    return None if place is None else place.name


def norm_plus_one(family: Family | str) -> bool:
    """Whether the family's norm weights w act as (1 + w)."""
    return _family(family).norm_plus_one
