"""``lowbit convert``: a HuggingFace checkpoint into a compact model directory.

Streams one tensor at a time: read (memory-mapped safetensors), quantize in the
C++ core, measure its error, write. Output goes to ``OUT.partial`` and is
renamed to ``OUT`` only when everything, manifest included, is on disk, so an
interrupted run never leaves a directory that looks complete.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lowbit._version import __version__
from lowbit.formats.gguf import import_gguf, is_gguf
from lowbit.formats.layout import stored_specs
from lowbit.formats.manifest import FORMAT_VERSION, MANIFEST_FILE, PACKING, describe_model, validate
from lowbit.formats.npz import (
    NPZ_FILE,
    NPZ_FORMAT_VERSION,
    RECONSTRUCTION,
    NpzWriter,
    member_key,
    reference_model,
    unpacked_arrays,
)
from lowbit.formats.npz import weight_entry as npz_weight_entry
from lowbit.formats.safetensors import Checkpoint, CheckpointError, StreamingWriter, TensorSpec
from lowbit.models.config import check_layers, read_config
from lowbit.quant.dtypes import FLOAT_SCHEME_DTYPES, cast
from lowbit.quant.quantize import QuantizedTensor, quantize
from lowbit.quant.recipes import Recipe, TensorPlan
from lowbit.quant.schemes import get_scheme
from lowbit.util.errors import LowbitError
from lowbit.util.hashing import file_digest
from lowbit.util.outdir import check_target, copy_side_files, writing

# Output formats: lowbit's safetensors directory, or the reference documents' NPZ.
FORMATS = ("lowbit", "npz")

DEFAULT_SHARD_BYTES = 4 << 30


class ConvertError(LowbitError):
    """Bad input to a conversion: printed without a traceback, exit code 2."""


@dataclass
class ConvertSummary:
    out: str
    preset: str
    tensors: int
    source_bytes: int
    output_bytes: int
    quantized_bits_per_weight: float
    seconds: float
    fallbacks: list[str] = field(default_factory=list)
    by_scheme: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _stored_specs(plan: TensorPlan) -> list[TensorSpec]:
    return stored_specs(plan.name, plan.shape, plan.choice.scheme, plan.choice.group_size)


def _shards(plans: list[TensorPlan], max_bytes: int) -> list[list[TensorPlan]]:
    """Consecutive weights grouped into files of at most ``max_bytes`` (one weight never split)."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for p in plans:
        n = sum(s.nbytes for s in _stored_specs(p))
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += n
    return shards


def _read(ck: Checkpoint, plan: TensorPlan) -> np.ndarray:
    """A tensor to convert; matrices must be stored as float32, float16 or bfloat16."""
    return ck.get_float(plan.name) if len(plan.shape) >= 2 else ck.get(plan.name)


def _encode(plan: TensorPlan, x: np.ndarray) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Quantize one weight: its stored arrays and its manifest entry (without ``stored``)."""
    s = get_scheme(plan.choice.scheme)
    flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x)
    if s.is_float:
        values = cast(x, FLOAT_SCHEME_DTYPES[s.name], plan.name)
        arrays = [values]
        qt = QuantizedTensor(s.name, flat.shape, values.reshape(flat.shape))
    else:
        qt = quantize(
            flat,
            s.name,
            group_size=plan.choice.group_size,
            method=plan.choice.method,
            name=plan.name,
        )
        arrays = [a for a in (qt.codes, qt.scales, qt.zeros) if a is not None]
    err = qt.relative_error(flat, plan.name) if flat.size else 0.0
    entry = {
        "name": plan.name,
        "shape": list(plan.shape),
        "source_dtype": str(x.dtype),
        "role": plan.role,
        "scheme": s.name,
        "bits": s.bits,
        "group_size": plan.choice.group_size,
        "method": plan.choice.method,
        "bits_per_weight": qt.bits_per_weight,
        "rel_error": err,
        "fallback": plan.fallback,
    }
    return arrays, entry


def _write_weights(
    ck: Checkpoint,
    plans: list[TensorPlan],
    partial: Path,
    max_shard_bytes: int,
    progress: bool | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Quantize and write every tensor into ``partial``: (manifest weights, files)."""
    shards = _shards(plans, max_shard_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(plans), unit="tensor", disable=not show, desc="convert")
    weights, files, weight_map = [], [], {}
    for fname, shard in zip(names, shards, strict=True):
        specs = [s for p in shard for s in _stored_specs(p)]
        with StreamingWriter(partial / fname, specs, {"format": "lowbit"}) as w:
            for p in shard:
                arrays, entry = _encode(p, _read(ck, p))
                stored = _stored_specs(p)
                for spec, arr in zip(stored, arrays, strict=True):
                    w.write(spec.name, arr.reshape(spec.shape))
                    weight_map[spec.name] = fname
                keys = ("values",) if len(stored) == 1 else ("values", "scales", "zeros")
                entry["stored"] = {
                    "file": fname,
                    **{k: s.name for k, s in zip(keys, stored, strict=False)},
                }
                weights.append(entry)
                bar.update()
        files.append({"name": fname, "size": w.size, "sha256": w.sha256})
    bar.close()
    if len(shards) > 1:
        index = partial / "model.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {"format": "lowbit"}, "weight_map": weight_map}))
    return weights, files


