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


@pytest.fixture(scope="session")
def reference_budget(tmp_path_factory):
    """SmolLM2-135M converted with q4 (calibrating once) and with --target-bpw
    at q4's size (measuring the gains once, saved with the statistics in
    ``imatrix``, which the other budget tests reuse: measuring takes ~2.5 min)."""
    import lowbit
    from lowbit.eval.quality import linear_bits_per_weight
    from lowbit.formats.manifest import read as read_manifest
    from lowbit.sources.default_model import default_model_path

    tmp = tmp_path_factory.mktemp("budget")
    src = default_model_path()
    q4 = tmp / "q4"
    lowbit.convert(src, q4, "q4", progress=False)
    uniform_bits = linear_bits_per_weight(read_manifest(q4).weights)[0]
    out = tmp / "budget"
    imatrix = tmp / "q4.imatrix.safetensors"
    lowbit.convert(src, out, "q4", imatrix=imatrix, target_bpw=uniform_bits, progress=False)
    return {
        "src": src,
        "q4": q4,
        "out": out,
        "uniform_bits": uniform_bits,
        "imatrix": tmp / "budget.imatrix.safetensors",
    }
