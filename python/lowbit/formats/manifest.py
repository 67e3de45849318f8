"""The manifest of a converted model directory: what everything in it is.

``manifest.json`` follows ``schemas/manifest.schema.json``, which ships in the
package; the writer validates against it and ``lowbit inspect`` checks it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class FileEntry:
    """A file the manifest lists: its name in the model directory, its size in
    bytes and its SHA-256 (hex)."""

    name: str
    size: int
    sha256: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileEntry:
        return cls(d["name"], d["size"], d["sha256"])

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class StoredNames:
    """The tensors one weight is stored as, and the file that holds them:
    ``values`` (a float weight's values, or codes), ``scales`` and ``zeros``
    (None where the scheme stores none)."""

    file: str
    values: str
    scales: str | None = None
    zeros: str | None = None

    @classmethod
    def of(cls, file: str, name: str, scheme: str) -> StoredNames:
        """The names the writer gives the tensors of weight ``name``."""
        s = get_scheme(scheme)
        return cls(file, **{key: name + s.suffix(key) for key in s.stored_keys})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoredNames:
        return cls(d["file"], d["values"], d.get("scales"), d.get("zeros"))

    def tensors(self) -> dict[str, str]:
        """{key: tensor name} of the stored tensors, the file left out."""
        names = {"values": self.values, "scales": self.scales, "zeros": self.zeros}
        return {k: v for k, v in names.items() if v is not None}

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, **self.tensors()}


@dataclass(frozen=True)
class WeightInfo:
    """What every output format records of a converted weight: the tensor, the
    scheme it was given, and what that cost (stored bits per weight, scales
    and zero points included, and the relative Frobenius error)."""

    name: str
    shape: tuple[int, ...]
    source_dtype: str
    role: str
    scheme: str
    bits: int
    group_size: int | None
    method: str
    bits_per_weight: float
    rel_error: float
    fallback: str | None

    @property
    def size(self) -> int:
        """Number of weights."""
        return math.prod(self.shape)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(rows, cols) as stored: expert stacks flattened to rows."""
        return math.prod(self.shape[:-1]), self.shape[-1]

    def stored_as(self, stored: StoredNames) -> WeightEntry:
        """This weight's manifest entry, stored as ``stored``."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(WeightInfo)}
        return WeightEntry(**fields, stored=stored)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "source_dtype": self.source_dtype,
            "role": self.role,
            "scheme": self.scheme,
            "bits": self.bits,
            "group_size": self.group_size,
            "method": self.method,
            "bits_per_weight": self.bits_per_weight,
            "rel_error": self.rel_error,
            "fallback": self.fallback,
        }


@dataclass(frozen=True)
class WeightEntry(WeightInfo):
    """One weight of a format-1 manifest (``weights/i``), where it is stored included."""

    stored: StoredNames

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeightEntry:
        """The entry of a manifest that passed its schema."""
        return cls(
            name=d["name"],
            shape=tuple(d["shape"]),
            source_dtype=d["source_dtype"],
            role=d["role"],
            scheme=d["scheme"],
            bits=d["bits"],
            group_size=d["group_size"],
            method=d["method"],
            bits_per_weight=d["bits_per_weight"],
            rel_error=d["rel_error"],
            fallback=d["fallback"],
            stored=StoredNames.from_dict(d["stored"]),
        )

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON: the key order lowbit writes, ``stored`` last."""
        return {**super().as_dict(), "stored": self.stored.as_dict()}


@dataclass(frozen=True, eq=False)
class Manifest:
    """A manifest checked against its schema: the document, and for lowbit's
    own format (1) its weights and files as records. The NPZ layout (format
    "2") has neither: its entries are the reference documents', read from the
    document."""

    document: dict[str, Any]
    _weights: tuple[WeightEntry, ...] | None = None
    _files: tuple[FileEntry, ...] | None = None

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Manifest:
        if document["format_version"] != FORMAT_VERSION:
            return cls(document)
        return cls(
            document,
            tuple(WeightEntry.from_dict(w) for w in document["weights"]),
            tuple(FileEntry.from_dict(f) for f in document["files"]),
        )

    @property
    def format_version(self) -> int | str:
        return self.document["format_version"]

    @property
    def model(self) -> dict[str, Any]:
        return self.document["model"]

    @property
    def weights(self) -> tuple[WeightEntry, ...]:
        return self._records(self._weights, "weights")

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return self._records(self._files, "files")

    def _records(self, records: tuple[Any, ...] | None, what: str) -> tuple[Any, ...]:
        if records is None:
            raise ManifestError(
                f"format_version {self.format_version!r} has no lowbit {what} entries; "
                "convert with --format lowbit"
            )
        return records

    def as_dict(self) -> dict[str, Any]:
        """The document, its weights and files written back from the records."""
        if self.format_version != FORMAT_VERSION:
            return self.document
        return {
            **self.document,
            "weights": [w.as_dict() for w in self.weights],
            "files": [f.as_dict() for f in self.files],
        }


# Schema file per format_version: 1 is lowbit's safetensors directory, "2" the
# reference documents' NPZ layout.
SCHEMA_FILES = {1: "manifest.schema.json", "2": "manifest-npz.schema.json"}


def schema(format_version: int | str = FORMAT_VERSION) -> dict[str, Any]:
    name = SCHEMA_FILES[format_version]
    return json.loads(resources.files("lowbit.formats").joinpath(f"schemas/{name}").read_text())


def validate(manifest: dict[str, Any], where: str = MANIFEST_FILE) -> None:
    """Raise ManifestError naming the first field that breaks the schema."""
    _checked(manifest, where)


def _checked(manifest: dict[str, Any], where: str) -> Manifest:
    """``manifest`` checked (see ``validate``) and parsed."""
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int | str) or version not in SCHEMA_FILES:
        known = ", ".join(repr(v) for v in SCHEMA_FILES)
        raise ManifestError(f"{where}: format_version {version!r} is not one of {known}")
    _check_schema(manifest, _validator(version), where)
    parsed = Manifest.from_dict(manifest)
    if version == FORMAT_VERSION:
        for i, w in enumerate(parsed.weights):
            _check_weight(w, f"{where}: weights/{i} ({w.name})")
    if version == "2" and "lowbit" in manifest["model"]:
        # The NPZ layout keeps lowbit's own model section beside the reference
        # one; inspect reads it, so it is held to format 1's model schema.
        _check_schema(manifest["model"]["lowbit"], _validator("model"), f"{where}: model/lowbit")
    return parsed