class _BackgroundHashes:
    """SHA-256 of files computed on a thread while the conversion runs.

    hashlib releases the GIL, so hashing a source as large as the model costs
    a core rather than wall time. Leaving the block early stops the hashing.
    """

    def __init__(self, files: list[Path]) -> None:
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._futures = [
            self._pool.submit(file_digest, f, "sha256", b"", self._stop) for f in files
        ]

    def result(self) -> list[str]:
        return [f.result() for f in self._futures]

    def __enter__(self) -> _BackgroundHashes:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._pool.shutdown(cancel_futures=True)


def _print_fallbacks(plans: list[Any], listed: int = 3) -> None:
    """One stderr line per distinct fallback reason, naming up to ``listed``
    tensors: an MoE model repeats the same reason for hundreds of experts."""
    by_reason: dict[str, list[str]] = {}
    for p in plans:
        if p.fallback:
            by_reason.setdefault(p.fallback, []).append(p.name)
    for reason, names in by_reason.items():
        shown = ", ".join(names[:listed])
        more = f" and {len(names) - listed} more" if len(names) > listed else ""
        print(f"lowbit convert: {shown}{more}: {reason}", file=sys.stderr)


def convert(
    src: str | Path,
    out: str | Path,
    preset: str = "q4",
    rules: list[str] | tuple[str, ...] = (),
    force: bool = False,
    progress: bool | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    fmt: str = "lowbit",
) -> ConvertSummary:
    """Convert the checkpoint at ``src`` into the model directory ``out``.

    ``src``: a HuggingFace checkpoint directory (config.json + safetensors), one
    safetensors file, or a GGUF file (imported first through transformers).
    ``preset`` and ``rules`` (``REGEX=SCHEME[:GROUP][:METHOD]``) choose each
    tensor's scheme. ``fmt``: ``lowbit`` (safetensors, the compact format) or
    ``npz`` (the reference documents' NPZ layout, format_version "2").
    Returns a summary; bad input raises ConvertError,
    CheckpointError or ValueError naming the file or tensor.
    """
    src, out = Path(src), Path(out)
    if fmt not in FORMATS:
        raise ConvertError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    recipe = Recipe.from_args(preset, list(rules))  # bad rules: say so before any long work
    check_target(out, force)
    args = (recipe, progress, repo_id, revision, max_shard_bytes, fmt)
    if src.is_file() and is_gguf(src):
        with writing(out, force=force) as partial:
            # Imported inside OUT.partial, so that what a kill leaves of it is
            # cleaned up with OUT.partial by the next run.
            checkpoint = partial / ".gguf-import"
            import_gguf(src, checkpoint)
            job = _plan(checkpoint, recipe)
            weights, files, source_files = _write(job, partial, *args, source=src)
            shutil.rmtree(checkpoint)
    else:
        job = _plan(src, recipe)  # bad input fails before OUT is touched
        with writing(out, force=force) as partial:
            weights, files, source_files = _write(job, partial, *args, source=None)
    seconds = time.perf_counter() - job.t0
    return _summarize(out, preset, weights, files, source_files, seconds)


@dataclass
class _Job:
    """A checkpoint read and planned: everything checked before OUT is touched."""

    src: Path
    config_path: Path
    ck: Checkpoint
    model: dict[str, Any]
    plans: list[TensorPlan]
    t0: float


def _plan(src: Path, recipe: Recipe) -> _Job:
    """Read ``src``'s config and tensor list and plan each tensor's scheme."""
    t0 = time.perf_counter()
    config_path = src / "config.json" if src.is_dir() else src.parent / "config.json"
    config = read_config(config_path)
    ck = Checkpoint(src)
    check_layers(config, ck.names(), config_path)
    tied = "lm_head.weight" not in ck.names()
    model = describe_model(config, config.get("_name_or_path") or src.name, tied)
    plans = [recipe.plan(name, ck.info(name).shape) for name in ck.names()]
    _print_fallbacks(plans)
    return _Job(src, config_path, ck, model, plans, t0)


