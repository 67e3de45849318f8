"""Shared fixtures: every compiled SIMD target and both thread counts."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from lowbit import _core

TARGETS = _core.available_targets()


@pytest.fixture(params=TARGETS)
def simd_target(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the test with dynamic dispatch forced to one compiled target."""
    _core.force_target(request.param)
    try:
        assert _core.dispatched_target() == request.param
        yield request.param
    finally:
        _core.force_target("")


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = _core.num_threads()
    _core.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        _core.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """make(family, dtype="float32", shard_size=None) -> a cached tiny checkpoint directory."""
    from tiny_models import make_tiny_checkpoint

    cache: dict[tuple, object] = {}

    def make(family: str, dtype: str = "float32", shard_size: str | None = None):
        key = (family, dtype, shard_size)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{family}-{dtype}")
            cache[key] = make_tiny_checkpoint(family, out, dtype=dtype, shard_size=shard_size)
        return cache[key]

    return make
