"""Generation on tiny models: greedy against transformers, seeds, EOS, streaming,
tokenizer and chat template, the CLI, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lowbit
import pytest
from lowbit.cli import main
from lowbit.models.tokenizer import TokenizerError
from lowbit.runtime.model import ModelLoadError
from runtime_helpers import prompt_ids
from tiny_tokenizer import write_tiny_tokenizer

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """(source checkpoint, f32 model directory with a tokenizer)."""
    src = tiny_checkpoint("llama")
    out = tmp_path_factory.mktemp("gen") / "model"
    lowbit.convert(src, out, preset="f32", progress=False)
    write_tiny_tokenizer(out)
    return src, out


def test_greedy_generation_matches_transformers(tiny):
    import torch
    import transformers

    src, out = tiny
    ids = prompt_ids(n=8)
    hf = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor(ids)[None], max_new_tokens=24, min_new_tokens=24, do_sample=False
        )[0, len(ids) :].tolist()
    ours = lowbit.load(out).generate(ids.tolist(), max_new_tokens=24, stop_at_eos=False)
    assert ours.tokens == ref
    assert ours.finish_reason == "length"


def test_the_same_seed_gives_the_same_tokens(tiny):
    model = lowbit.load(tiny[1])
    runs = [
        model.generate([5, 6, 7], 20, temperature=1.0, top_p=0.9, seed=s, stop_at_eos=False).tokens
        for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    again = lowbit.load(tiny[1]).generate(
        [5, 6, 7], 20, temperature=1.0, top_p=0.9, seed=1, stop_at_eos=False
    )
    assert again.tokens == runs[0]


def test_top_k_one_is_greedy(tiny):
    model = lowbit.load(tiny[1])
    greedy = model.generate([3, 4], 12, stop_at_eos=False).tokens
    assert (
        model.generate([3, 4], 12, temperature=2.0, top_k=1, seed=0, stop_at_eos=False).tokens
        == greedy
    )


def test_generation_stops_at_eos(tiny, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(tiny[1], out)
    first = lowbit.load(out).generate([9, 10, 11], 5, stop_at_eos=False).tokens
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [first[2], 95]}))
    result = lowbit.load(out).generate([9, 10, 11], 5)
    assert result.finish_reason == "eos"
    assert result.tokens == first[:2]


def test_stream_yields_what_generate_returns_and_text_is_streamed(tiny):
    model = lowbit.load(tiny[1])
    pieces: list[str] = []
    result = model.generate(
        "write a haiku about autumn", 16, stop_at_eos=False, on_text=pieces.append
    )
    assert "".join(pieces) == result.text
    assert result.text == model.tokenizer.decode(result.tokens)
    streamed = list(
        model.stream("write a haiku about autumn", max_new_tokens=16, stop_at_eos=False)
    )
    assert streamed == result.tokens


def test_text_prompt_is_tokenized_with_bos_and_chat_template_applies(tiny):
    model = lowbit.load(tiny[1])
    plain = model.encode_prompt("hello world")
    assert plain[0] == model.tokenizer.token_id("<s>")
    chat = model.encode_prompt("hello world", chat=True)
    assert chat[0] == model.tokenizer.token_id("<s>")
    assert chat[1] == model.tokenizer.token_id("<|user|>")
    assert chat[-1] == model.tokenizer.token_id("<|assistant|>")
    assert model.generate("hello world", 4, chat=True, stop_at_eos=False).tokens


def test_bad_generation_arguments_are_clear_errors(tiny, converted_no_tokenizer):
    model = lowbit.load(tiny[1], context_length=32)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        model.generate([1, 2], -1)
    with pytest.raises(ValueError, match="exceed the context of 32"):
        model.generate(list(range(30)), 8)
    with pytest.raises(ValueError, match="token id 96 at index 1 is outside the vocabulary"):
        model.generate([1, 96], 2)
    with pytest.raises(ValueError, match="token id -1"):
        model.forward([-1])
    with pytest.raises(ValueError, match="non-empty"):
        model.forward([])
    with pytest.raises(ValueError, match="temperature"):
        model.generate([1], 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate([1], 2, top_p=0.0)
    with pytest.raises(ValueError, match="context of 32"):
        model.forward(list(range(33)))
    assert model.generate([1, 2], 0).tokens == []
    with pytest.raises(TokenizerError, match="give the prompt as token ids"):
        lowbit.load(converted_no_tokenizer).generate("hello", 2)


@pytest.fixture(scope="module")
def converted_no_tokenizer(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("notok") / "model"
    lowbit.convert(tiny_checkpoint("qwen3"), out, preset="q4", progress=False)
    return out


def test_a_model_without_tokenizer_runs_on_token_ids(converted_no_tokenizer):
    result = lowbit.load(converted_no_tokenizer).generate([1, 2, 3], 6, stop_at_eos=False)
    assert len(result.tokens) == 6
    assert result.text is None


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: missing"),
        (
            lambda d: _truncate(d / "model.safetensors"),
            "model.safetensors: .* bytes, manifest says",
        ),
        (lambda d: (d / "config.json").write_text("{oops"), "config.json: not valid JSON"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json: missing"),
        (lambda d: _flip_header(d / "model.safetensors"), "model.safetensors"),
    ],
    ids=["missing-weights", "truncated", "bad-config", "no-manifest", "corrupt-header"],
)
def test_a_damaged_model_directory_is_a_clear_error(tiny, tmp_path, damage, message):
    out = tmp_path / "model"
    shutil.copytree(tiny[1], out)
    damage(out)
    with pytest.raises(ValueError, match=message):
        lowbit.load(out)


def test_verify_catches_changed_weight_bytes(tiny, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(tiny[1], out)
    path = out / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    lowbit.load(out)  # sizes and headers are fine
    with pytest.raises(ModelLoadError, match="SHA-256"):
        lowbit.load(out, verify=True)


def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 100)


def _flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:16] = b"garbage!"
    path.write_bytes(bytes(data))


def test_cli_generate_text_ids_and_json(tiny, converted_no_tokenizer, capsys):
    out = str(tiny[1])
    assert (
        main(
            [
                "generate",
                out,
                "-p",
                "write a haiku",
                "-n",
                "8",
                "--seed",
                "1",
                "--temperature",
                "0.7",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "prompt tokens" in captured.err
    assert main(["generate", out, "-p", "write a haiku", "-n", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["tokens"]) <= 8
    assert report["text"] is not None
    assert (
        main(
            ["generate", str(converted_no_tokenizer), "--prompt-ids", "1,2,3", "-n", "4", "--json"]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)["tokens"]) <= 4
    assert main(["generate", out, "--prompt-ids", "1,x"]) == 2
    assert main(["generate", out, "-p", "hi", "-n", "-1"]) == 2
    assert main(["generate", out, "-p", "hi", "--context", "4", "-n", "8"]) == 2
    assert main(["generate", str(tiny[1].parent / "nowhere"), "-p", "hi"]) == 2
    assert "no such model directory" in capsys.readouterr().err


def test_cli_bench_reports_both_tests(tiny, capsys):
    assert main(["bench", str(tiny[1]), "-p", "16", "-n", "8", "-r", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["pp_tokens_per_second"] > 0
    assert r["tg_tokens_per_second"] > 0
    assert r["threads"] >= 1
    assert r["repetitions"] == 2
    assert main(["bench", str(tiny[1]), "-p", "16", "-n", "8", "-r", "1"]) == 0
    assert "pp16" in capsys.readouterr().out
