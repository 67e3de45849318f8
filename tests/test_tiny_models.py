"""Every family's checkpoint layout: read back, each tensor has a role, each preset plans it."""

from __future__ import annotations

import json

import pytest
from lowbit.formats.safetensors import Checkpoint
from lowbit.models.families import family_of
from lowbit.quant.recipes import PRESETS, Recipe
from tiny_models import FAMILIES, make_tiny_checkpoint


@pytest.fixture(params=sorted(FAMILIES))
def tiny(request, tiny_checkpoint):
    return request.param, tiny_checkpoint(request.param, "bfloat16")


def test_every_tensor_has_a_role_and_a_plan(tiny):
    family, path = tiny
    config = json.loads((path / "config.json").read_text())
    assert family_of(config).name == family
    ck = Checkpoint(path)
    for name in ck.names():
        info = ck.info(name)
        for preset in PRESETS:
            recipe = Recipe.from_args(preset)
            plan = recipe.plan(name, info.shape)
            assert plan.role != "other", name
            # Tiny shapes are multiples of 32: a preset's group of 64 becomes
            # 32 of the same scheme, never another scheme.
            wanted = recipe.preset.by_role.get(plan.role, recipe.preset.default)
            assert plan.fallback is None or plan.choice.scheme == wanted.scheme, plan.fallback
        assert ck.get_float(name).shape == info.shape


def test_sharded_checkpoints_read_like_single_ones(tmp_path):
    single = make_tiny_checkpoint("qwen2", tmp_path / "one", dtype="float32")
    sharded = make_tiny_checkpoint("qwen2", tmp_path / "many", dtype="float32", shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    a, b = Checkpoint(single), Checkpoint(sharded)
    assert sorted(a.names()) == sorted(b.names())
    for name in a.names():
        assert (a.get(name) == b.get(name)).all()
