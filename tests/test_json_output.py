"""Every ``--json`` output is strict JSON: no ``Infinity`` or ``NaN``, which
JSON parsers of other languages reject (issue 12, finding 8). An exact copy's
``snr_db`` is null with ``exact: true``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.cli import main
from lowbit.util import jsonout
from tiny_tokenizer import with_tokenizer_and_text


def _reject(name: str) -> None:
    raise AssertionError(f"non-strict JSON constant {name}")


def strict_loads(text: str):
    return json.loads(text, parse_constant=_reject)


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    """(source with tokenizer, f32 model, text file)."""
    root = tmp_path_factory.mktemp("json")
    src, text = with_tokenizer_and_text(tiny_checkpoint("qwen2"), root)
    model = root / "f32"
    lowbit.convert(src, model, preset="f32", progress=False)
    return src, model, text


def test_strict_json_replaces_non_finite_numbers_and_says_which():
    value = {"a": math.inf, "b": [1.0, -math.inf, math.nan], "c": np.float32(2.5), "d": np.nan}
    out = strict_loads(jsonout.dumps(value))
    assert out == {
        "a_nonfinite": "inf",
        "a": None,
        "b": [1.0, None, None],
        "c": 2.5,
        "d_nonfinite": "nan",
        "d": None,
    }


def test_convert_and_inspect_json(setup, tmp_path, capsys):
    src, _, _ = setup
    out = tmp_path / "q4"
    assert main(["convert", str(src), str(out), "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["preset"] == "q4"
    assert main(["inspect", str(out), "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["ok"]


def test_schemes_generate_bench_json(setup, capsys):
    _, model, _ = setup
    assert main(["schemes", "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)
    assert main(["generate", str(model), "--prompt-ids", "1,2,3", "-n", "3", "--json"]) == 0
    assert len(strict_loads(capsys.readouterr().out)["tokens"]) <= 3
    assert main(["bench", str(model), "-p", "8", "-n", "4", "-r", "1", "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["repetitions"] == 1


def test_validate_json_of_an_exact_copy_has_null_snr_and_exact(setup, tmp_path, capsys):
    from lowbit.eval.validate import ValidationReport, write_report

    src, model, text = setup
    args = ["validate", str(model), "--baseline", str(src), "--text", str(text),
            "--context", "16", "--tokens", "32", "--json"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Infinity" not in printed
    report = strict_loads(printed)
    exact = [w for w in report["weights"] if w["exact"]]
    assert exact  # f32 copies every weight exactly: snr_db was Infinity before
    assert all(w["snr_db"] is None for w in exact)
    assert all(w["snr_db"] is not None for w in report["weights"] if not w["exact"])
    # The report file validate writes is strict too.
    report_file = tmp_path / "report.json"
    weights = [{"name": "w", "snr_db": math.inf, "exact": True}]
    write_report(ValidationReport("m", "b", None, weights=weights), report_file)
    assert strict_loads(report_file.read_text())["weights"][0]["snr_db"] is None


def test_upcycle_json(tiny_checkpoint, tmp_path, capsys):
    src = str(tiny_checkpoint("qwen3"))
    args = ["upcycle", src, str(tmp_path / "moe"), "--experts", "2", "--top-k", "1"]
    assert main([*args, "--noise", "0.01", "--no-eval", "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["architecture"] == "Qwen3MoeForCausalLM"


def test_every_json_path_uses_the_strict_helper():
    """No --json output is written with json.dumps directly (it allows NaN)."""
    root = Path(lowbit.__file__).parent
    files = [*(root / "cli").glob("*.py"), root / "eval/validate.py", root / "runtime/bench.py"]
    for name in files:
        assert "json.dumps(" not in name.read_text().replace("jsonout.dumps(", ""), name
