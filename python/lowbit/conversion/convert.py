"""``lowbit convert``: a HuggingFace checkpoint into a compact model directory.

Streams one tensor at a time: read (memory-mapped safetensors), quantize in the
C++ core, measure its error, write. Output goes to ``OUT.partial`` and is
renamed to ``OUT`` only when everything, manifest included, is on disk, so an
interrupted run never leaves a directory that looks complete.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from lowbit._version import __version__
from lowbit.conversion.fold import FOLD_FILE, Fold, sinq_fold
from lowbit.formats.gguf import import_gguf, is_gguf
from lowbit.formats.jobs import SafetensorsOutput
from lowbit.formats.layout import stored_specs
from lowbit.formats.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    PACKING,
    FileEntry,
    StoredNames,
    WeightEntry,
    WeightInfo,
    describe_model,
    validate,
)
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
from lowbit.formats.safetensors import Checkpoint, CheckpointError, TensorSpec
from lowbit.models.config import check_layers, read_config
from lowbit.quant.dtypes import FLOAT_SCHEME_DTYPES, cast
from lowbit.quant.quantize import QuantizedTensor, quantize
from lowbit.quant.recipes import Recipe, TensorPlan
from lowbit.quant.schemes import (
    CALIBRATED_METHODS,
    GPTQ,
    STATISTICS_METHODS,
    get_scheme,
    plain_method,
    weighted_method,
)
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


def _read(ck: Checkpoint, plan: TensorPlan) -> np.ndarray:
    """A tensor to convert; matrices must be stored as float32, float16 or bfloat16."""
    return ck.get_float(plan.name) if len(plan.shape) >= 2 else ck.get(plan.name)


@dataclass(frozen=True)
class EncodedWeight:
    """One weight converted: its arrays as its scheme stores them (values, or
    codes, scales and zeros) and what every format records of it."""

    info: WeightInfo
    arrays: tuple[np.ndarray, ...]


def _encode(
    plan: TensorPlan,
    x: np.ndarray,
    importance: np.ndarray | None,
    solved: QuantizedTensor | None = None,
) -> EncodedWeight:
    """Quantize one weight (a float scheme casts it); ``importance``: the
    calibration statistics of its input, for the weighted searches;
    ``solved``: its GPTQ result (lowbit.eval.gptq), stored as it is."""
    s = get_scheme(plan.choice.scheme)
    flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x)
    if solved is not None:
        c = plan.choice
        if (solved.scheme, solved.group_size, solved.shape) != (c.scheme, c.group_size, flat.shape):
            raise ConvertError(
                f"{plan.name}: the GPTQ result is {solved.scheme} group {solved.group_size} "
                f"{solved.shape}, the plan {c.describe()} {flat.shape}"
            )
        qt = solved
        arrays: tuple[np.ndarray, ...] = tuple(
            a for a in (qt.codes, qt.scales, qt.zeros) if a is not None
        )
    elif s.is_float:
        values = cast(x, FLOAT_SCHEME_DTYPES[s.name], plan.name)
        arrays = (values,)
        qt = QuantizedTensor(s.name, flat.shape, values.reshape(flat.shape))
    else:
        qt = quantize(
            flat,
            s.name,
            group_size=plan.choice.group_size,
            method=plan.choice.method,
            name=plan.name,
            importance=importance,
        )
        arrays = tuple(a for a in (qt.codes, qt.scales, qt.zeros) if a is not None)
    err = qt.relative_error(flat, plan.name) if flat.size else 0.0
    info = WeightInfo(
        name=plan.name,
        shape=tuple(plan.shape),
        source_dtype=str(x.dtype),
        role=plan.role,
        scheme=s.name,
        bits=s.bits,
        group_size=plan.choice.group_size,
        method=plan.choice.method,
        bits_per_weight=qt.bits_per_weight,
        rel_error=err,
        fallback=plan.fallback,
    )
    return EncodedWeight(info, arrays)


@dataclass(frozen=True)
class WeightJob:
    """One weight to convert: its plan (name, shape, scheme) and the
    checkpoint it is read from; ``specs``: the tensors it is stored as."""

    plan: TensorPlan
    source: Checkpoint
    importance: np.ndarray | None = None  # E[x^2] of its input, for wmse/whqq
    solved: QuantizedTensor | None = None  # its GPTQ result
    fold: Fold | None = None  # input-channel scales folded into the model

    @functools.cached_property
    def specs(self) -> tuple[TensorSpec, ...]:
        c = self.plan.choice
        return tuple(stored_specs(self.plan.name, self.plan.shape, c.scheme, c.group_size))

    def encode(self) -> EncodedWeight:
        x = _read(self.source, self.plan)
        if self.fold is not None and self.plan.name in self.fold:
            x = self.fold.apply(self.plan.name, x)
        return _encode(self.plan, x, self.importance, self.solved)


@dataclass(frozen=True)
class _Provenance:
    """What every format's manifest says besides the weights and their files."""

    created: str  # ISO 8601, UTC
    model: dict[str, Any]
    recipe: dict[str, Any]
    side_files: list[FileEntry]
    source: dict[str, Any]


