"""Mistral: Llama's layout with sliding-window attention (read from config.json)."""

from lowbit.models.family import Family

FAMILY = Family(
    "mistral",
    "MistralForCausalLM",
    "mistral",
    upcycles_to="mixtral",
    gguf_arch="llama",
    gguf_permutes_qk=True,
)
