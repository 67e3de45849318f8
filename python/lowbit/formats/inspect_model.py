"""``lowbit inspect``: check a converted model directory and say what is in it.

Checks the manifest against its schema, every file's size (and with
``verify`` its SHA-256), and every stored tensor's dtype and shape against its
scheme. Reports sizes per scheme, bits per weight, and the memory needed to run
the model at a context length.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lowbit.formats.layout import stored_specs
from lowbit.formats.manifest import FileEntry, read, side_file_entries
from lowbit.formats.npz import NPZ_FORMAT_VERSION, npz_member_shapes
from lowbit.formats.safetensors import INDEX_FILE, ST_DTYPES, CheckpointError, read_header
from lowbit.util.hashing import file_digest
from lowbit.util.outdir import SIDE_FILES
from lowbit.util.paths import UnsafePathError, confined


@dataclass
class InspectReport:
    path: str
    problems: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    by_scheme: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: int = 0
    weight_bytes: int = 0
    bits_per_weight: float = 0.0
    memory: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def kv_cache_bytes(model: dict[str, Any], context: int, int8: bool = False) -> int:
    """Bytes the runtime's KV cache reserves for ``context`` positions.

    K and V for every layer, kv head, position and head dim: float32, or int8
    codes plus one float32 scale per (layer, kv head, position) each.
    """
    slots = 2 * model["num_layers"] * model["num_kv_heads"] * context
    return slots * (model["head_dim"] + 4) if int8 else slots * model["head_dim"] * 4


def memory_estimate(model: dict[str, Any], weight_bytes: int, context: int) -> dict[str, int]:
    """Bytes to run the model at ``context`` tokens, batch 1, float32 KV cache.

    KV cache: 2 (K and V) x layers x kv heads x head dim x context x 4 bytes.
    Activations: the largest per-token buffers of one layer (hidden states,
    q/k/v, the FFN's gate and up, attention scores over the context) plus the
    logits, all float32.
    """
    kv = kv_cache_bytes(model, context)
    per_token = (
        4 * model["hidden_size"]
        + (model["num_heads"] + 2 * model["num_kv_heads"]) * model["head_dim"]
        + 3 * model["intermediate_size"]
        + model["num_heads"] * context
    )
    activations = 4 * (per_token + model["vocab_size"])
    return {
        "context": context,
        "weights": weight_bytes,
        "kv_cache": kv,
        "activations": activations,
        "total": weight_bytes + kv + activations,
    }


def inspect_model(
    path: str | Path, verify: bool = False, context: int | None = None
) -> InspectReport:
    """Check ``path`` and summarise it.

    Problems are listed in the report; only a missing or schema-breaking
    manifest raises (ManifestError).
    """
    path = Path(path)
    report = InspectReport(str(path))
    manifest = read(path)  # ManifestError: not a model directory, or a broken manifest
    if manifest.format_version == NPZ_FORMAT_VERSION:
        return _inspect_npz(path, manifest.document, report, verify, context)
    report.model = manifest.model
    problems = report.problems
    if verify:
        problems += _side_file_problems(path, manifest.document)
    headers: dict[str, dict] = {}
    for i, f in enumerate(manifest.files):
        fp, problem = _check_listed(path, f, f"files/{i}/name", verify)
        if fp is None:
            problems.append(problem)
            continue
        try:
            headers[f.name] = read_header(fp)
        except CheckpointError as e:
            problems.append(str(e))
    listed = {f.name for f in manifest.files}
    problems += _index_problems(path, listed)
    total_bits = 0.0
    for w in manifest.weights:
        file = w.stored.file
        if file not in listed:
            problems.append(f"{w.name}: stored in {file}, which the manifest does not list")
            continue
        header = headers.get(file)
        if header is None:
            continue  # its file was already reported
        for spec in stored_specs(w.name, w.shape, w.scheme, w.group_size):
            info = header.get(spec.name)
            if info is None:
                problems.append(f"{w.name}: {spec.name} is not in {file}")
            elif (info.dtype, info.shape) != (ST_DTYPES[spec.dtype], spec.shape):
                problems.append(
                    f"{spec.name}: stored as {info.dtype} {info.shape}, "
                    f"{w.scheme} needs {ST_DTYPES[spec.dtype]} {spec.shape}"
                )
        n = w.size
        agg = report.by_scheme.setdefault(w.scheme, {"tensors": 0, "weights": 0, "bytes": 0})
        agg["tensors"] += 1
        agg["weights"] += n
        agg["bytes"] += round(n * w.bits_per_weight / 8)
        report.weights += n
        total_bits += n * w.bits_per_weight
    report.weight_bytes = round(total_bits / 8)
    report.bits_per_weight = total_bits / report.weights if report.weights else 0.0
    ctx = context or manifest.model["context_length"]
    report.memory = memory_estimate(manifest.model, report.weight_bytes, ctx)
    return report


def _index_problems(path: Path, listed: set[str]) -> list[str]:
    """An index beside the weights must name only files the manifest lists.

    lowbit's runtime reads the files the manifest lists, never the index; but
    other readers (transformers, safetensors tools) follow the index, and an
    index naming an unlisted shard would have them read weights that no
    checksum covers.
    """
    index = path / INDEX_FILE
    if not index.exists() and not index.is_symlink():
        return []
    try:
        weight_map = json.loads(confined(path, INDEX_FILE, INDEX_FILE).read_text())["weight_map"]
        shards = set(weight_map.values())
    except UnsafePathError as e:
        return [str(e)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"{INDEX_FILE}: not a safetensors index ({type(e).__name__}: {e})"]
    return [
        f"{INDEX_FILE}: names shard {shard!r}, which the manifest does not list"
        for shard in sorted(shards - listed, key=str)
    ]


def _check_listed(
    path: Path, entry: FileEntry, field: str, verify: bool
) -> tuple[Path, None] | tuple[None, str]:
    """A file the manifest lists: (its path, None) if it is there as recorded
    (size, and SHA-256 with ``verify``), else (None, the problem)."""
    try:
        fp = confined(path, entry.name, f"manifest.json: {field}")
    except UnsafePathError as e:
        return None, str(e)
    if not fp.is_file():
        return None, f"{entry.name}: missing"
    size = fp.stat().st_size
    if size != entry.size:
        return None, f"{entry.name}: {size} bytes, manifest says {entry.size}"
    if verify and file_digest(fp) != entry.sha256:
        return None, f"{entry.name}: SHA-256 differs from the manifest's"
    return fp, None


def _side_file_problems(path: Path, manifest: dict[str, Any]) -> list[str]:
    """--verify of the config and tokenizer files the runtime reads: each one
    the manifest lists has its size and SHA-256, and none is there unlisted.

    Only under --verify: these are small text files that a user may edit on
    purpose (a generation config, a chat template), which plain inspect allows.
    A directory written before lowbit recorded them has nothing to check.
    """
    problems = []
    for key, entries in side_file_entries(manifest):
        listed = set()
        for i, f in enumerate(entries):
            listed.add(f["name"])
            entry = FileEntry.from_dict(f)
            fp, problem = _check_listed(path, entry, f"{key}/{i}/name", verify=True)
            if fp is None:
                problems.append(problem)
        for name in SIDE_FILES:
            if name not in listed and ((path / name).is_file() or (path / name).is_symlink()):
                problems.append(
                    f"{name}: not listed in the manifest, so --verify cannot vouch for it "
                    "(the runtime would read it)"
                )
    return problems


def _inspect_npz(
    path: Path,
    manifest: dict[str, Any],
    report: InspectReport,
    verify: bool,
    context: int | None,
) -> InspectReport:
    """inspect of an NPZ directory (format_version "2"): file, members, shapes, sizes."""
    meta = manifest["metadata"]
    report.model = manifest["model"].get("lowbit", {})
    problems = report.problems
    if verify:
        problems += _side_file_problems(path, manifest)
    try:
        npz = confined(path, meta["file"], "manifest.json: metadata/file")
    except UnsafePathError as e:
        problems.append(str(e))
        return report
    if not npz.is_file():
        problems.append(f"{meta['file']}: missing")
        return report
    if npz.stat().st_size != meta["size"]:
        problems.append(f"{meta['file']}: {npz.stat().st_size} bytes, manifest says {meta['size']}")
        return report
    if verify and file_digest(npz) != meta["sha256"]:
        problems.append(f"{meta['file']}: SHA-256 differs from the manifest's")
        return report
    try:
        members = npz_member_shapes(npz)
    except ValueError as e:
        problems.append(str(e))
        return report
    total_bytes = 0
    for w in manifest["weights"]:
        shape = tuple(w["shape"])
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        gs = w["quantization"].get("group_size")
        groups = 1 if not gs else shape[-1] // gs
        expect = {w["q"]: shape}
        for key in ("q_scales", "q_zero_point"):
            if key in w:
                expect[w[key]] = (rows, groups)
        nbytes = 0
        for member, want in expect.items():
            got = members.get(member)
            if got is None:
                problems.append(f"{w['name']}: {member} is not in {meta['file']}")
            elif got[0] != want:
                problems.append(f"{member}: shape {got[0]}, {w['name']} needs {want}")
            else:
                nbytes += got[1]
        n = math.prod(shape)
        agg = report.by_scheme.setdefault(
            w["quantization"]["scheme"], {"tensors": 0, "weights": 0, "bytes": 0}
        )
        agg["tensors"] += 1
        agg["weights"] += n
        agg["bytes"] += nbytes
        report.weights += n
        total_bytes += nbytes
    report.weight_bytes = total_bytes
    report.bits_per_weight = 8 * total_bytes / report.weights if report.weights else 0.0
    if report.model:
        ctx = context or report.model["context_length"]
        report.memory = memory_estimate(report.model, report.weight_bytes, ctx)
    return report


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_report(r: InspectReport) -> str:
    m = r.model
    lines = [
        f"{r.path}: {m['name']} ({m['architecture']}, {m['num_layers']} layers, "
        f"hidden {m['hidden_size']}, vocab {m['vocab_size']}"
        + (
            f", {m['num_experts']} experts top-{m['experts_per_token']})"
            if m["num_experts"]
            else ")"
        ),
        "",
        f"{'scheme':<8} {'tensors':>7} {'weights':>13} {'size':>12} {'bits/w':>7}",
    ]
    for scheme, agg in sorted(r.by_scheme.items(), key=lambda kv: -kv[1]["bytes"]):
        bpw = 8 * agg["bytes"] / agg["weights"] if agg["weights"] else 0
        size = _mib(agg["bytes"])
        lines.append(
            f"{scheme:<8} {agg['tensors']:>7} {agg['weights']:>13,} {size:>12} {bpw:>7.3f}"
        )
    lines.append(
        f"{'total':<8} {sum(a['tensors'] for a in r.by_scheme.values()):>7} {r.weights:>13,} "
        f"{_mib(r.weight_bytes):>12} {r.bits_per_weight:>7.3f}"
    )
    mem = r.memory
    lines += [
        "",
        f"memory at {mem['context']} tokens of context: {_mib(mem['total'])} "
        f"(weights {_mib(mem['weights'])} + KV cache {_mib(mem['kv_cache'])} "
        f"+ activations {_mib(mem['activations'])})",
    ]
    lines += ["", "OK" if r.ok else f"{len(r.problems)} problem(s):"]
    lines += [f"  - {p}" for p in r.problems]
    return "\n".join(lines)