class _Output(Protocol):
    """An output format: writes the weights into the directory, then says
    what its manifest is. ``files``: what ``write`` wrote."""

    files: list[FileEntry]

    def write(self, jobs: Sequence[WeightJob], bar: tqdm) -> list[WeightInfo]: ...

    def manifest(self, about: _Provenance) -> dict[str, Any]: ...


class _LowbitOutput:
    """lowbit's directory: safetensors files (sharded past ``max_shard_bytes``)
    and the format-1 manifest."""

    def __init__(self, directory: Path, max_shard_bytes: int) -> None:
        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        self.entries: list[WeightEntry] = []
        self.files: list[FileEntry] = []

    def write(self, jobs: Sequence[WeightJob], bar: tqdm) -> list[WeightInfo]:
        specs = [job.specs for job in jobs]
        with SafetensorsOutput(
            self.directory, specs, {"format": "lowbit"}, self.max_shard_bytes
        ) as out:
            for job in jobs:
                encoded = job.encode()
                arrays = zip(job.specs, encoded.arrays, strict=True)
                file = out.write(a.reshape(spec.shape) for spec, a in arrays)
                info = encoded.info
                self.entries.append(info.stored_as(StoredNames.of(file, info.name, info.scheme)))
                bar.update()
        self.files = out.files
        return list(self.entries)

    def manifest(self, about: _Provenance) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "lowbit_version": __version__,
            "created": about.created,
            "model": about.model,
            "recipe": about.recipe,
            "packing": PACKING,
            "weights": [w.as_dict() for w in self.entries],
            "files": [f.as_dict() for f in self.files],
            "side_files": [f.as_dict() for f in about.side_files],
            "source": about.source,
        }


class _NpzOutput:
    """The reference documents' layout: ``model.npz`` (unpacked codes) and
    the format-2 manifest."""

    def __init__(self, directory: Path, max_shard_bytes: int) -> None:
        del max_shard_bytes  # one archive, never sharded
        self.path = directory / NPZ_FILE
        self.entries: list[dict[str, Any]] = []
        self.files: list[FileEntry] = []

    def write(self, jobs: Sequence[WeightJob], bar: tqdm) -> list[WeightInfo]:
        infos = []
        with NpzWriter(self.path) as w:
            for job in jobs:
                encoded = job.encode()
                info = encoded.info
                key = member_key(info.name, info.scheme)
                arrays = unpacked_arrays(info.scheme, info.shape, list(encoded.arrays))
                members = {suffix: w.add(key + suffix, a) for suffix, a in arrays.items()}
                self.entries.append(npz_weight_entry(info, members))
                infos.append(info)
                bar.update()
        self.files = [FileEntry(NPZ_FILE, self.path.stat().st_size, file_digest(self.path))]
        return infos

    def manifest(self, about: _Provenance) -> dict[str, Any]:
        npz = self.files[0]
        return {
            "format_version": NPZ_FORMAT_VERSION,
            "model": reference_model(about.model),
            "weights": self.entries,
            "metadata": {
                "lowbit_version": __version__,
                "created": about.created,
                "file": npz.name,
                "size": npz.size,
                "sha256": npz.sha256,
                "side_files": [f.as_dict() for f in about.side_files],
                "reconstruction": RECONSTRUCTION,
                "source": about.source,
                "recipe": about.recipe,
            },
        }


