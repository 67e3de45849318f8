"""Every input file is validated at its boundary: a bad field is a LowbitError
naming the file and the field, never a KeyError, ZeroDivisionError, hang or
traceback from deep inside (issue 12, finding 7)."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from pathlib import Path

import lowbit
import pytest
from lowbit.eval.tolerances import ToleranceError, load_tolerances
from lowbit.formats.gguf import GGUFError, read_gguf
from lowbit.formats.manifest import ManifestError
from lowbit.formats.manifest import load as load_manifest
from lowbit.formats.safetensors import Checkpoint, CheckpointError
from lowbit.models.config import INT_FIELDS, REQUIRED, ConfigError, check_config, read_config
from lowbit.models.tokenizer import Tokenizer, TokenizerError
from lowbit.runtime.config import core_config
from tiny_gguf import write_tiny_gguf
from tiny_tokenizer import write_tiny_tokenizer

from tests.fuzz.mutate import gguf_parts

BAD_INTS = [2**62, 1e308, float("inf"), float("nan"), -1, 1.5, "8", [8], {"a": 8}, True]


@pytest.fixture(scope="module")
def src(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inputs") / "src"
    shutil.copytree(tiny_checkpoint("llama"), out)
    write_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def converted(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inputs") / "q4"
    lowbit.convert(src, out, preset="q4", progress=False)
    return out


def _config(src: Path) -> dict:
    return json.loads((src / "config.json").read_text())


def _with_config(src: Path, tmp_path: Path, **changes: object) -> Path:
    out = tmp_path / "ck"
    shutil.copytree(src, out)
    config = {**_config(src), **changes}
    for k, v in changes.items():
        if v is _DELETE:
            del config[k]
    (out / "config.json").write_text(json.dumps(config))
    return out


_DELETE = object()


# ---------------------------------------------------------------- config.json


@pytest.mark.parametrize("field", sorted(INT_FIELDS))
@pytest.mark.parametrize("value", BAD_INTS, ids=repr)
def test_every_size_field_out_of_range_names_the_field(src, field, value):
    with pytest.raises(ConfigError, match=rf"config\.json: {field}: "):
        check_config({**_config(src), field: value})


@pytest.mark.parametrize("field", REQUIRED)
def test_a_missing_required_field_is_named(src, field):
    config = _config(src)
    del config[field]
    with pytest.raises(ConfigError, match=rf"config\.json: {field}: missing"):
        check_config(config)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"rope_parameters": 5}, "rope_parameters"),
        ({"rope_parameters": {"rope_theta": "x"}}, "rope_parameters.rope_theta"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            "rope_scaling.original_max_position",
        ),
        ({"rope_scaling": {"rope_type": "linear", "factor": 0}}, "rope_scaling.factor"),
        ({"rope_scaling": [1]}, "rope_scaling"),
        ({"architectures": {"LlamaForCausalLM": 1}}, "architectures"),
        ({"rms_norm_eps": float("inf")}, "rms_norm_eps"),
        ({"rms_norm_eps": 0}, "rms_norm_eps"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"head_dim": 0}, "head_dim"),
        ({"layer_types": ["full_attention"]}, "layer_types"),
        ({"layer_types": "full_attention"}, "layer_types"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
        ({"hidden_act": ["silu"]}, "hidden_act"),
        ({"eos_token_id": [2, "x"]}, "eos_token_id"),
        ({"num_experts_per_tok": 4, "num_local_experts": 2}, "num_experts_per_tok"),
    ],
)
def test_structural_errors_name_the_field(src, changes, field):
    with pytest.raises(ConfigError, match=rf"config\.json: {field}"):
        check_config({**_config(src), **changes})


def test_not_an_object_or_not_json(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"a": ' * 100000)
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_config(tmp_path)


def test_a_valid_config_still_builds_the_runtime_config(src):
    core_config(read_config(src))


@pytest.mark.parametrize("layers", [1e8, 3, 1])
def test_declared_layers_are_checked_against_the_weights(src, tmp_path, layers):
    # 1e8 used to hang (a loop per declared layer); 3 or 1 for a 2-layer
    # checkpoint gave a KeyError or a silently truncated model.
    ck = _with_config(src, tmp_path, num_hidden_layers=layers)
    with pytest.raises(ConfigError, match=r"config\.json: num_hidden_layers"):
        lowbit.convert(ck, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_runtime_checks_its_config_too(converted, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(converted, model)
    config = _config(model)
    config["num_hidden_layers"] = 3
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="num_hidden_layers: says 3 but the weights hold"):
        lowbit.load(model)


# ---------------------------------------------------------------- manifest


def _with_manifest(converted: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "m"
    shutil.copytree(converted, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("weights", 0, "shape"), []),
        (("weights", 0, "shape"), [0, 32]),
        (("weights", 0, "shape"), [1e308, 32]),
        (("weights", 0, "group_size"), 1e308),
        (("weights", 0, "bits"), 7),
        (("weights", 0, "rel_error"), float("inf")),
        (("files", 0, "size"), 1e308),
        (("model", "context_length"), 1e308),
        (("model", "num_layers"), 2**62),
        (("model", "hidden_size"), 0),
    ],
)
def test_manifest_fields_out_of_range(converted, tmp_path, path, value):
    def edit(m: dict) -> None:
        node = m
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value

    out = _with_manifest(converted, tmp_path, edit)
    field = "/".join(str(p) for p in path)
    if value == float("inf"):  # Python's json reads it; no schema bound would refuse it
        field = "unreadable .*Infinity is not a JSON number"
    with pytest.raises(ManifestError, match=rf"manifest\.json: {field}"):
        load_manifest(out)


def test_manifest_weights_must_name_their_schemes_tensors(converted, tmp_path):
    def edit(m: dict) -> None:
        w = next(w for w in m["weights"] if "scales" in w["stored"])
        del w["stored"]["scales"]

    out = _with_manifest(converted, tmp_path, edit)
    with pytest.raises(ManifestError, match=r"weights/\d+ \(.*\): stored: int\d is stored as"):
        lowbit.load(out)


# ---------------------------------------------------------------- tolerances


@pytest.mark.parametrize(
    "content",
    [
        "[weights]\nmax_rel_error = 5\n",
        "[weights.max_rel_error]\n4 = inf\n",
        "[weights.max_rel_error]\n4 = [1]\n",
        "presets = 1\n",
        "[presets]\nq4 = 2\n",
        "weights = 1\n",
    ],
)
def test_bad_tolerance_tables(tmp_path, content):
    path = tmp_path / "tol.toml"
    path.write_text(content)
    with pytest.raises(ToleranceError, match=r"tol\.toml"):
        load_tolerances(path, preset="q4")


# ---------------------------------------------------------------- safetensors


def _write_safetensors(path: Path, header: dict, data: bytes = b"\0" * 64) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]},
        {"dtype": {"a": 1}, "shape": [4], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [1.0e308], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]},
        {"dtype": "F32", "shape": [4], "data_offsets": [0, 2**64]},
        {"dtype": "F32", "shape": [4], "data_offsets": "0-16"},
        [1, 2],
    ],
)
def test_bad_safetensors_header_entries_name_file_and_tensor(tmp_path, entry):
    path = tmp_path / "model.safetensors"
    _write_safetensors(path, {"w": entry})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'w'"):
        Checkpoint(path)


@pytest.mark.parametrize("index", ["[]", '{"weight_map": [1]}', '{"weight_map": {"w": 1}}', "{"])
def test_bad_index_files(tmp_path, index):
    _write_safetensors(tmp_path / "a.safetensors", {})
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json"):
        Checkpoint(tmp_path)


# ---------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def _set_gguf_field(src: Path, dst: Path, key: str, value: int) -> None:
    """A copy of ``src`` with the integer metadata ``key`` set to ``value``."""
    from gguf import GGUFReader

    field = GGUFReader(src).fields[key]
    offset = field.offset + sum(p.nbytes for p in field.parts[: field.data[0]])
    size = field.parts[field.data[0]].nbytes
    data = bytearray(src.read_bytes())
    data[offset : offset + size] = value.to_bytes(size, "little")
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("llama.block_count", 8126466, "llama.block_count: 8126466 is outside"),
        ("llama.block_count", 3, "llama.block_count: says 3 but the file holds tensors of 2"),
        ("llama.block_count", 0, "llama.block_count: 0 is outside"),
        ("llama.embedding_length", 255, "embedding_length: says 255 but token_embd"),
        ("llama.attention.head_count", 0, "head_count: 0 is outside"),
        ("llama.attention.head_count_kv", 3, "head_count_kv: 3 does not divide"),
        ("llama.context_length", 2**32 - 1, "context_length: 4294967295 is outside"),
    ],
)
def test_gguf_metadata_is_checked_before_transformers_builds_a_model(
    gguf_file, tmp_path, key, value, message
):
    bad = tmp_path / "bad.gguf"
    _set_gguf_field(gguf_file, bad, key, value)
    with pytest.raises(GGUFError, match=message):
        read_gguf(bad)
    # The converter stops there too (8M layers used to be built first).
    with pytest.raises(GGUFError, match=r"bad\.gguf"):
        lowbit.convert(bad, tmp_path / "out", progress=False)


def test_every_cut_and_every_declared_field_of_a_gguf_is_a_clean_error(gguf_file, tmp_path):
    data = gguf_file.read_bytes()
    bad = tmp_path / "bad.gguf"
    for cut in range(0, 2048, 7):
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match=r"bad\.gguf"):
            read_gguf(bad)
    for offset, size in gguf_parts(str(gguf_file)):
        raw = bytearray(data)
        raw[offset : offset + min(size, 8)] = b"\xff" * min(size, 8)
        bad.write_bytes(bytes(raw))
        with contextlib.suppress(GGUFError):  # any other exception fails the test
            read_gguf(bad)


# ---------------------------------------------------------------- tokenizer


def _tok_dir(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "tok"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, out / name)
    return out


@pytest.mark.parametrize(
    "content", ['{"model": 5}', "not json", '{"version": "1.0", "model": {"type": "BPE"}}', ""]
)
def test_a_bad_tokenizer_json_is_a_tokenizer_error(src, tmp_path, content):
    d = _tok_dir(src, tmp_path)
    (d / "tokenizer.json").write_text(content)
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        Tokenizer(d)


def test_a_tokenizer_that_panics_when_used_is_a_tokenizer_error(src, tmp_path):
    # Loads fine, then tokenizers panics (a BaseException) on the first encode.
    d = _tok_dir(src, tmp_path)
    tok = json.loads((d / "tokenizer.json").read_text())
    del tok["post_processor"]["special_tokens"]["<s>"]
    (d / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: cannot encode"):
        Tokenizer(d).encode("hello")


@pytest.mark.parametrize(
    "config",
    [
        {"chat_template": [1, 2]},
        {"chat_template": [{"name": "default"}]},
        {"chat_template": 5},
        [1],
    ],
)
def test_bad_tokenizer_config_is_a_tokenizer_error(src, tmp_path, config):
    d = _tok_dir(src, tmp_path)
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json"):
        Tokenizer(d)


# ---------------------------------------------------------------- NPZ


@pytest.fixture(scope="module")
def npz_dir(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inputs") / "npz"
    lowbit.convert(src, out, preset="q4", progress=False, fmt="npz")
    return out


def _inspect_npz_bytes(npz_dir: Path, tmp_path: Path, data: bytes) -> list[str]:
    from lowbit.formats.inspect_model import inspect_model

    out = tmp_path / "n"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(npz_dir, out)
    (out / "model.npz").write_bytes(data)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["metadata"]["size"] = len(data)  # past the size check, to the archive reader
    (out / "manifest.json").write_text(json.dumps(manifest))
    return inspect_model(out).problems


def test_a_damaged_npz_archive_is_a_reported_problem(npz_dir, tmp_path):
    data = (npz_dir / "model.npz").read_bytes()
    # Cut inside members (EOFError from zipfile before) and anywhere else.
    for cut in range(30, len(data), max(1, len(data) // 60)):
        problems = _inspect_npz_bytes(npz_dir, tmp_path, data[:cut])
        assert problems, cut
    # An unknown compression method (NotImplementedError from zipfile before).
    raw = bytearray(data)
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 10 : central + 12] = (99).to_bytes(2, "little")
    problems = _inspect_npz_bytes(npz_dir, tmp_path, bytes(raw))
    assert any("not a readable NPZ file" in p for p in problems), problems


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"head_dim": 0}, "head_dim"), ({"num_attention_heads": 2**62}, "num_attention_heads")],
)
def test_the_cli_reports_a_bad_config_in_one_line_with_exit_2(
    src, tmp_path, capsys, changes, field
):
    from lowbit.cli import main

    ck = _with_config(src, tmp_path, **changes)
    assert main(["convert", str(ck), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "Traceback" not in err
    assert f"config.json: {field}:" in err


def test_upcycle_needs_the_intermediate_size(src, tmp_path):
    from lowbit.moe.upcycle import UpcycleError, upcycle

    ck = _with_config(src, tmp_path, intermediate_size=_DELETE)
    with pytest.raises(UpcycleError, match=r"config\.json: intermediate_size: missing"):
        upcycle(ck, tmp_path / "moe", experts=2, top_k=1)


def test_nan_in_a_stored_vector_is_a_load_error_naming_the_file(converted, tmp_path):
    from lowbit.formats.safetensors import read_header
    from lowbit.runtime.model import ModelLoadError
    from lowbit.util.hashing import file_digest

    model = tmp_path / "m"
    shutil.copytree(converted, model)
    st = model / "model.safetensors"
    info = read_header(st)["model.norm.weight"]
    data = bytearray(st.read_bytes())
    data[info.offset : info.offset + 4] = struct.pack("<f", float("nan"))
    st.write_bytes(bytes(data))
    manifest = json.loads((model / "manifest.json").read_text())
    for f in manifest["files"]:  # consistent hashes: the data itself is what is wrong
        f["sha256"] = file_digest(model / f["name"])
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: model\.norm\.weight: NaN"):
        lowbit.load(model, verify=True)
