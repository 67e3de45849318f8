"""Bits where they matter: the allocator against brute force, and
--target-bpw on the reference model against the uniform q4 recipe."""

from __future__ import annotations

import itertools

import lowbit
import numpy as np
import pytest
from lowbit.quant.allocate import Candidate, allocate
from lowbit.quant.recipes import Choice


def _problem(seed: int, tensors: int = 5) -> dict[str, list[Candidate]]:
    """Candidates whose loss falls convexly with bits, as quantization error
    does (about 4x less per extra bit), with noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in range(tensors):
        size = float(rng.integers(1, 10))
        scale = float(rng.lognormal(0, 1))
        out[f"t{t}"] = [
            Candidate(Choice("x"), b * size, scale * 4.0 ** (-b) * rng.uniform(0.8, 1.2))
            for b in (2, 3, 4, 5, 8)
        ]
    return out


@pytest.mark.parametrize("seed", range(20))
def test_allocation_is_within_budget_and_near_the_brute_force_optimum(seed):
    problem = _problem(seed)
    budget = sum(min(c.bits for c in v) for v in problem.values()) * 1.6
    picked = allocate(problem, budget)
    assert sum(c.bits for c in picked.values()) <= budget
    best = min(
        sum(c.loss for c in combo)
        for combo in itertools.product(*problem.values())
        if sum(c.bits for c in combo) <= budget
    )
    got = sum(c.loss for c in picked.values())
    # Greedy on convex hulls: optimal up to the one step that did not fit.
    worst_step = max(c.loss for v in problem.values() for c in v)
    assert best <= got <= best + worst_step
    # More budget never costs loss.
    more = allocate(problem, budget * 1.2)
    assert sum(c.loss for c in more.values()) <= got


def test_a_budget_below_the_smallest_recipe_gets_the_smallest():
    problem = _problem(0)
    picked = allocate(problem, 0.0)
    assert all(c.bits == min(x.bits for x in problem[n]) for n, c in picked.items())


def test_dominated_candidates_are_never_picked():
    a = Candidate(Choice("small"), 10, 1.0)
    worse = Candidate(Choice("bigger-but-worse"), 20, 2.0)
    b = Candidate(Choice("big"), 30, 0.1)
    picked = allocate({"t": [a, worse, b]}, 25)
    assert picked["t"] is a
    assert allocate({"t": [a, worse, b]}, 30)["t"] is b


def test_target_bpw_on_the_reference_model_beats_uniform_q4_at_its_size(
    reference_budget, lowbit_validate
):
    """At uniform q4's size over the matrices (5.34 bits per weight, the
    embedding included), the allocated recipe stays within the budget and has
    less mean KL divergence than q4 (on SmolLM2-135M, whose matrices sit on a
    Q4_1 grid that uint4 g32 recovers, so the budget finds that grid)."""
    from lowbit.eval.calibration import Imatrix
    from lowbit.eval.quality import linear_bits_per_weight
    from lowbit.formats.manifest import read as read_manifest

    r = reference_budget
    bits = linear_bits_per_weight(read_manifest(r["out"]).weights)[0]
    assert bits <= r["uniform_bits"] + 1e-9
    ours = lowbit_validate(r["out"], r["src"]).model
    base = lowbit_validate(r["q4"], r["src"]).model
    assert ours["kld_mean"] + 2 * ours["kld_mean_se"] < base["kld_mean"]
    # The gains were measured once and saved with the statistics.
    gains = Imatrix.load(r["imatrix"]).gains
    assert len(gains) == 211
    assert all(g > 0 for g in gains.values())


def test_bisection_finds_the_smallest_budget_within_the_kld():
    from lowbit.eval.max_kld import BPW_RESOLUTION, MaxKldError, bisect_budget

    def kld_at(bpw: float) -> float:  # monotone, as KLD against bits is
        return 4.0 ** (-bpw)

    k = 4.0**-4.3
    chosen, trials = bisect_budget(3.0, 8.5, kld_at, k)
    assert kld_at(chosen) <= k
    assert chosen - 4.3 <= BPW_RESOLUTION
    assert trials[0][0] == 8.5
    assert len(trials) <= 10
    assert bisect_budget(3.0, 8.5, kld_at, 1.0) == (3.0, [(8.5, kld_at(8.5)), (3.0, kld_at(3.0))])
    with pytest.raises(MaxKldError, match="--max-kld 1e-08: the largest recipe"):
        bisect_budget(3.0, 8.5, kld_at, 1e-8)


def test_max_kld_on_the_reference_model_meets_validate(reference_budget, tmp_path, lowbit_validate):
    """--max-kld K: the model passes validate's mean-KLD check at K (the
    search measures exactly as validate does), is smaller than int8
    everywhere, and the manifest records the search."""
    from lowbit.eval.quality import linear_bits_per_weight
    from lowbit.formats.manifest import read as read_manifest

    src = reference_budget["src"]
    out = tmp_path / "within"
    max_kld = 0.05
    imatrix = reference_budget["imatrix"]  # with the gains: not measured again
    lowbit.convert(src, out, "q4", imatrix=imatrix, max_kld=max_kld, progress=False, quiet=True)
    manifest = read_manifest(out)
    budget = manifest.document["recipe"]["calibration"]["budget"]
    assert budget["max_kld"] == max_kld
    assert budget["kld_mean"] <= max_kld
    assert len(budget["trials"]) >= 2
    bits = linear_bits_per_weight(manifest.weights)[0]
    assert bits <= budget["target_bpw"] + 1e-9
    assert bits < 8.0
    report = lowbit_validate(out, src).model
    assert report["kld_mean"] == pytest.approx(budget["kld_mean"], rel=1e-6)
