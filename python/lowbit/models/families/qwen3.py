"""Qwen3: Llama's layout with RMSNorm on each head's queries and keys."""

from lowbit.models.family import Family

FAMILY = Family(
    "qwen3",
    "Qwen3ForCausalLM",
    "qwen3",
    upcycles_to="qwen3_moe",
    gguf_arch="qwen3",
)
