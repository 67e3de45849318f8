"""Model families: which architectures lowbit knows, one module each, and the role of
each tensor name.

Adding a family
---------------
Add ``lowbit/models/families/<name>.py`` defining ``FAMILY = Family(...)``
(``lowbit.models.family``) and list the module in ``_MODULES`` below (that
order is the order of the "supported:" list in errors). Then add the family
to ``tests/tiny_models.FAMILIES``, so that every test runs it. The fields:

- ``name``: lowbit's name (manifests, messages); ``architecture``: config.json's
  ``architectures[0]``; ``model_type``: its ``model_type``, used when
  ``architectures`` is absent.
- ``norm_plus_one``: RMSNorm weights w act as (1 + w) (Gemma).
- ``embed_scale``: embeddings are multiplied by sqrt(hidden_size) (Gemma).
- ``post_norms``: attention and FFN outputs are normed too, and
  ``post_attention_layernorm`` is the attention output's norm rather than the
  FFN input's (Gemma 2 and 3).
- ``query_pre_attn_scalar``: config.json's ``query_pre_attn_scalar`` sets the
  attention scale, its inverse square root (Gemma 2 and 3).
- ``activation``: the FFN activation when config.json names none;
  ``gelu_is_tanh``: a config's plain ``gelu`` means the tanh approximation.
- ``norm_topk_prob``: None to read config.json's ``norm_topk_prob`` (absent:
  false); True or False when the architecture fixes it (Mixtral: True).
- ``moe``: the FFN is a Mixture of Experts; ``moe_layout``: the names its
  router and experts have (``MoeLayout``), which ``lowbit upcycle`` writes.
- ``upcycles_to``: for a dense family, the name of the MoE family it upcycles
  into (its ``moe_layout`` is used), or None.
- ``gguf_arch``: llama.cpp's architecture name for it (GGUF export);
  ``gguf_permutes_qk``: llama.cpp's rope for it pairs dimensions (i, i + 1)
  instead of (i, i + d / 2), so q and k rows are interleaved per head on
  export (the llama architecture); ``gguf_sliding_period``: llama.cpp fixes
  which layers use sliding-window attention (every layer but each period-th),
  with no key in the file, so a model with other layer types cannot be
  exported (Gemma 2: 2, Gemma 3: 6).

Tensor names come from the one vocabulary in ``lowbit.models.tensors``; a
family whose checkpoints use names it does not list needs rows there too
(a role for recipes, a slot in the C++ core, see src/model/weight_key.h).
The runtime's switches are built from these fields in
``lowbit.runtime.config``; no code outside this package tests a family's name.
"""

from __future__ import annotations

from lowbit.models.families import (
    gemma,
    gemma2,
    gemma3,
    llama,
    mistral,
    mixtral,
    qwen2,
    qwen2_moe,
    qwen3,
    qwen3_moe,
)
from lowbit.models.family import Family
from lowbit.models.tensors import ROLES, role_of
from lowbit.util.errors import LowbitError

__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "ROLES",
    "Family",
    "UnsupportedArchitecture",
    "family_named",
    "family_of",
    "role_of",
]

_MODULES = (llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, mixtral, qwen2_moe, qwen3_moe)

# lowbit's name -> family
FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in _MODULES}
# config.json "architectures"[0] -> family
ARCHITECTURES: dict[str, Family] = {f.architecture: f for f in FAMILIES.values()}


class UnsupportedArchitecture(LowbitError):
    """config.json names an architecture lowbit has no mapping for."""


def family_of(config: dict) -> Family:
    """The family of a model from its config.json contents."""
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        raise UnsupportedArchitecture(f"config.json: architectures: expected a list, got {archs!r}")
    arch = archs[0] if archs else None
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    by_type = {f.model_type: f for f in ARCHITECTURES.values()}
    if not archs and config.get("model_type") in by_type:
        return by_type[config["model_type"]]
    raise UnsupportedArchitecture(
        f"unsupported architecture {arch or config.get('model_type')!r}; "
        f"supported: {', '.join(ARCHITECTURES)}"
    )


def family_named(name: str) -> Family:
    """The family lowbit calls ``name`` (as ``Family.name`` and manifests say)."""
    return FAMILIES[name]
