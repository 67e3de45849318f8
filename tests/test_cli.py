"""The ``lowbit`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

from lowbit.cli import main


def _reject(name: str) -> None:
    raise AssertionError(f"--json printed {name}, which strict JSON parsers reject")


def test_demo_runs_end_to_end_on_the_default_model(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "q4")]) == 0
    out = capsys.readouterr().out
    assert "SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers" in out
    assert "uint4        210" in out
    assert "\nOK\n" in out
    assert "int4     mse       32   4.500" in out
    assert "uint4    whqq     row   4.042" in out  # the calibrated methods too
    assert "within the default tolerances" in out
    assert "perplexity" in out  # validated against PyTorch
    assert "summary: " in out


def test_demo_json(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "q8"), "--preset", "q8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out, parse_constant=_reject)  # strict JSON
    assert report["inspect"]["ok"]
    assert report["validation"]["ok"]  # q8 is within the default tolerances
    assert report["validation"]["model"]["kld_mean"] < 0.002
    assert len(report["reply"]["text"].split()) >= 5
    int8 = next(r for r in report["errors"] if r["scheme"] == "int8")
    assert int8["rel_error"] < 0.02
    assert {r["scheme"] for r in report["errors"]} == {
        "int8", "int4", "uint8", "uint6", "uint5", "uint4", "uint3", "uint2", "uint1", "ternary"
    }  # fmt: skip


def test_python_dash_m_is_the_same_program():
    run = subprocess.run(
        [sys.executable, "-m", "lowbit", "schemes"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0
    assert run.stdout.splitlines()[0].startswith("int8")


def test_bad_usage_exits_2():
    run = subprocess.run(
        [sys.executable, "-m", "lowbit", "inspect", "x", "--context", "-3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "expected a positive integer, got -3" in run.stderr
