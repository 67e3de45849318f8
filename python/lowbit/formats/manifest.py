"""The manifest of a converted model directory: what everything in it is.

``manifest.json`` follows ``schemas/manifest.schema.json``, which ships in the
package; the writer validates against it and ``lowbit inspect`` checks it.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from lowbit.models.config import head_dim
from lowbit.models.families import family_of
from lowbit.quant.schemes import BLOCK_BYTES, get_scheme
from lowbit.util.errors import LowbitError
from lowbit.util.paths import UnsafePathError, check_name

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

PACKING = {
    "block_bytes": BLOCK_BYTES,
    "layout": (
        "Codes of a row are stored in 16-byte blocks; the code at position k*16 + j of a "
        "block sits in byte j, bits [k*bits, (k+1)*bits). A row's last block is padded with "
        "quantized zeros. 8-bit codes are stored one per byte, unpadded (int8 signed, uint8 "
        "unsigned). Reconstruction: scale * (code - zero), where zero is the stored zero "
        "point (uint*) or the scheme's fixed offset (int8: 0, int4: 8, ternary: 1)."
    ),
    "values": "{name}.codes, {name}.scales [rows, groups], {name}.zeros [rows, groups]",
    "params_dtype": "float16 when grouped, float32 per row",
}


class ManifestError(LowbitError):
    """A manifest that is missing, unreadable or does not match its schema."""


# Schema file per format_version: 1 is lowbit's safetensors directory, "2" the
# reference documents' NPZ layout.
SCHEMA_FILES = {1: "manifest.schema.json", "2": "manifest-npz.schema.json"}


def schema(format_version: int | str = FORMAT_VERSION) -> dict[str, Any]:
    name = SCHEMA_FILES[format_version]
    return json.loads(resources.files("lowbit.formats").joinpath(f"schemas/{name}").read_text())


def validate(manifest: dict[str, Any], where: str = MANIFEST_FILE) -> None:
    """Raise ManifestError naming the first field that breaks the schema."""
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int | str) or version not in SCHEMA_FILES:
        known = ", ".join(repr(v) for v in SCHEMA_FILES)
        raise ManifestError(f"{where}: format_version {version!r} is not one of {known}")
    _check_schema(manifest, _validator(version), where)
    if version == FORMAT_VERSION:
        for i, w in enumerate(manifest["weights"]):
            _check_weight(w, f"{where}: weights/{i} ({w['name']})")
    if version == "2" and "lowbit" in manifest["model"]:
        # The NPZ layout keeps lowbit's own model section beside the reference
        # one; inspect reads it, so it is held to format 1's model schema.
        _check_schema(manifest["model"]["lowbit"], _validator("model"), f"{where}: model/lowbit")


def _check_weight(w: dict[str, Any], where: str) -> None:
    """A weight entry's fields agree with its scheme: the tensors it names are
    the ones the writer makes for that scheme, and the runtime reads exactly them."""
    s = get_scheme(w["scheme"])
    if w["bits"] != s.bits:
        raise ManifestError(f"{where}: bits {w['bits']} but scheme {s.name} has {s.bits}")
    name = w["name"]
    if s.is_float:
        expected = {"values": name}
        if w["group_size"] is not None:
            raise ManifestError(f"{where}: group_size: a {s.name} tensor has none")
    else:
        expected = {"values": f"{name}.codes", "scales": f"{name}.scales"}
        if s.asymmetric:
            expected["zeros"] = f"{name}.zeros"
    stored = {k: v for k, v in w["stored"].items() if k != "file"}
    if stored != expected:
        raise ManifestError(f"{where}: stored: {s.name} is stored as {expected}, not {stored}")


@functools.cache
def _validator(version: int | str) -> Any:  # a jsonschema Validator
    """The schema's validator, made once: checking the schema itself took most
    of the time of every ``load`` (twice per model load)."""
    doc = schema(1)["properties"]["model"] if version == "model" else schema(version)
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    return cls(doc)


def _check_schema(document: Any, validator: Any, where: str) -> None:
    # best_match: the error jsonschema.validate would raise.
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ManifestError(f"{where}: {path}: {error.message}")


def _no_constant(name: str) -> None:
    # Python's json reads NaN and Infinity, which no schema bound excludes.
    raise ValueError(f"{name} is not a JSON number")


def load(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(), parse_constant=_no_constant)
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing; is {model_dir} a lowbit model directory?") from None
    except (OSError, ValueError, RecursionError) as e:
        raise ManifestError(f"{path}: unreadable ({e})") from None
    validate(manifest, str(path))
    check_file_names(manifest, str(path))
    return manifest


def check_file_names(manifest: dict[str, Any], where: str = MANIFEST_FILE) -> None:
    """Every file name in the manifest is a plain name inside its directory.

    Readers join these names to the model directory; ``../x`` or an absolute
    name would have them hash and parse files elsewhere. (Symlinks are checked
    where the files are opened, by lowbit.util.paths.confined.)
    """
    names = [(f"files/{i}/name", f.get("name")) for i, f in enumerate(manifest.get("files", []))]
    names += [
        (f"weights/{i}/stored/file", w["stored"].get("file"))
        for i, w in enumerate(manifest.get("weights", []))
        if isinstance(w.get("stored"), dict)
    ]
    if isinstance(manifest.get("metadata"), dict):
        names.append(("metadata/file", manifest["metadata"].get("file")))
    for key, entries in side_file_entries(manifest):
        names += [(f"{key}/{i}/name", f.get("name")) for i, f in enumerate(entries)]
    try:
        for field, name in names:
            check_name(name, f"{where}: {field}")
    except UnsafePathError as e:
        raise ManifestError(str(e)) from None


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    params = config.get("rope_parameters") or {}
    theta = params.get("rope_theta") or config.get("rope_theta") or 10000.0
    scaling = config.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    return {"theta": float(theta), "scaling": scaling}


def describe_model(config: dict[str, Any], name: str, tied: bool) -> dict[str, Any]:
    """The ``model`` section from a HuggingFace config.json."""
    family = family_of(config)
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return {
        "name": name,
        "family": family.name,
        "architecture": (config.get("architectures") or [family.model_type])[0],
        "model_type": config.get("model_type", family.model_type),
        "hidden_size": hidden,
        "num_layers": int(config["num_hidden_layers"]),
        "num_heads": heads,
        "num_kv_heads": int(config.get("num_key_value_heads") or heads),
        "head_dim": head_dim(config),
        "intermediate_size": int(
            config.get("intermediate_size") or config.get("moe_intermediate_size") or 1
        ),
        "vocab_size": int(config["vocab_size"]),
        "context_length": int(config.get("max_position_embeddings") or 2048),
        "rope": _rope(config),
        "tie_word_embeddings": tied,
        "num_experts": int(config.get("num_local_experts") or config.get("num_experts") or 0),
        "experts_per_token": int(config.get("num_experts_per_tok") or 0),
    }


def side_file_entries(manifest: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """[(field path, entries)] of the side files the manifest hashes: none for a
    directory written before lowbit recorded them."""
    if isinstance(manifest.get("side_files"), list):
        return [("side_files", manifest["side_files"])]
    meta = manifest.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("side_files"), list):
        return [("metadata/side_files", meta["side_files"])]
    return []