def _check_weight(w: WeightEntry, where: str) -> None:
    """A weight entry's fields agree with its scheme: the tensors it names are
    the ones the writer makes for that scheme, and the runtime reads exactly them."""
    s = get_scheme(w.scheme)
    if w.bits != s.bits:
        raise ManifestError(f"{where}: bits {w.bits} but scheme {s.name} has {s.bits}")
    if w.group_size is not None and not s.takes_group_size:
        raise ManifestError(f"{where}: group_size: a {s.name} tensor has none")
    expected = StoredNames.of(w.stored.file, w.name, s.name).tensors()
    stored = w.stored.tensors()
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


def read(model_dir: str | Path) -> Manifest:
    """The manifest of ``model_dir``, checked against its schema and parsed."""
    path = Path(model_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(), parse_constant=_no_constant)
    except FileNotFoundError:
        if (Path(model_dir) / "config.json").is_file():
            raise ManifestError(
                f"{path}: missing; {model_dir} looks like a HuggingFace checkpoint "
                f"(config.json, no manifest.json): run `lowbit convert {model_dir} OUT` first"
            ) from None
        raise ManifestError(f"{path}: missing; is {model_dir} a lowbit model directory?") from None
    except (OSError, ValueError, RecursionError) as e:
        raise ManifestError(f"{path}: unreadable ({e})") from None
    parsed = _checked(manifest, str(path))
    check_file_names(parsed, str(path))
    return parsed


def load(model_dir: str | Path) -> dict[str, Any]:
    """The manifest of ``model_dir`` as its JSON document (``read``'s checks)."""
    return read(model_dir).document


def check_file_names(parsed: Manifest, where: str = MANIFEST_FILE) -> None:
    """Every file name in the manifest is a plain name inside its directory.

    Readers join these names to the model directory; ``../x`` or an absolute
    name would have them hash and parse files elsewhere. (Symlinks are checked
    where the files are opened, by lowbit.util.paths.confined.)
    """
    manifest = parsed.document
    names = [(f"files/{i}/name", f.get("name")) for i, f in enumerate(manifest.get("files", []))]
    if parsed.format_version == FORMAT_VERSION:
        names += [(f"weights/{i}/stored/file", w.stored.file) for i, w in enumerate(parsed.weights)]
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
