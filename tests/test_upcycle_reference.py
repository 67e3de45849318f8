"""Split upcycling on the reference model (SmolLM2-135M-Instruct, the embedded
default model), 8 experts: all 8 per token is the dense model; 4 per token
halves the FFN and stays within its measured record. The exported checkpoint
runs the same in lowbit's runtime as in transformers."""

from __future__ import annotations

import json
from pathlib import Path

import lowbit
import pytest
from lowbit.cli import main
from lowbit.moe.upcycle import upcycle
from lowbit.sources.default_model import default_model_path
from runtime_helpers import hf_logits, prompt_ids, relative_error

pytest.importorskip("transformers")

# ΔPPL of top-4 of 8 against the dense model, default calibration (16384
# tokens) and evaluation (1024 tokens) text. Measured 2026-12-01 on an Intel
# Xeon, AVX3 with 2 threads and AVX2 with 1 thread, OPENBLAS_NUM_THREADS=1 and
# ATEN_CPU_CAPABILITY=avx2: +76.239% both (the same partition, see
# test_split_determinism.py; before the split ran in float64 the same machine
# gave 82-111% depending on the target and threads). The target of 5%
# is NOT reached (README, "MoE upcycling").
TOP4_MAX_DELTA_PPL_PCT = 85.0
TOP4_MAX_KLD = 0.85  # measured 0.7774 on both targets


@pytest.fixture(scope="module")
def reference() -> Path:
    return default_model_path()


def test_all_eight_experts_are_the_dense_model(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["upcycle", str(reference), str(tmp_path / "top8"), "--experts", "8", "--top-k", "8"]
    assert main([*args, "--mode", "split", "--calibration-tokens", "512", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["load_balance"]["tokens"] == 512
    assert rep["model"]["kld_mean"] < 1e-6
    assert abs(rep["model"]["delta_ppl_pct"]) < 1e-3
    assert rep["model"]["same_top"] == 1.0


def test_top4_halves_the_ffn_within_its_record(reference: Path, tmp_path: Path) -> None:
    moe = tmp_path / "top4"
    rep = upcycle(reference, moe, experts=8, top_k=4, mode="split")
    # 4 of 8 experts plus the router (8 x 576 of 3 x 576 x 1536 multiply-adds).
    assert rep.ffn_flops_vs_dense == pytest.approx(0.5 + 8 / (3 * 1536))
    assert rep.model is not None
    assert rep.model["delta_ppl_pct"] <= TOP4_MAX_DELTA_PPL_PCT
    assert rep.model["kld_mean"] <= TOP4_MAX_KLD
    assert rep.load_balance is not None
    assert min(rep.load_balance["fraction_per_expert_mean"]) > 0.0
    # lowbit's runtime runs the exported checkpoint as transformers does.
    ids = prompt_ids(vocab=49152, n=64)  # SmolLM2's vocabulary
    conv = tmp_path / "top4-f32"
    lowbit.convert(moe, conv, preset="f32", progress=False)
    assert relative_error(lowbit.load(conv).forward(ids), hf_logits(moe, ids)) < 1e-4
