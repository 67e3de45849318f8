"""Gemma: (1 + w) norms, embeddings scaled by sqrt(hidden), tanh GELU."""

from lowbit.models.family import Family

FAMILY = Family(
    "gemma",
    "GemmaForCausalLM",
    "gemma",
    norm_plus_one=True,
    embed_scale=True,
    gelu_is_tanh=True,
    gguf_arch="gemma",
)
