"""The ``lowbit`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

from lowbit.cli import main


def test_demo_prints_the_error_table(capsys):
    assert main(["demo", "--rows", "64", "--cols", "256"]) == 0
    out = capsys.readouterr().out
    assert "int4     mse       32   4.500" in out
    assert "SIMD target" in out


def test_demo_json_has_every_scheme(capsys):
    assert main(["demo", "--rows", "32", "--cols", "128", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    schemes = {r["scheme"] for r in report["results"]}
    assert schemes == {
        "int8",
        "int4",
        "uint8",
        "uint4",
        "uint2",
        "uint1",
        "ternary",
        "f32",
        "f16",
        "bf16",
    }
    int8 = next(r for r in report["results"] if r["scheme"] == "int8")
    assert int8["rel_error"] < 0.05


def test_python_dash_m_is_the_same_program():
    run = subprocess.run(
        [sys.executable, "-m", "lowbit", "schemes"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0
    assert run.stdout.splitlines()[0].startswith("int8")


def test_bad_usage_exits_2():
    run = subprocess.run(
        [sys.executable, "-m", "lowbit", "demo", "--rows", "-3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "expected a positive integer, got -3" in run.stderr
    assert "Traceback" not in run.stderr
