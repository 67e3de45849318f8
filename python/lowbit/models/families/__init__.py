"""Model families: which architectures lowbit knows, and the role of each tensor name.

Roles are what recipes choose schemes by. They are read from the names that
HuggingFace checkpoints use on disk, for every family in DESIGN.md, never from
a model's size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lowbit.util.errors import LowbitError


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    moe: bool = False


# config.json "architectures"[0] -> family
ARCHITECTURES: dict[str, Family] = {
    "LlamaForCausalLM": Family("llama", "llama"),
    "MistralForCausalLM": Family("mistral", "mistral"),
    "Qwen2ForCausalLM": Family("qwen2", "qwen2"),
    "Qwen3ForCausalLM": Family("qwen3", "qwen3"),
    "GemmaForCausalLM": Family("gemma", "gemma"),
    "Gemma2ForCausalLM": Family("gemma2", "gemma2"),
    "Gemma3ForCausalLM": Family("gemma3", "gemma3_text"),
    "MixtralForCausalLM": Family("mixtral", "mixtral", moe=True),
    "Qwen2MoeForCausalLM": Family("qwen2_moe", "qwen2_moe", moe=True),
    "Qwen3MoeForCausalLM": Family("qwen3_moe", "qwen3_moe", moe=True),
}

ROLES = (
    "embed", "lm_head", "norm",
    "attn_q", "attn_k", "attn_v", "attn_o", "attn_q_norm", "attn_k_norm",
    "ffn_gate", "ffn_up", "ffn_down",
    "router", "expert_gate", "expert_up", "expert_gate_up", "expert_down",
    "shared_gate", "shared_up", "shared_down", "shared_router",
    "bias", "other",
)  # fmt: skip


class UnsupportedArchitecture(LowbitError):
    """config.json names an architecture lowbit has no mapping for."""


def family_of(config: dict) -> Family:
    """The family of a model from its config.json contents."""
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        raise UnsupportedArchitecture(f"config.json: architectures: expected a list, got {archs!r}")
    arch = archs[0] if archs else None
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    by_type = {f.model_type: f for f in ARCHITECTURES.values()}
    if not archs and config.get("model_type") in by_type:
        return by_type[config["model_type"]]
    raise UnsupportedArchitecture(
        f"unsupported architecture {arch or config.get('model_type')!r}; "
        f"supported: {', '.join(ARCHITECTURES)}"
    )


_LAYER = r"model\.layers\.\d+\."
# (pattern on the full tensor name, role); first match wins. Covers the
# per-expert names of the Hub's checkpoints (Mixtral's w1/w3/w2, Qwen's
# gate/up/down) and the fused 3-D expert tensors newer transformers write.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), role)
    for p, role in (
        (r"\.bias$", "bias"),
        (r"^(model\.)?embed_tokens\.weight$", "embed"),
        (r"^lm_head\.weight$", "lm_head"),
        (r"^model\.norm\.weight$", "norm"),
        (_LAYER + r"self_attn\.q_proj\.weight$", "attn_q"),
        (_LAYER + r"self_attn\.k_proj\.weight$", "attn_k"),
        (_LAYER + r"self_attn\.v_proj\.weight$", "attn_v"),
        (_LAYER + r"self_attn\.o_proj\.weight$", "attn_o"),
        (_LAYER + r"self_attn\.q_norm\.weight$", "attn_q_norm"),
        (_LAYER + r"self_attn\.k_norm\.weight$", "attn_k_norm"),
        (_LAYER + r"\w*layernorm\.weight$", "norm"),
        (_LAYER + r"mlp\.gate_proj\.weight$", "ffn_gate"),
        (_LAYER + r"mlp\.up_proj\.weight$", "ffn_up"),
        (_LAYER + r"mlp\.down_proj\.weight$", "ffn_down"),
        (_LAYER + r"(block_sparse_moe|mlp)\.gate\.weight$", "router"),
        (_LAYER + r"block_sparse_moe\.experts\.\d+\.w1\.weight$", "expert_gate"),
        (_LAYER + r"block_sparse_moe\.experts\.\d+\.w3\.weight$", "expert_up"),
        (_LAYER + r"block_sparse_moe\.experts\.\d+\.w2\.weight$", "expert_down"),
        (_LAYER + r"mlp\.experts\.\d+\.gate_proj\.weight$", "expert_gate"),
        (_LAYER + r"mlp\.experts\.\d+\.up_proj\.weight$", "expert_up"),
        (_LAYER + r"mlp\.experts\.\d+\.down_proj\.weight$", "expert_down"),
        (_LAYER + r"(mlp|block_sparse_moe)\.experts\.gate_up_proj$", "expert_gate_up"),
        (_LAYER + r"(mlp|block_sparse_moe)\.experts\.down_proj$", "expert_down"),
        (_LAYER + r"mlp\.shared_expert\.gate_proj\.weight$", "shared_gate"),
        (_LAYER + r"mlp\.shared_expert\.up_proj\.weight$", "shared_up"),
        (_LAYER + r"mlp\.shared_expert\.down_proj\.weight$", "shared_down"),
        (_LAYER + r"mlp\.shared_expert_gate\.weight$", "shared_router"),
    )
)


def role_of(name: str) -> str:
    """The role of a tensor from its checkpoint name; ``other`` when none fits."""
    for pattern, role in _RULES:
        if pattern.search(name):
            return role
    return "other"
