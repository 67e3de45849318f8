"""Qwen3-MoE: Qwen3 with routed experts and no shared expert. Qwen3 upcycles into it."""

from lowbit.models import tensors
from lowbit.models.family import Family, MoeLayout

FAMILY = Family(
    "qwen3_moe",
    "Qwen3MoeForCausalLM",
    "qwen3_moe",
    moe=True,
    moe_layout=MoeLayout(
        "Qwen3MoeConfig",
        tensors.QWEN_MOE_ROUTER,
        tensors.QWEN_MOE_EXPERT,
        ("gate_proj", "up_proj", "down_proj"),
    ),
    gguf_arch="qwen3moe",
)
