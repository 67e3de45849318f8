"""Quantization tolerance regression on the reference model, through the
lowbit.testing plugin: every preset stays within its record in
tests/tolerances.toml, and a worse quantizer is caught."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lowbit
import pytest
from lowbit.quant.schemes import SCHEMES
from lowbit.sources.default_model import default_model_path
from lowbit.testing import assert_within_tolerance

pytest.importorskip("transformers")

RECORD = Path(__file__).resolve().parent / "tolerances.toml"


@pytest.fixture(scope="module")
def reference() -> Path:
    return default_model_path()


@pytest.mark.parametrize("preset", ["q8", "q4-nocal", "q4-int4", "q2"])
def test_preset_stays_within_its_record(preset, reference, lowbit_validate, tmp_path):
    out = tmp_path / preset
    lowbit.convert(reference, out, preset=preset, progress=False)
    report = lowbit_validate(out, reference)
    assert report.preset == preset
    assert_within_tolerance(report, RECORD)


@pytest.mark.parametrize("preset", ["q4", "q6"])
def test_calibrated_preset_stays_within_its_record(
    preset, reference_budget, lowbit_validate, tmp_path
):
    """The GPTQ presets, q4 as the budget fixture converted it (a GPTQ pass
    costs ~40 s on SmolLM2); q6 with the fixture's calibration statistics."""
    out = reference_budget["q4"] if preset == "q4" else tmp_path / preset
    if preset != "q4":
        lowbit.convert(
            reference_budget["src"],
            out,
            preset=preset,
            imatrix=reference_budget["imatrix"],
            progress=False,
        )
    report = lowbit_validate(out, reference_budget["src"])
    assert report.preset == preset
    assert_within_tolerance(report, RECORD)


def test_budget_preset_stays_within_its_record(reference_budget, lowbit_validate, tmp_path):
    """q5 (a 5.5 bits-per-weight budget), with the statistics and gains the
    budget fixture measured once."""
    out = tmp_path / "q5"
    imatrix = reference_budget["imatrix"]
    lowbit.convert(reference_budget["src"], out, preset="q5", imatrix=imatrix, progress=False)
    report = lowbit_validate(out, reference_budget["src"])
    assert report.preset == "q5"
    assert_within_tolerance(report, RECORD)


def test_a_worse_int4_quantizer_breaks_the_q4_record(reference, lowbit_validate, tmp_path,
                                                     monkeypatch):  # fmt: skip
    """int4 back to absmax / 7 (15 of its 16 levels): the record catches it."""
    old = dataclasses.replace(SCHEMES["int4"], rule="absmax", scale_divisor=7.0)
    monkeypatch.setitem(SCHEMES, "int4", old)
    out = tmp_path / "q4-absmax"
    lowbit.convert(reference, out, preset="q4-int4", progress=False)
    report = lowbit_validate(out, reference)
    with pytest.raises(AssertionError, match="kld_mean") as failure:
        assert_within_tolerance(report, RECORD)
    assert "relative error" in str(failure.value)


def test_q4_without_calibration_breaks_the_q4_record(reference, lowbit_validate, tmp_path):
    """q4 converted without its calibration statistics (the plain convert:
    gptq falls back to hqq on every tensor) is caught by q4's record."""
    from lowbit.conversion.convert import convert

    out = tmp_path / "q4-uncalibrated"
    convert(reference, out, preset="q4", progress=False)
    report = lowbit_validate(out, reference)
    assert report.preset == "q4"
    with pytest.raises(AssertionError, match="kld_mean"):
        assert_within_tolerance(report, RECORD)
