"""Gemma 2: Gemma, plus norms after attention and FFN and query_pre_attn_scalar
(soft-capping and sliding windows are read from config.json)."""

from lowbit.models.family import Family

FAMILY = Family(
    "gemma2",
    "Gemma2ForCausalLM",
    "gemma2",
    norm_plus_one=True,
    embed_scale=True,
    post_norms=True,
    query_pre_attn_scalar=True,
    gelu_is_tanh=True,
    gguf_arch="gemma2",
    gguf_sliding_period=2,
)