# fmt -> its writer
_OUTPUTS: dict[str, Callable[[Path, int], _Output]] = {"lowbit": _LowbitOutput, "npz": _NpzOutput}


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
    importance: Mapping[str, np.ndarray] | None = None,
    calibration: dict[str, Any] | None = None,
    quiet: bool = False,
    solved: Mapping[str, QuantizedTensor] | None = None,
    fold: Fold | str | None = None,
) -> ConvertSummary:
    """Convert the checkpoint at ``src`` into the model directory ``out``.

    ``src``: a HuggingFace checkpoint directory (config.json + safetensors), one
    safetensors file, or a GGUF file (imported first through transformers).
    ``preset`` and ``rules`` (``REGEX=SCHEME[:GROUP][:METHOD]``) choose each
    tensor's scheme. ``importance``: per tensor name, E[x^2] of its input
    channels (``lowbit.eval.calibration``), which the calibrated methods
    (``wmse``, ``whqq``) need; a tensor without one gets the method's
    uncalibrated search, and its plan says so. ``solved``: per tensor name,
    its GPTQ result (``lowbit.eval.gptq.solve``), which a ``gptq`` plan
    stores as it is; a ``gptq`` tensor without one gets its weighted search
    (or, without statistics, the plain one), and its plan says so. ``fold``:
    input-channel scales folded into the model (``lowbit.conversion.fold``):
    AWQ's (a Fold measured by ``lowbit.eval.gptq``) or ``"sinq"`` (computed
    here from the weights); each tensor they touch is transformed as it is
    read (the GPTQ results are of the folded matrices already), the scales
    saved as ``FOLD_FILE`` and recorded in the manifest's recipe.
    ``calibration``: what the manifest records of where the statistics came from. ``quiet``: print
    no notes on stderr (fallbacks; the manifest records them all). ``fmt``: ``lowbit``
    (safetensors, the compact format) or ``npz`` (the reference documents'
    NPZ layout, format_version "2"). Returns a summary; bad input raises ConvertError,
    CheckpointError or ValueError naming the file or tensor.
    """
    src, out = Path(src), Path(out)
    if fmt not in FORMATS:
        raise ConvertError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    recipe = Recipe.from_args(preset, list(rules))  # bad rules: say so before any long work
    check_target(out, force)
    settings = _Settings(
        recipe,
        progress,
        repo_id,
        revision,
        max_shard_bytes,
        fmt,
        dict(importance or {}),
        calibration,
        dict(solved or {}),
        fold,
    )
    if src.is_file() and is_gguf(src):
        with writing(out, force=force) as partial:
            # Imported inside OUT.partial, so that what a kill leaves of it is
            # cleaned up with OUT.partial by the next run.
            checkpoint = partial / ".gguf-import"
            import_gguf(src, checkpoint)
            planned = _plan(checkpoint, recipe, settings, quiet)
            weights, files, source_files = _write(planned, partial, settings, source=src)
            shutil.rmtree(checkpoint)
    else:
        planned = _plan(src, recipe, settings, quiet)  # bad input: before OUT
        with writing(out, force=force) as partial:
            weights, files, source_files = _write(planned, partial, settings, source=None)
    seconds = time.perf_counter() - planned.t0
    return _summarize(out, preset, weights, files, source_files, seconds)


@dataclass(frozen=True)
class _Settings:
    """How to convert, besides what: convert()'s options."""

    recipe: Recipe
    progress: bool | None
    repo_id: str | None
    revision: str | None
    max_shard_bytes: int
    fmt: str
    importance: dict[str, np.ndarray]
    calibration: dict[str, Any] | None
    solved: dict[str, QuantizedTensor]
    fold: Fold | str | None  # "sinq": computed once the checkpoint is read


@dataclass
class _Planned:
    """A checkpoint read and planned: everything checked before OUT is touched."""

    src: Path
    config_path: Path
    ck: Checkpoint
    model: dict[str, Any]
    plans: list[TensorPlan]
    t0: float
    fold: Fold | None = None


def _uncalibrated(plan: TensorPlan, settings: _Settings) -> TensorPlan:
    """A plan whose method needs statistics the conversion does not have for
    this tensor: a GPTQ plan without a GPTQ result gets its weighted search
    (the lm_head, fused expert stacks: GPTQ runs on the layers' matrices), a
    weighted search without E[x^2] its plain search; a note says why."""
    method, scheme = plan.choice.method, plan.choice.scheme
    if method not in STATISTICS_METHODS or plan.name in settings.solved:
        return plan
    if method == GPTQ and plan.name in settings.importance:
        base = weighted_method(scheme, method)
        why = f"no GPTQ result for it (no Hessian of its input); {method} -> {base}"
    elif plan.name in settings.importance:
        return plan
    else:
        base = plain_method(scheme, method)
        why = f"no calibration statistics for its input; {method} -> {base}"
    choice = dataclasses.replace(plan.choice, method=base)
    fallback = f"{plan.fallback}; {why}" if plan.fallback else why
    return dataclasses.replace(plan, choice=choice, fallback=fallback)


def _importance(
    plan: TensorPlan, importance: Mapping[str, np.ndarray], fold: Fold | None
) -> np.ndarray | None:
    """E[x^2] of a weighted search's input, as the folded model sees it: a
    reader's input is x / s, so E[x^2] / s^2."""
    if plan.choice.method not in CALIBRATED_METHODS:
        return None
    e_x2 = importance.get(plan.name)
    s = None if fold is None else fold.column_scale(plan.name)
    if e_x2 is None or s is None:
        return e_x2
    return (e_x2 / s.astype(np.float64) ** 2).astype(np.float32)


