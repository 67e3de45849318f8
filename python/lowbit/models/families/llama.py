"""Llama: the plain decoder every other family is described against."""

from lowbit.models.family import Family

FAMILY = Family(
    "llama",
    "LlamaForCausalLM",
    "llama",
    upcycles_to="mixtral",
    gguf_arch="llama",
    gguf_permutes_qk=True,
)
