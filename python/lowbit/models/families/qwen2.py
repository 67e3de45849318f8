"""Qwen2: Llama's layout with q/k/v biases."""

from lowbit.models.family import Family

FAMILY = Family(
    "qwen2",
    "Qwen2ForCausalLM",
    "qwen2",
    upcycles_to="qwen2_moe",
    gguf_arch="qwen2",
)
