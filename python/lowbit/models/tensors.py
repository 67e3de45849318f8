"""The tensor vocabulary: every kind of checkpoint tensor lowbit knows, in one table.

Each ``TensorKind`` says, for one kind of tensor, the names HuggingFace
checkpoints give it on disk (templates: ``{l}`` a layer index, ``{e}`` an
expert index, ``{w}`` any word characters, ``{*}`` anything), its role (what
recipes choose schemes by) and its slot in the C++ core (the name of a
``lowbit._core.Tensor`` member). Recipes (``role_of``) and the runtime's
loader (``match``) both read this table, so a name means the same to both.

Two reading rules keep today's answers: the first kind whose template fits
wins, and for roles a per-layer name may sit under a prefix
(``language_model.model.layers.0...``) while the runtime places only the
exact names. Kinds without a slot have a role but no place in the core.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ROLES = (
    "embed", "lm_head", "norm",
    "attn_q", "attn_k", "attn_v", "attn_o", "attn_q_norm", "attn_k_norm",
    "ffn_gate", "ffn_up", "ffn_down",
    "router", "expert_gate", "expert_up", "expert_gate_up", "expert_down",
    "shared_gate", "shared_up", "shared_down", "shared_router",
    "bias", "other",
)  # fmt: skip

# Roles of float32 vectors that are RMSNorm weights (Gemma stores them as w of 1 + w).
NORM_ROLES = frozenset({"norm", "attn_q_norm", "attn_k_norm"})


@dataclass(frozen=True)
class TensorKind:
    name: str
    role: str
    hf: tuple[str, ...]  # name templates, see the module docstring
    slot: str | None = None  # lowbit._core.Tensor member; None: the runtime does not place it
    # The slot instead in families with post-norms (Gemma 2/3), where Llama's
    # "post attention" norm is the attention output's rather than the FFN input's.
    post_norm_slot: str | None = None
    # A fused [experts, rows, cols] tensor: the per-expert slots its rows split
    # into, evenly and in this order (gate_up: gate rows first).
    fused: tuple[str, ...] = ()
    ignored: bool = False  # a precomputed buffer the forward pass does not read

    @property
    def is_norm(self) -> bool:
        return self.role in NORM_ROLES


_L = "model.layers.{l}."
# Templates that are also written (by upcycling); {p} is a projection's name in
# the template's own spelling.
DENSE_FFN = _L + "mlp.{p}_proj.weight"  # gate, up, down
MIXTRAL_ROUTER = _L + "block_sparse_moe.gate.weight"
MIXTRAL_EXPERT = _L + "block_sparse_moe.experts.{e}.{p}.weight"  # w1, w3, w2
QWEN_MOE_ROUTER = _L + "mlp.gate.weight"
QWEN_MOE_EXPERT = _L + "mlp.experts.{e}.{p}.weight"  # gate_proj, up_proj, down_proj
SHARED_EXPERT = _L + "mlp.shared_expert.{p}.weight"  # gate_proj, up_proj, down_proj
SHARED_EXPERT_GATE = _L + "mlp.shared_expert_gate.weight"


def _p(template: str, p: str) -> str:
    return template.replace("{p}", p)


def _kind(name: str, role: str, *hf: str, slot: str | None = None, **kw: Any) -> TensorKind:
    return TensorKind(name, role, hf, slot, **kw)


# First match wins (see the module docstring): the kinds without a slot that
# catch the rest of a pattern come after the specific ones.
TENSORS: tuple[TensorKind, ...] = (
    _kind("embed", "embed", "model.embed_tokens.weight", slot="EMBED"),
    # Some exports drop the "model." prefix: recipes know it, the runtime does not.
    _kind("embed_unprefixed", "embed", "embed_tokens.weight"),
    _kind("lm_head", "lm_head", "lm_head.weight", slot="LM_HEAD"),
    _kind("final_norm", "norm", "model.norm.weight", slot="FINAL_NORM"),
    _kind("rotary_inv_freq", "other", "{*}rotary_emb.inv_freq", ignored=True),
    _kind("q", "attn_q", _L + "self_attn.q_proj.weight", slot="Q"),
    _kind("k", "attn_k", _L + "self_attn.k_proj.weight", slot="K"),
    _kind("v", "attn_v", _L + "self_attn.v_proj.weight", slot="V"),
    _kind("o", "attn_o", _L + "self_attn.o_proj.weight", slot="O"),
    _kind("q_bias", "bias", _L + "self_attn.q_proj.bias", slot="Q_BIAS"),
    _kind("k_bias", "bias", _L + "self_attn.k_proj.bias", slot="K_BIAS"),
    _kind("v_bias", "bias", _L + "self_attn.v_proj.bias", slot="V_BIAS"),
    _kind("q_norm", "attn_q_norm", _L + "self_attn.q_norm.weight", slot="Q_NORM"),
    _kind("k_norm", "attn_k_norm", _L + "self_attn.k_norm.weight", slot="K_NORM"),
    _kind("attn_norm", "norm", _L + "input_layernorm.weight", slot="ATTN_NORM"),
    _kind("ffn_norm", "norm", _L + "pre_feedforward_layernorm.weight", slot="FFN_NORM"),
    _kind("ffn_post_norm", "norm", _L + "post_feedforward_layernorm.weight", slot="FFN_POST_NORM"),
    _kind(
        "post_attention_norm",
        "norm",
        _L + "post_attention_layernorm.weight",
        slot="FFN_NORM",
        post_norm_slot="ATTN_POST_NORM",
    ),
    _kind("layer_norm", "norm", _L + "{w}layernorm.weight"),  # any other norm of a layer
    _kind("gate", "ffn_gate", _p(DENSE_FFN, "gate"), slot="GATE"),
    _kind("up", "ffn_up", _p(DENSE_FFN, "up"), slot="UP"),
    _kind("down", "ffn_down", _p(DENSE_FFN, "down"), slot="DOWN"),
    _kind(
        "router",
        "router",
        MIXTRAL_ROUTER,
        QWEN_MOE_ROUTER,
        slot="ROUTER",
    ),
    # Per-expert matrices: Mixtral's w1/w3/w2, Qwen MoE's gate/up/down.
    _kind(
        "expert_gate",
        "expert_gate",
        _p(MIXTRAL_EXPERT, "w1"),
        _p(QWEN_MOE_EXPERT, "gate_proj"),
        slot="EXPERT_GATE",
    ),
    _kind(
        "expert_up",
        "expert_up",
        _p(MIXTRAL_EXPERT, "w3"),
        _p(QWEN_MOE_EXPERT, "up_proj"),
        slot="EXPERT_UP",
    ),
    _kind(
        "expert_down",
        "expert_down",
        _p(MIXTRAL_EXPERT, "w2"),
        _p(QWEN_MOE_EXPERT, "down_proj"),
        slot="EXPERT_DOWN",
    ),
    # The fused 3-D expert tensors newer transformers write.
    _kind(
        "experts_gate_up",
        "expert_gate_up",
        _L + "mlp.experts.gate_up_proj",
        _L + "block_sparse_moe.experts.gate_up_proj",
        fused=("EXPERT_GATE", "EXPERT_UP"),
    ),
    _kind(
        "experts_down",
        "expert_down",
        _L + "mlp.experts.down_proj",
        _L + "block_sparse_moe.experts.down_proj",
        fused=("EXPERT_DOWN",),
    ),
    _kind("shared_gate", "shared_gate", _p(SHARED_EXPERT, "gate_proj"), slot="SHARED_GATE"),
    _kind("shared_up", "shared_up", _p(SHARED_EXPERT, "up_proj"), slot="SHARED_UP"),
    _kind("shared_down", "shared_down", _p(SHARED_EXPERT, "down_proj"), slot="SHARED_DOWN"),
    _kind("shared_router", "shared_router", SHARED_EXPERT_GATE, slot="SHARED_ROUTER"),
    _kind("bias", "bias", "{*}.bias"),  # any other bias
)

_GROUPS = {"{l}": r"(?P<l>\d+)", "{e}": r"(?P<e>\d+)", "{w}": r"\w*", "{*}": r"(?s:.*)"}


def _regex(template: str) -> str:
    return "".join(
        _GROUPS.get(part, re.escape(part)) for part in re.split(r"(\{[lew*]\})", template)
    )


# (pattern, kind), searched: exact names for the runtime; for roles the
# per-layer templates also match under a prefix.
_EXACT: tuple[tuple[re.Pattern[str], TensorKind], ...] = tuple(
    (re.compile("^" + _regex(t) + "$"), k) for k in TENSORS for t in k.hf
)
_ROLE: tuple[tuple[re.Pattern[str], TensorKind], ...] = tuple(
    (re.compile(("" if t.startswith(_L) else "^") + _regex(t) + "$"), k)
    for k in TENSORS
    for t in k.hf
)


@dataclass(frozen=True)
class TensorMatch:
    """A checkpoint tensor read against the vocabulary: its kind and indices."""

    kind: TensorKind
    layer: int | None
    expert: int | None


def _index(text: str | None) -> int | None:
    return None if text is None else int(text)


def _plain(text: str | None) -> bool:
    """An index written as Python would print it (no leading zeros, ASCII digits)."""
    return text is None or (text.isascii() and str(int(text)) == text)


def match(name: str) -> TensorMatch | None:
    """The kind of the tensor named exactly ``name``, with its layer and expert; None
    when no template fits or an index is not plainly written ("03" would collide
    with "3")."""
    for pattern, kind in _EXACT:
        m = pattern.search(name)
        if m:
            layer, expert = m.groupdict().get("l"), m.groupdict().get("e")
            if not (_plain(layer) and _plain(expert)):
                return None
            return TensorMatch(kind, _index(layer), _index(expert))
    return None


def role_of(name: str) -> str:
    """The role of a tensor from its checkpoint name; ``other`` when none fits."""
    for pattern, kind in _ROLE:
        if pattern.search(name):
            return kind.role
    return "other"