def _plan(src: Path, recipe: Recipe, settings: _Settings, quiet: bool) -> _Planned:
    """Read ``src``'s config and tensor list and plan each tensor's scheme."""
    t0 = time.perf_counter()
    config_path = src / "config.json" if src.is_dir() else src.parent / "config.json"
    config = read_config(config_path)
    ck = Checkpoint(src)
    check_layers(config, ck.names(), config_path)
    tied = "lm_head.weight" not in ck.names()
    model = describe_model(config, config.get("_name_or_path") or src.name, tied)
    plans = [_uncalibrated(recipe.plan(n, ck.info(n).shape), settings) for n in ck.names()]
    if not quiet:
        _print_fallbacks(plans)
    fold = settings.fold
    if fold == "sinq":
        fold = sinq_fold(ck, config)
    elif isinstance(fold, str):
        raise ConvertError(f"unknown fold {fold!r}; choose from sinq, or a measured Fold")
    return _Planned(src, config_path, ck, model, plans, t0, fold)


def _write(
    planned: _Planned, partial: Path, settings: _Settings, source: Path | None
) -> tuple[list[WeightInfo], list[FileEntry], list[Path]]:
    """Write the model into ``partial``, manifest last (checked before it is
    written): (weights, files, source files). ``source``: the GGUF file the
    checkpoint came from."""
    src, ck = planned.src, planned.ck
    # Hashing the source (as large as the model) overlaps the conversion:
    # hashlib releases the GIL, so it costs a core, not wall time.
    source_files = (
        [source]
        if source
        else sorted({ck.info(n).file for n in ck.names()} | {planned.config_path})
    )
    output = _OUTPUTS[settings.fmt](partial, settings.max_shard_bytes)
    jobs = [
        WeightJob(
            plan,
            ck,
            _importance(plan, settings.importance, planned.fold),
            settings.solved.get(plan.name) if plan.choice.method == GPTQ else None,
            planned.fold,
        )
        for plan in planned.plans
    ]
    show = sys.stderr.isatty() if settings.progress is None else settings.progress
    with _BackgroundHashes(source_files) as source_hashes:
        with tqdm(total=len(jobs), unit="tensor", disable=not show, desc="convert") as bar:
            weights = output.write(jobs, bar)
        hashes = source_hashes.result()
    src_dir = src if src.is_dir() else src.parent
    # Hashed like the weights: the runtime reads config.json and the tokenizer
    # files, so --verify must cover them too.
    extra = []
    if planned.fold is not None:
        planned.fold.save(partial / FOLD_FILE)
        extra.append(partial / FOLD_FILE)
    side_files = [
        FileEntry(f.name, f.stat().st_size, file_digest(f))
        for f in [*copy_side_files(src_dir, partial), *extra]
    ]
    about = _Provenance(
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        model=planned.model,
        recipe={
            **settings.recipe.as_dict(),
            **({"calibration": settings.calibration} if settings.calibration else {}),
            **(
                {"fold": {"method": planned.fold.method, "file": FOLD_FILE}}
                if planned.fold is not None
                else {}
            ),
        },
        side_files=side_files,
        source={
            "path": str((source or src).resolve()),
            "repo_id": settings.repo_id,
            "revision": settings.revision,
            "files": [
                FileEntry(f.name, f.stat().st_size, h).as_dict()
                for f, h in zip(source_files, hashes, strict=True)
            ],
        },
    )
    manifest = output.manifest(about)
    validate(manifest)
    (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return weights, output.files, source_files


def _summarize(
    out: Path,
    preset: str,
    weights: list[WeightInfo],
    files: list[FileEntry],
    source_files: list[Path],
    seconds: float,
) -> ConvertSummary:
    by_scheme: dict[str, dict[str, float]] = {}
    q_bits = q_count = 0.0
    for w in weights:
        n = w.size
        agg = by_scheme.setdefault(w.scheme, {"tensors": 0, "weights": 0, "bytes": 0.0})
        agg["tensors"] += 1
        agg["weights"] += n
        agg["bytes"] += n * w.bits_per_weight / 8
        if not get_scheme(w.scheme).is_float:  # the quantized tensors' average
            q_bits += n * w.bits_per_weight
            q_count += n
    return ConvertSummary(
        out=str(out),
        preset=preset,
        tensors=len(weights),
        source_bytes=sum(f.stat().st_size for f in source_files),
        output_bytes=sum(f.size for f in files),
        quantized_bits_per_weight=q_bits / q_count if q_count else 0.0,
        seconds=seconds,
        fallbacks=[f"{w.name}: {w.fallback}" for w in weights if w.fallback],
        by_scheme=by_scheme,
    )


__all__ = ["CheckpointError", "ConvertError", "ConvertSummary", "convert"]
