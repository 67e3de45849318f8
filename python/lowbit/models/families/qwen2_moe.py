"""Qwen2-MoE: Qwen2 with routed experts and a sigmoid-gated shared expert. Qwen2
upcycles into it."""

from lowbit.models import tensors
from lowbit.models.family import Family, MoeLayout

FAMILY = Family(
    "qwen2_moe",
    "Qwen2MoeForCausalLM",
    "qwen2_moe",
    moe=True,
    moe_layout=MoeLayout(
        "Qwen2MoeConfig",
        tensors.QWEN_MOE_ROUTER,
        tensors.QWEN_MOE_EXPERT,
        ("gate_proj", "up_proj", "down_proj"),
        shared_expert=tensors.SHARED_EXPERT,
        shared_expert_gate=tensors.SHARED_EXPERT_GATE,
    ),
    gguf_arch="qwen2moe",
)
