"""Gemma 3 (text): Gemma 2's traits; per-layer rope and q/k norms come from
config.json and the checkpoint."""

from lowbit.models.family import Family

FAMILY = Family(
    "gemma3",
    "Gemma3ForCausalLM",
    "gemma3_text",
    norm_plus_one=True,
    embed_scale=True,
    post_norms=True,
    query_pre_attn_scalar=True,
    gelu_is_tanh=True,
    gguf_arch="gemma3",
    gguf_sliding_period=6,
)
