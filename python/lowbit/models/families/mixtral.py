"""Mixtral: Llama with a Mixture-of-Experts FFN (w1/w3/w2 experts), whose top-k
router weights are always renormalised. Llama and Mistral upcycle into it."""

from lowbit.models import tensors
from lowbit.models.family import Family, MoeLayout

FAMILY = Family(
    "mixtral",
    "MixtralForCausalLM",
    "mixtral",
    norm_topk_prob=True,
    moe=True,
    moe_layout=MoeLayout(
        "MixtralConfig",
        tensors.MIXTRAL_ROUTER,
        tensors.MIXTRAL_EXPERT,
        ("w1", "w3", "w2"),
        attention_bias=False,
    ),
    gguf_arch="llama",
    gguf_permutes_qk=True,
)
