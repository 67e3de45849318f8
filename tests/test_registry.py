"""The family registry and the one tensor vocabulary: recipes' roles and the runtime's
core names from the same table, every family registered and tested, the C++ weight keys."""

from __future__ import annotations

import re

import pytest
from lowbit import _core
from lowbit.formats.safetensors import Checkpoint
from lowbit.models import tensors
from lowbit.models.families import ARCHITECTURES, FAMILIES, role_of
from lowbit.runtime.config import RuntimeConfigError, canonical_name
from tiny_models import FAMILIES as TINY

# name -> (role, the core's name; or None: ignored; or RuntimeConfigError: no place).
# {l} and {e} stand for any layer and expert. With post-norms (Gemma 2 and 3) the
# post-attention norm is the attention output's; elsewhere the FFN input's.
POST_ATTENTION = "model.layers.{l}.post_attention_layernorm.weight"
NAMES: dict[str, tuple[str, str | type | None]] = {
    "model.embed_tokens.weight": ("embed", "embed"),
    "lm_head.weight": ("lm_head", "lm_head"),
    "model.norm.weight": ("norm", "final_norm"),
    "model.rotary_emb.inv_freq": ("other", None),
    "model.layers.{l}.self_attn.rotary_emb.inv_freq": ("other", None),
    "model.layers.{l}.input_layernorm.weight": ("norm", "L{l}.attn_norm"),
    "model.layers.{l}.pre_feedforward_layernorm.weight": ("norm", "L{l}.ffn_norm"),
    "model.layers.{l}.post_feedforward_layernorm.weight": ("norm", "L{l}.ffn_post_norm"),
    POST_ATTENTION: ("norm", "L{l}.ffn_norm"),
    "model.layers.{l}.self_attn.q_proj.weight": ("attn_q", "L{l}.q"),
    "model.layers.{l}.self_attn.k_proj.weight": ("attn_k", "L{l}.k"),
    "model.layers.{l}.self_attn.v_proj.weight": ("attn_v", "L{l}.v"),
    "model.layers.{l}.self_attn.o_proj.weight": ("attn_o", "L{l}.o"),
    "model.layers.{l}.self_attn.q_proj.bias": ("bias", "L{l}.q_bias"),
    "model.layers.{l}.self_attn.k_proj.bias": ("bias", "L{l}.k_bias"),
    "model.layers.{l}.self_attn.v_proj.bias": ("bias", "L{l}.v_bias"),
    "model.layers.{l}.self_attn.q_norm.weight": ("attn_q_norm", "L{l}.q_norm"),
    "model.layers.{l}.self_attn.k_norm.weight": ("attn_k_norm", "L{l}.k_norm"),
    "model.layers.{l}.mlp.gate_proj.weight": ("ffn_gate", "L{l}.gate"),
    "model.layers.{l}.mlp.up_proj.weight": ("ffn_up", "L{l}.up"),
    "model.layers.{l}.mlp.down_proj.weight": ("ffn_down", "L{l}.down"),
    "model.layers.{l}.block_sparse_moe.gate.weight": ("router", "L{l}.router"),
    "model.layers.{l}.mlp.gate.weight": ("router", "L{l}.router"),
    # Mixtral's experts
    "model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight": ("expert_gate", "L{l}.E{e}.gate"),
    "model.layers.{l}.block_sparse_moe.experts.{e}.w3.weight": ("expert_up", "L{l}.E{e}.up"),
    "model.layers.{l}.block_sparse_moe.experts.{e}.w2.weight": ("expert_down", "L{l}.E{e}.down"),
    # Qwen MoE's experts
    "model.layers.{l}.mlp.experts.{e}.gate_proj.weight": ("expert_gate", "L{l}.E{e}.gate"),
    "model.layers.{l}.mlp.experts.{e}.up_proj.weight": ("expert_up", "L{l}.E{e}.up"),
    "model.layers.{l}.mlp.experts.{e}.down_proj.weight": ("expert_down", "L{l}.E{e}.down"),
    # fused 3-D experts, split by the loader
    "model.layers.{l}.mlp.experts.gate_up_proj": ("expert_gate_up", "L{l}.experts_gate_up"),
    "model.layers.{l}.mlp.experts.down_proj": ("expert_down", "L{l}.experts_down"),
    "model.layers.{l}.block_sparse_moe.experts.gate_up_proj": (
        "expert_gate_up",
        "L{l}.experts_gate_up",
    ),
    "model.layers.{l}.block_sparse_moe.experts.down_proj": ("expert_down", "L{l}.experts_down"),
    # Qwen2-MoE's shared expert
    "model.layers.{l}.mlp.shared_expert.gate_proj.weight": ("shared_gate", "L{l}.shared_gate"),
    "model.layers.{l}.mlp.shared_expert.up_proj.weight": ("shared_up", "L{l}.shared_up"),
    "model.layers.{l}.mlp.shared_expert.down_proj.weight": ("shared_down", "L{l}.shared_down"),
    "model.layers.{l}.mlp.shared_expert_gate.weight": ("shared_router", "L{l}.shared_router"),
    # Recipes know these; the runtime has no place for them.
    "embed_tokens.weight": ("embed", RuntimeConfigError),
    "model.layers.{l}.self_attn.o_proj.bias": ("bias", RuntimeConfigError),
    "model.layers.{l}.mlp.down_proj.bias": ("bias", RuntimeConfigError),
    "lm_head.bias": ("bias", RuntimeConfigError),
    "model.layers.{l}.some_layernorm.weight": ("norm", RuntimeConfigError),
    "model.layers.{l}.mlp.experts.{e}.w1.weight": ("other", RuntimeConfigError),
    "model.layers.{l}.block_sparse_moe.experts.{e}.gate_proj.weight": ("other", RuntimeConfigError),
    "model.layers.{l}.mlp.shared_expert.gate.weight": ("other", RuntimeConfigError),
    "model.norm.bias": ("bias", RuntimeConfigError),
    "transformer.wte.weight": ("other", RuntimeConfigError),
    # Under a prefix a layer's tensor keeps its role, but the runtime does not place it.
    "language_model.model.layers.{l}.self_attn.q_proj.weight": ("attn_q", RuntimeConfigError),
    "language_model.model.layers.{l}.mlp.experts.gate_up_proj": (
        "expert_gate_up",
        RuntimeConfigError,
    ),
    "language_model.lm_head.weight": ("other", RuntimeConfigError),
    # Indices the core would read as another tensor's ("03" as "3").
    "model.layers.03.self_attn.q_proj.weight": ("attn_q", RuntimeConfigError),
}


