"""Tensor roles per family, presets, REGEX=SCHEME rules and fallbacks."""

from __future__ import annotations

import pytest
from lowbit.models.families import ARCHITECTURES, UnsupportedArchitecture, family_of, role_of
from lowbit.quant.recipes import PRESETS, Choice, Recipe, parse_rule

NAMES = {
    "model.embed_tokens.weight": "embed",
    "lm_head.weight": "lm_head",
    "model.norm.weight": "norm",
    "model.layers.3.input_layernorm.weight": "norm",
    "model.layers.3.pre_feedforward_layernorm.weight": "norm",
    "model.layers.0.self_attn.q_proj.weight": "attn_q",
    "model.layers.0.self_attn.q_proj.bias": "bias",
    "model.layers.0.self_attn.k_norm.weight": "attn_k_norm",
    "model.layers.0.self_attn.o_proj.weight": "attn_o",
    "model.layers.1.mlp.gate_proj.weight": "ffn_gate",
    "model.layers.1.mlp.down_proj.weight": "ffn_down",
    "model.layers.1.block_sparse_moe.gate.weight": "router",
    "model.layers.1.block_sparse_moe.experts.7.w1.weight": "expert_gate",
    "model.layers.1.block_sparse_moe.experts.7.w2.weight": "expert_down",
    "model.layers.1.block_sparse_moe.experts.7.w3.weight": "expert_up",
    "model.layers.1.mlp.gate.weight": "router",
    "model.layers.1.mlp.experts.3.up_proj.weight": "expert_up",
    "model.layers.1.mlp.experts.gate_up_proj": "expert_gate_up",
    "model.layers.1.mlp.shared_expert.down_proj.weight": "shared_down",
    "model.layers.1.mlp.shared_expert_gate.weight": "shared_router",
    "model.rotary_emb.inv_freq": "other",
}


@pytest.mark.parametrize(("name", "role"), NAMES.items())
def test_roles(name, role):
    assert role_of(name) == role


def test_families_from_config():
    assert family_of({"architectures": ["Qwen2MoeForCausalLM"]}).moe
    assert family_of({"model_type": "gemma3_text"}).name == "gemma3"
    with pytest.raises(
        UnsupportedArchitecture,
        match="unsupported architecture 'GPT2LMHeadModel'; supported: LlamaForCausalLM",
    ):
        family_of({"architectures": ["GPT2LMHeadModel"]})
    assert len(ARCHITECTURES) == 10


def test_q4_preset():
    r = Recipe.from_args("q4")
    q = r.plan("model.layers.0.self_attn.q_proj.weight", (64, 64)).choice
    assert q == Choice("uint4", 64, "gptq")
    assert r.calibrated
    assert not Recipe.from_args("q4-nocal").calibrated
    nocal = Recipe.from_args("q4-nocal").plan("model.layers.0.self_attn.q_proj.weight", (64, 64))
    assert nocal.choice == Choice("uint4", 64, "hqq")
    assert r.plan("lm_head.weight", (1000, 64)).choice == Choice("int8", 32)
    assert r.plan("model.layers.0.input_layernorm.weight", (64,)).choice == Choice("f32")
    assert r.plan("model.layers.1.mlp.gate.weight", (8, 64)).choice == Choice("f32")


def test_moe_q4_preset_is_the_reference_recipe():
    r = Recipe.from_args("moe-q4")
    assert r.plan("model.layers.0.self_attn.v_proj.weight", (64, 64)).choice == Choice("int8")
    assert r.plan("model.layers.1.mlp.experts.3.up_proj.weight", (128, 64)).choice == Choice(
        "int4", 32
    )
    assert r.plan("model.embed_tokens.weight", (1000, 64)).choice == Choice("int8")


def test_fallback_is_recorded():
    plan = Recipe.from_args("q4").plan("model.layers.1.mlp.down_proj.weight", (64, 100))
    assert plan.choice == Choice("int8")
    assert plan.fallback == (
        "uint4 group 64 gptq does not fit rows of 100 (64 rows); using int8 per row"
    )


def test_a_smaller_group_of_the_same_scheme_comes_before_the_fallback():
    plan = Recipe.from_args("q4").plan("model.layers.1.mlp.down_proj.weight", (64, 96))
    assert plan.choice == Choice("uint4", 32, "gptq")
    assert plan.fallback == (
        "uint4 group 64 gptq does not fit rows of 96 (64 rows); using uint4 group 32 gptq"
    )


def test_rules_come_before_the_preset_in_order():
    r = Recipe.from_args("q4", [r"down_proj=uint4:128:hqq", r"mlp\.=int8", "embed_tokens=f16"])
    down = r.plan("model.layers.1.mlp.down_proj.weight", (64, 256))
    assert down.choice == Choice("uint4", 128, "hqq")
    assert down.source == "rule: down_proj=uint4:128:hqq"
    assert r.plan("model.layers.1.mlp.up_proj.weight", (64, 256)).choice == Choice("int8")
    assert r.plan("model.embed_tokens.weight", (100, 64)).choice == Choice("f16")
    assert r.plan("model.norm.weight", (64,)).choice == Choice("f32")  # norms stay float32


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("nothing", "expected REGEX=SCHEME"),
        ("(=int8", "bad regular expression"),
        ("x=int3", "unknown scheme 'int3'"),
        ("x=int4:abc", "group 'abc' is not a size or 'row'"),
        ("x=int4:32:hqq", "method 'hqq' does not apply to int4"),
    ],
)
def test_bad_rules(rule, message):
    with pytest.raises(ValueError, match=message):
        parse_rule(rule)


def test_unknown_preset_lists_them():
    with pytest.raises(
        ValueError,
        match="unknown preset 'q3'; presets: f32, f16, bf16, q8, q4, q4-nocal, q4-int4, q5, q6, "
        "moe-q4",
    ):
        Recipe.from_args("q3")
    assert {"bits1", "bits2", "bits4", "bits8", "ternary", "q2"} <= set(PRESETS)
