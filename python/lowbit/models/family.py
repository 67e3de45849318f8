"""What a model family is: the traits lowbit reads from it, as one frozen record.

The families themselves are in ``lowbit.models.families``, one module each.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MoeLayout:
    """How an MoE family names its router and experts: what upcycling writes.

    Templates as in ``lowbit.models.tensors``: ``{l}`` layer, ``{e}`` expert,
    ``{p}`` a projection named as ``projections`` says (gate, up, down).
    """

    config_class: str  # the transformers config class
    router: str
    expert: str
    projections: tuple[str, str, str]
    shared_expert: str | None = None  # {l}, {p}: a (sigmoid-gated) shared expert
    shared_expert_gate: str | None = None  # {l}: its gate
    attention_bias: bool = True  # whether the architecture takes q/k/v biases


@dataclass(frozen=True)
class Family:
    """One architecture lowbit supports (see ``lowbit.models.families`` for the fields)."""

    name: str
    architecture: str
    model_type: str
    norm_plus_one: bool = False
    embed_scale: bool = False
    post_norms: bool = False
    query_pre_attn_scalar: bool = False
    activation: str = "silu"
    gelu_is_tanh: bool = False
    norm_topk_prob: bool | None = None
    moe: bool = False
    upcycles_to: str | None = None
    moe_layout: MoeLayout | None = None
    gguf_arch: str | None = None
    gguf_permutes_qk: bool = False
    gguf_sliding_period: int | None = None
