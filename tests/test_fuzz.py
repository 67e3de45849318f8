"""A small seeded fuzzing budget for every reader (tests/fuzz): no crash, no
hang and no exception other than a LowbitError for any mutated input.

``python -m tests.fuzz --seconds N`` runs a long campaign."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz import READERS, Worker, fuzz_reader, make_seeds

# Inputs per reader: about 30 s in all on a busy 2-core machine.
BUDGET = {
    "source-safetensors": 200,
    "manifest": 60,
    "converted-safetensors": 40,
    "npz": 60,
    "gguf": 200,
    "gguf-import": 10,  # transformers builds a model per input
}
DEFAULT_BUDGET = 300


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    return make_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.mark.parametrize("reader", sorted(READERS))
def test_mutated_inputs_give_clean_errors(reader, seeds, worker, tmp_path):
    stats = fuzz_reader(
        READERS[reader],
        seeds,
        tmp_path,
        inputs=BUDGET.get(reader, DEFAULT_BUDGET),
        seed=12,
        worker=worker,
    )
    assert stats.tried == BUDGET.get(reader, DEFAULT_BUDGET)
    assert stats.counts["clean"] > 0  # the mutations do reach the checks
    problems = "\n".join(f"{o}: {p}\n{d}" for o, p, d in stats.findings)
    assert not stats.findings, problems


def test_the_harness_sees_crashes_hangs_and_unclean_errors(seeds, tmp_path, monkeypatch):
    """The worker reports each outcome (a harness that saw nothing would pass the test above)."""
    import tests.fuzz as fuzz

    w = Worker()
    try:
        for name, outcome in (
            ("_crash", "crash"),
            ("_hang", "hang"),
            ("_unclean", "unclean"),
            ("_clean", "clean"),
        ):
            assert w.run(name, tmp_path, timeout=2.0)[0] == outcome, name
    finally:
        w.close()
    assert set(fuzz.OUTCOMES) == {"clean", "accepted", "crash", "hang", "unclean"}