def _write(
    job: _Job,
    partial: Path,
    recipe: Recipe,
    progress: bool | None,
    repo_id: str | None,
    revision: str | None,
    max_shard_bytes: int,
    fmt: str,
    source: Path | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Path]]:
    """Write the model into ``partial``, manifest last (checked before it is
    written): (weight entries, files, source files). ``source``: the GGUF file
    the checkpoint came from."""
    src, ck = job.src, job.ck
    # Hashing the source (as large as the model) overlaps the conversion:
    # hashlib releases the GIL, so it costs a core, not wall time.
    source_files = (
        [source] if source else sorted({ck.info(n).file for n in ck.names()} | {job.config_path})
    )
    with _BackgroundHashes(source_files) as source_hashes:
        if fmt == "npz":
            weights, files = _write_npz(ck, job.plans, partial, progress)
        else:
            weights, files = _write_weights(ck, job.plans, partial, max_shard_bytes, progress)
        hashes = source_hashes.result()
    src_dir = src if src.is_dir() else src.parent
    # Hashed like the weights: the runtime reads config.json and the tokenizer
    # files, so --verify must cover them too.
    side_files = [
        {"name": f.name, "size": f.stat().st_size, "sha256": file_digest(f)}
        for f in copy_side_files(src_dir, partial)
    ]
    manifest = {
        "format_version": FORMAT_VERSION,
        "lowbit_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": job.model,
        "recipe": recipe.as_dict(),
        "packing": PACKING,
        "weights": weights,
        "files": files,
        "side_files": side_files,
        "source": {
            "path": str((source or src).resolve()),
            "repo_id": repo_id,
            "revision": revision,
            "files": [
                {"name": f.name, "size": f.stat().st_size, "sha256": h}
                for f, h in zip(source_files, hashes, strict=True)
            ],
        },
    }
    if fmt == "npz":
        manifest = _npz_manifest(manifest, files[0])
    validate(manifest)
    (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return weights, files, source_files


def _write_npz(
    ck: Checkpoint, plans: list[TensorPlan], partial: Path, progress: bool | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Quantize every tensor into ``partial/model.npz``: (weight entries, files).

    The entries are lowbit's, each with ``npz_members`` (suffix -> member name)
    from which ``_npz_manifest`` makes the reference format's.
    """
    show = sys.stderr.isatty() if progress is None else progress
    weights = []
    with (
        NpzWriter(partial / NPZ_FILE) as w,
        tqdm(total=len(plans), unit="tensor", disable=not show, desc="convert") as bar,
    ):
        for p in plans:
            arrays, entry = _encode(p, _read(ck, p))
            key = member_key(p.name, entry["scheme"])
            members = {
                suffix: w.add(key + suffix, arr)
                for suffix, arr in unpacked_arrays(entry["scheme"], p.shape, arrays).items()
            }
            entry["npz_members"] = members
            weights.append(entry)
            bar.update()
    path = partial / NPZ_FILE
    return weights, [{"name": NPZ_FILE, "size": path.stat().st_size, "sha256": file_digest(path)}]


def _npz_manifest(manifest: dict[str, Any], npz: dict[str, Any]) -> dict[str, Any]:
    """The reference documents' manifest, from the one lowbit writes for safetensors."""
    return {
        "format_version": NPZ_FORMAT_VERSION,
        "model": reference_model(manifest["model"]),
        "weights": [npz_weight_entry(w, w["npz_members"]) for w in manifest["weights"]],
        "metadata": {
            "lowbit_version": manifest["lowbit_version"],
            "created": manifest["created"],
            "file": npz["name"],
            "size": npz["size"],
            "sha256": npz["sha256"],
            "side_files": manifest["side_files"],
            "reconstruction": RECONSTRUCTION,
            "source": manifest["source"],
            "recipe": manifest["recipe"],
        },
    }


def _summarize(
    out: Path,
    preset: str,
    weights: list[dict[str, Any]],
    files: list[dict[str, Any]],
    source_files: list[Path],
    seconds: float,
) -> ConvertSummary:
    by_scheme: dict[str, dict[str, float]] = {}
    q_bits = q_count = 0.0
    for w in weights:
        n = math.prod(w["shape"])
        agg = by_scheme.setdefault(w["scheme"], {"tensors": 0, "weights": 0, "bytes": 0.0})
        agg["tensors"] += 1
        agg["weights"] += n
        agg["bytes"] += n * w["bits_per_weight"] / 8
        if not get_scheme(w["scheme"]).is_float:
            q_bits += n * w["bits_per_weight"]
            q_count += n
    return ConvertSummary(
        out=str(out),
        preset=preset,
        tensors=len(weights),
        source_bytes=sum(f.stat().st_size for f in source_files),
        output_bytes=sum(f["size"] for f in files),
        quantized_bits_per_weight=q_bits / q_count if q_count else 0.0,
        seconds=seconds,
        fallbacks=[f"{w['name']}: {w['fallback']}" for w in weights if w["fallback"]],
        by_scheme=by_scheme,
    )


__all__ = ["CheckpointError", "ConvertError", "ConvertSummary", "convert"]