def _template(name: str) -> str:
    name = re.sub(r"model\.layers\.\d+\.", "model.layers.{l}.", name)
    return re.sub(r"experts\.\d+\.", "experts.{e}.", name)


def _check(name: str, template: str, family: str) -> None:
    role, core = NAMES[template]
    if template == POST_ATTENTION and FAMILIES[family].post_norms:
        core = "L{l}.attn_post_norm"
    assert role_of(name) == role, name
    if core is RuntimeConfigError:
        with pytest.raises(RuntimeConfigError, match="the runtime does not know where it goes"):
            canonical_name(name, family)
        return
    layer = re.search(r"layers\.(\d+)\.", name)
    expert = re.search(r"experts\.(\d+)\.", name)
    want = None if core is None else core.format(
        l=layer and layer.group(1), e=expert and expert.group(1)
    )  # fmt: skip
    assert canonical_name(name, family) == want, name


@pytest.mark.parametrize("family", sorted(TINY))
def test_every_tiny_family_name_has_its_role_and_core_name(family, tiny_checkpoint):
    names = Checkpoint(tiny_checkpoint(family)).names()
    assert names
    for name in names:
        template = _template(name)
        assert template in NAMES, f"{family}: {name} is not in this test's table"
        _check(name, template, family)


@pytest.mark.parametrize("template", NAMES)
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_listed_names(template, family):
    for layer, expert in ((0, 0), (3, 7), (12, 63)):
        name = template.replace("{l}", str(layer)).replace("{e}", str(expert))
        _check(name, template, family)


def test_every_registered_family_is_a_tiny_family():
    assert sorted(FAMILIES) == sorted(TINY)
    for name, family in FAMILIES.items():
        assert TINY[name][1] == family.architecture
    assert {f.architecture: f for f in FAMILIES.values()} == ARCHITECTURES


def test_upcycling_targets_are_registered_moe_families():
    for family in FAMILIES.values():
        assert family.moe == (family.moe_layout is not None), family.name
        if family.upcycles_to is not None:
            assert not family.moe
            assert FAMILIES[family.upcycles_to].moe


def _slot_of(name: str) -> str | None:
    m = tensors.match(name)
    assert m is not None, name
    return m.kind.slot


