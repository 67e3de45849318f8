"""lowbit never runs code from a model directory: ``auto_map`` checkpoints are
refused by every reader, transformers is never allowed to import a model's own
modules, and a chat template is bounded in time and size."""

from __future__ import annotations

import builtins
import json
import shutil
import time
from pathlib import Path

import lowbit
import pytest
from lowbit.cli import main
from lowbit.formats.safetensors import CustomCodeError
from lowbit.models.tokenizer import Tokenizer, TokenizerError
from tiny_tokenizer import write_tiny_tokenizer

pytest.importorskip("transformers")

# A model's own module: importing it leaves a marker file, so a test can tell
# whether anything ran it.
EVIL_MODULE = """
from pathlib import Path
Path(__file__).with_name("RAN").write_text("the model's code ran")
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast


class EvilConfig(PretrainedConfig):
    model_type = "evil-custom"


class EvilModel(PreTrainedModel):
    config_class = EvilConfig


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""
AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}


def plant_code(directory: Path, config_file: str, auto_map: dict) -> None:
    """Give ``config_file`` in ``directory`` an auto_map pointing at evil.py."""
    (directory / "evil.py").write_text(EVIL_MODULE)
    path = directory / config_file
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["auto_map"] = auto_map
    if config_file == "config.json":
        data["model_type"] = "evil-custom"  # not a transformers model: it would ask
    path.write_text(json.dumps(data))


@pytest.fixture
def evil_src(tiny_checkpoint, tmp_path) -> Path:
    src = tmp_path / "evil"
    shutil.copytree(tiny_checkpoint("llama"), src)
    plant_code(src, "config.json", AUTO_MAP)
    return src


@pytest.fixture
def say_yes(monkeypatch):
    """Answer "y" to transformers' "run the custom code?" question."""
    monkeypatch.setattr(builtins, "input", lambda *a: "y")


def test_convert_refuses_an_auto_map_checkpoint(evil_src, tmp_path, capsys, say_yes):
    assert main(["convert", str(evil_src), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "config.json: auto_map" in err
    assert "never runs code" in err
    assert not (evil_src / "RAN").exists()
    assert not (tmp_path / "out").exists()


def test_validate_refuses_an_auto_map_baseline(
    evil_src, tiny_checkpoint, tmp_path, capsys, say_yes
):
    model = tmp_path / "model"
    lowbit.convert(tiny_checkpoint("llama"), model, preset="f32", progress=False)
    code = main(["validate", str(model), "--baseline", str(evil_src)])
    assert code == 2
    assert "config.json: auto_map" in capsys.readouterr().err
    assert not (evil_src / "RAN").exists()


def test_transformers_is_never_allowed_to_run_it(evil_src, tmp_path, monkeypatch, say_yes):
    """Behind the auto_map check, trust_remote_code=False: with the check
    switched off and the user answering "y", the module still does not run."""
    from lowbit.eval import validate
    from lowbit.eval.text import EvalWindows

    monkeypatch.setattr(validate, "refuse_custom_code", lambda d: None)
    windows = EvalWindows(__import__("numpy").zeros((1, 4), "int64"), 4, "t")
    with pytest.raises(ValueError, match="trust_remote_code"):
        validate.baseline_logits(evil_src, windows, tmp_path / "cache")
    assert not (evil_src / "RAN").exists()


def test_load_refuses_a_model_directory_with_auto_map(tiny_checkpoint, tmp_path):
    model = tmp_path / "model"
    lowbit.convert(tiny_checkpoint("llama"), model, preset="f32", progress=False)
    write_tiny_tokenizer(model)
    plant_code(model, "tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTokenizer", None]})
    with pytest.raises(CustomCodeError, match=r"tokenizer_config.json: auto_map"):
        lowbit.load(model)


def test_a_gguf_with_a_hostile_tokenizer_config_beside_it_is_refused(tmp_path, capsys, say_yes):
    from tiny_gguf import write_tiny_gguf

    gguf = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf)
    plant_code(tmp_path, "tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTokenizer", None]})
    assert main(["convert", str(gguf), str(tmp_path / "out"), "--quiet"]) == 2
    assert "tokenizer_config.json: auto_map" in capsys.readouterr().err
    assert not (tmp_path / "RAN").exists()


# ------------------------------------------------------------ chat templates

HOSTILE_TEMPLATES = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}",
    "huge string": "{{ 'a' * 2000000000 }}",
    "huge string, float count": "{{ 'a' * 2e9 }}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "huge power": "{{ 10 ** 100000000 }}",
    "huge width (filter)": "{{ 'a' | center(2000000000) }}",
    "huge width (method)": "{{ 'a'.ljust(2000000000) }}",
    "huge width (format)": "{{ '{:>2000000000}'.format(1) }}",
    "huge width (%)": "{{ '%2000000000d' % 1 }}",
    "endless output": "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "type error": "{{ messages + 1 }}",
    "its own error": "{{ raise_exception('no system role') }}",
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    write_tiny_tokenizer(d)
    return d


@pytest.mark.parametrize("name", list(HOSTILE_TEMPLATES))
def test_a_hostile_chat_template_is_refused_quickly(tokenizer_dir, tmp_path, name):
    d = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, d)
    (d / "chat_template.jinja").write_text(HOSTILE_TEMPLATES[name])
    tok = Tokenizer(d)
    t0 = time.monotonic()
    with pytest.raises(TokenizerError, match=r"chat_template\.jinja"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 6.0  # the bound is 2 s; slack for a loaded machine


def test_a_real_template_still_renders_and_the_trace_is_restored(tokenizer_dir):
    import sys

    before = sys.gettrace()
    text = Tokenizer(tokenizer_dir).apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<s><|user|>hi</s><|assistant|>"
    assert sys.gettrace() is before
