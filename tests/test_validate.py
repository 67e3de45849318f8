"""lowbit validate on tiny models: a faithful model passes, a broken one fails
naming the metric, tolerance files are checked, the baseline is cached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit.cli import main
from lowbit.eval.tolerances import ToleranceError, load_tolerances
from lowbit.eval.validate import validate
from lowbit.testing import assert_within_tolerance
from tiny_tokenizer import with_tokenizer_and_text

pytest.importorskip("transformers")

OPTIONS = {"context": 16, "max_tokens": 64}


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    """(baseline with tokenizer, text file, f32 model, q4 model, cache dir).

    "q4" here is q4-nocal (uint4 g64 hqq): the preset q4's GPTQ trades the
    weights' own error for the layer's output error, and on these random
    weights one matrix lands at 10.05% against the 4-bit weight tolerance of
    10%; these tests are about validate, not that trade.
    """
    root = tmp_path_factory.mktemp("validate")
    src, text = with_tokenizer_and_text(tiny_checkpoint("qwen2"), root)
    models = {}
    for name, preset in (("f32", "f32"), ("q4", "q4-nocal")):
        models[name] = root / name
        lowbit.convert(src, models[name], preset=preset, progress=False)
    return src, text, models, root / "cache"


def run(setup, preset: str, **kw):
    src, text, models, cache = setup
    return validate(models[preset], src, [text], baseline_cache=cache, **OPTIONS, **kw)


def test_an_f32_conversion_has_no_measurable_cost(setup):
    report = run(setup, "f32")
    m = report.model
    assert report.ok
    assert m["kld_mean"] < 1e-9
    assert abs(m["delta_ppl_pct"]) < 1e-4
    assert m["same_top"] == 1.0
    assert m["predictions"] == 4 * 15
    assert all(w["rel_error"] == 0.0 for w in report.weights)


def test_q4_reports_every_metric_within_the_default_table(setup):
    report = run(setup, "q4")
    assert report.ok, report.violations
    m = report.model
    assert 0 < m["kld_mean"] < 0.5
    assert m["ppl"] > 1
    assert m["ppl_baseline"] > 1
    w = {x["name"]: x for x in report.weights}["model.layers.0.mlp.up_proj.weight"]
    # q4-nocal: uint4 group 64, in groups of 32 on these rows of 32.
    assert w["scheme"] == "uint4"
    assert 0.05 < w["rel_error"] < 0.10
    assert w["snr_db"] == pytest.approx(-20 * np.log10(w["rel_error"]), rel=1e-6)
    assert 0.99 < w["cosine"] < 1.0


def test_the_baseline_logits_are_cached(setup, monkeypatch):
    run(setup, "q4")
    import transformers

    def no_pytorch(*args, **kwargs):
        raise AssertionError("the baseline was recomputed")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_pytorch)
    assert run(setup, "f32").model["kld_mean"] < 1e-9


def _perturb(model_dir: Path, tensor: str, scale: float) -> None:
    """Multiply one stored float tensor of a model directory in place, and
    refresh the manifest's checksums so only the values are wrong."""
    from lowbit.util.hashing import file_digest

    path = model_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    begin, end = header[tensor]["data_offsets"]
    start = 8 + header_len
    values = np.frombuffer(bytes(data[start + begin : start + end]), np.float32) * scale
    data[start + begin : start + end] = values.astype(np.float32).tobytes()
    path.write_bytes(bytes(data))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for f in manifest["files"]:
        if f["name"] == path.name:
            f["sha256"] = file_digest(path)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def test_a_broken_model_fails_with_exit_1_naming_the_metric(setup, tmp_path, capsys):
    src, text, models, cache = setup
    broken = tmp_path / "broken"
    shutil.copytree(models["f32"], broken)
    _perturb(broken, "model.layers.1.mlp.down_proj.weight", 4.0)
    tol = tmp_path / "tol.toml"
    # Random tiny models predict nearly uniform distributions, so KL stays
    # small; the top token is what moves.
    tol.write_text("[model]\nmin_same_top = 0.95\n")
    code = main(["validate", str(broken), "--baseline", str(src), "--text", str(text),
                 "--context", "16", "--tokens", "64", "--tolerances", str(tol)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "model.layers.1.mlp.down_proj.weight" in err
    assert "relative error 3" in err
    assert "same_top" in err
    report = validate(broken, src, [text], baseline_cache=cache, **OPTIONS)
    with pytest.raises(AssertionError, match="same_top"):
        assert_within_tolerance(report, tol)


def test_cli_json_report_and_exit_0(setup, capsys):
    src, text, models, _ = setup
    code = main(["validate", str(models["q4"]), "--baseline", str(src), "--text", str(text),
                 "--context", "16", "--tokens", "64", "--json"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"]
    assert report["preset"] == "q4-nocal"
    assert set(report["model"]) >= {"ppl", "delta_ppl_pct", "kld_mean", "kld_p99", "same_top"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[model]\nmax_kld_maen = 0.1\n", "unknown key 'max_kld_maen'; expected one of"),
        ("[modle]\nmax_kld_mean = 0.1\n", "unknown key 'modle'"),
        ("[weights.max_rel_error]\n7 = 0.1\n", "is not a bit width"),
        ("[model]\nmax_kld_mean = 'low'\n", "expected a finite number"),
        ("[presets.q4.model]\nmin_same_tpo = 0.9\n", r"\[presets.q4\] \[model\]: unknown key"),
        ("model = [", "not valid TOML"),
    ],
)
def test_a_bad_tolerances_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "tol.toml"
    path.write_text(content)
    with pytest.raises(ToleranceError, match=message):
        load_tolerances(path, preset="q8")


def test_preset_tables_override_the_global_ones(tmp_path):
    path = tmp_path / "tol.toml"
    path.write_text(
        "[model]\nmax_kld_mean = 0.01\n[presets.q4.model]\nmax_kld_mean = 0.05\n"
        "[weights.max_rel_error]\n4 = 0.12\n"
    )
    assert load_tolerances(path, preset="q4").model == {"max_kld_mean": 0.05}
    assert load_tolerances(path, preset="q8").model == {"max_kld_mean": 0.01}
    assert load_tolerances(path).weight_rel_error[4] == 0.12
    assert load_tolerances(path).weight_rel_error[8] == 0.02


def test_a_baseline_of_another_model_is_refused(setup, tiny_checkpoint):
    _, text, models, cache = setup
    with pytest.raises(ValueError, match="baseline"):
        validate(models["q4"], tiny_checkpoint("llama"), [text], baseline_cache=cache, **OPTIONS)


def test_the_plugin_fixtures_are_available(lowbit_validate, lowbit_tolerances, setup):
    src, text, models, _ = setup
    report = lowbit_validate(models["q4"], src, text_files=[text], **OPTIONS)
    assert_within_tolerance(report, lowbit_tolerances)


def test_standard_errors_by_batch_means():
    """Independent values: about sigma / sqrt(n). Correlated runs (a hard
    passage is hard for many tokens): larger than the per-token estimate,
    which would claim differences that are noise."""
    from lowbit.eval.validate import SE_BATCH, batch_means_se

    rng = np.random.default_rng(0)
    n = SE_BATCH * 400
    iid = rng.normal(size=n)
    assert batch_means_se(iid) == pytest.approx(1 / np.sqrt(n), rel=0.2)
    runs = np.repeat(rng.normal(size=n // 16), 16)  # 16 equal values in a row
    naive = runs.std(ddof=1) / np.sqrt(n)
    assert batch_means_se(runs) > 3 * naive


def test_report_gives_standard_errors(setup):
    m = run(setup, "q4").model
    assert 0 < m["kld_mean_se"] < m["kld_mean"]
    assert m["delta_ppl_pct_se"] > 0