def test_written_names_are_in_the_vocabulary():
    """What upcycling writes (MoE layouts) and reads (dense FFN) means the same to
    recipes and the runtime."""
    for p in ("gate", "up", "down"):
        name = tensors.DENSE_FFN.format(l=2, p=p)
        assert role_of(name) == f"ffn_{p}"
        assert _slot_of(name) == p.upper()
    for family in FAMILIES.values():
        layout = family.moe_layout
        if layout is None:
            continue
        router = layout.router.format(l=2)
        assert (role_of(router), _slot_of(router)) == ("router", "ROUTER")
        for p, proj in zip(("gate", "up", "down"), layout.projections, strict=True):
            name = layout.expert.format(l=2, e=5, p=proj)
            assert role_of(name) == f"expert_{p}", name
            assert _slot_of(name) == f"EXPERT_{p.upper()}"
            if layout.shared_expert:
                name = layout.shared_expert.format(l=2, p=proj)
                assert role_of(name) == f"shared_{p}", name
                assert _slot_of(name) == f"SHARED_{p.upper()}"
        if layout.shared_expert_gate:
            gate = layout.shared_expert_gate.format(l=2)
            assert (role_of(gate), _slot_of(gate)) == ("shared_router", "SHARED_ROUTER")


def test_vocabulary_slots_are_the_cores_tensors():
    roles = {k.role for k in tensors.TENSORS}
    assert roles <= set(tensors.ROLES)
    slots = set()
    for k in tensors.TENSORS:
        slots |= {s for s in (k.slot, k.post_norm_slot, *k.fused) if s}
    assert slots == set(_core.Tensor.__members__)
    names = [k.name for k in tensors.TENSORS]
    assert len(names) == len(set(names))


def test_weight_keys_print_and_parse_back():
    for member in _core.Tensor.__members__.values():
        for layer, expert in ((-1, -1), (3, -1), (3, 2)):
            try:
                key = _core.WeightKey(member, layer, expert)
            except ValueError:
                continue
            assert _core.WeightKey.parse(key.name) == key
            assert hash(_core.WeightKey.parse(key.name)) == hash(key)
    assert _core.WeightKey(_core.Tensor.EXPERT_GATE, 3, 2).name == "L3.E2.gate"
    assert _core.WeightKey(_core.Tensor.GATE, 3).name == "L3.gate"
    assert _core.WeightKey(_core.Tensor.EMBED).name == "embed"
    for bad in ("L03.q", "L3.E2.q", "L3.gate.x", "q", "L-1.q", "L3.embed", "E2.gate", "L.q", ""):
        with pytest.raises(ValueError, match="not a weight the model reads"):
            _core.WeightKey.parse(bad)
    with pytest.raises(ValueError, match="needs a layer"):
        _core.WeightKey(_core.Tensor.Q)
    with pytest.raises(ValueError, match="takes no layer"):
        _core.WeightKey(_core.Tensor.EMBED, 0)


@pytest.mark.parametrize("preset", ["f32", "q4"])
def test_fused_expert_stacks_run_like_per_expert_tensors(tiny_checkpoint, tmp_path, preset):
    """The loader splits [experts, rows, cols] stacks into the core's per-expert keys."""
    import json
    import shutil

    import lowbit
    import numpy as np
    from safetensors.numpy import load_file, save_file

    src = tiny_checkpoint("qwen3_moe")
    tensors_in = load_file(src / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    fused = {n: t for n, t in tensors_in.items() if ".mlp.experts." not in n}
    experts = config.get("num_experts") or config["num_local_experts"]
    for layer in range(config["num_hidden_layers"]):

        def stack(p: str, layer: int = layer) -> np.ndarray:
            names = [
                f"model.layers.{layer}.mlp.experts.{e}.{p}_proj.weight" for e in range(experts)
            ]
            return np.stack([tensors_in[n] for n in names])

        prefix = f"model.layers.{layer}.mlp.experts."
        fused[prefix + "gate_up_proj"] = np.concatenate([stack("gate"), stack("up")], axis=1)
        fused[prefix + "down_proj"] = stack("down")
    other = tmp_path / "fused"
    other.mkdir()
    save_file(fused, other / "model.safetensors", {"format": "pt"})
    shutil.copy(src / "config.json", other / "config.json")
    a, b = tmp_path / "a", tmp_path / "b"
    lowbit.convert(src, a, preset=preset, progress=False)
    lowbit.convert(other, b, preset=preset, progress=False)
    stored = [w["name"] for w in json.loads((b / "manifest.json").read_text())["weights"]]
    assert "model.layers.1.mlp.experts.gate_up_proj" in stored
    ids = np.arange(1, 12)
    np.testing.assert_array_equal(lowbit.load(a).forward(ids), lowbit.load(b).forward(ids))
