"""A seeded mutation fuzzer for every file lowbit reads.

Each reader has seed files (a tiny checkpoint, its conversion, a GGUF, ...),
a way to mutate them, and a target that reads the mutated input the way
lowbit does. Inputs run in worker processes with a memory limit
(RLIMIT_AS) and a per-input timeout; a worker that dies on a signal is a
crash, one that does not answer in time is a hang, and both are restarted.
A target that raises a ``LowbitError`` has reported bad input cleanly; any
other exception is "unclean": a bug, reported with its input and traceback.

``python -m tests.fuzz --seconds N [--reader NAME]`` runs a campaign;
tests/test_fuzz.py runs a small seeded budget of every reader.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import resource
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fuzz import mutate

MEMORY_LIMIT = 2 << 30  # bytes of address space per worker
TIMEOUT = 10.0  # seconds per input
STARTUP_TIMEOUT = 120.0  # seconds for a worker to import lowbit
OUTCOMES = ("clean", "accepted", "crash", "hang", "unclean")


# ---------------------------------------------------------------- targets
# Each reads the mutated input at ``path`` as lowbit does; runs in a worker.


def _read_source(path: Path) -> None:
    """A source checkpoint (shards + index + config.json), as convert reads it."""
    from lowbit.formats.manifest import describe_model
    from lowbit.formats.safetensors import Checkpoint
    from lowbit.models.config import check_layers, read_config
    from lowbit.quant.recipes import Recipe

    config = read_config(path / "config.json")
    ck = Checkpoint(path)
    check_layers(config, ck.names(), path / "config.json")
    describe_model(config, "fuzz", "lm_head.weight" not in ck.names())
    recipe = Recipe.from_args("q4", [])
    for name in ck.names():
        recipe.plan(name, ck.info(name).shape)
        ck.get(name).sum()


def _read_config(path: Path) -> None:
    """config.json through everything that reads it: manifest and runtime config."""
    from lowbit.formats.manifest import describe_model
    from lowbit.formats.safetensors import Checkpoint
    from lowbit.models.config import check_layers, read_config
    from lowbit.runtime.config import core_config

    config = read_config(path / "config.json")
    check_layers(config, Checkpoint(path).names(), path / "config.json")
    describe_model(config, "fuzz", False)
    core_config(config)


def _read_tokenizer(path: Path) -> None:
    from lowbit.models.tokenizer import Tokenizer

    tok = Tokenizer(path)
    ids = tok.encode("hello world, a tiny test")
    tok.decode(ids)
    tok.token_id(tok.bos_token)
    if tok.chat_template:
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def _read_converted(path: Path) -> None:
    """A converted directory: inspect --verify, then load and one forward pass."""
    import lowbit

    model = lowbit.load(path, context_length=16, verify=True)
    model.generate([1, 2, 3], max_new_tokens=2)


def _rehash(path: Path) -> None:
    """Make the manifest's sizes and hashes match the (mutated) files, as whoever
    damaged a file could, so that mutations get past the size check to the
    readers behind it. Only an unmutated manifest (still a hard link to the
    seed's) is rewritten."""
    import json

    from lowbit.util.hashing import file_digest

    manifest_file = path / "manifest.json"
    if manifest_file.stat().st_nlink < 2:
        return  # the manifest is the mutated file
    manifest = json.loads(manifest_file.read_text())
    entries = manifest["files"] if "files" in manifest else [manifest["metadata"]]
    for f in entries:
        name = f.get("name") or f["file"]
        f["size"] = (path / name).stat().st_size
        f["sha256"] = file_digest(path / name)
    manifest_file.unlink()
    manifest_file.write_text(json.dumps(manifest))


def _read_converted_unverified(path: Path) -> None:
    """Converted safetensors (manifest rehashed): what reaches the native loader."""
    import lowbit

    _rehash(path)
    model = lowbit.load(path, context_length=16, verify=True)
    model.generate([1, 2, 3], max_new_tokens=2)


def _read_npz(path: Path) -> None:
    """An NPZ directory (manifest format "2" + model.npz), as inspect reads it."""
    from lowbit.formats.inspect_model import inspect_model
    from lowbit.util.errors import LowbitError

    _rehash(path)
    report = inspect_model(path, verify=True)
    if not report.ok:  # problems found are a clean report of bad input
        raise LowbitError("; ".join(report.problems))


def _read_tolerances(path: Path) -> None:
    from lowbit.eval.tolerances import load_tolerances, violations

    tol = load_tolerances(path / "tolerances.toml", preset="q4")
    report = {
        "weights": [{"name": "w", "scheme": "int4", "bits": 4, "rel_error": 0.05}],
        "model": {"kld_mean": 0.01, "same_top": 0.9},
    }
    violations(report, tol)


def _read_gguf(path: Path) -> None:
    from lowbit.formats.gguf import read_gguf

    read_gguf(path / "tiny.gguf")


def _import_gguf(path: Path) -> None:
    """The whole GGUF import (transformers builds and fills the model); slow."""
    from lowbit.formats.gguf import import_gguf

    import_gguf(path / "tiny.gguf", path / "imported")


# ---------------------------------------------------------------- readers


@dataclass(frozen=True)
class Reader:
    name: str
    seed: str  # directory under the seed root
    files: tuple[str, ...]  # globs: the seed's files that are mutated, one per input
    target: Callable[[Path], None]
    kind: str = "bytes"  # bytes | json | safetensors | toml | gguf (plus byte mutations)


READERS: dict[str, Reader] = {
    r.name: r
    for r in (
        Reader(
            "source-safetensors",
            "src",
            ("model-*.safetensors",),
            _read_source,
            "safetensors",
        ),
        Reader("source-index", "src", ("model.safetensors.index.json",), _read_source, "json"),
        Reader("config", "src", ("config.json",), _read_config, "json"),
        Reader(
            "tokenizer", "src", ("tokenizer.json", "tokenizer_config.json"), _read_tokenizer, "json"
        ),
        Reader("manifest", "converted", ("manifest.json",), _read_converted, "json"),
        Reader(
            "converted-safetensors",
            "converted",
            ("model.safetensors",),
            _read_converted_unverified,
            "safetensors",
        ),
        Reader("npz", "npz", ("model.npz", "manifest.json"), _read_npz, "bytes"),
        Reader("tolerances", "tol", ("tolerances.toml",), _read_tolerances, "toml"),
        Reader("gguf", "gguf", ("tiny.gguf",), _read_gguf, "gguf"),
        Reader("gguf-import", "gguf", ("tiny.gguf",), _import_gguf, "gguf"),
    )
}


def make_seeds(root: Path) -> Path:
    """Seed inputs for every reader under ``root`` (made once; reused if present)."""
    done = root / ".complete"
    if done.exists():
        return root
    import lowbit
    from tiny_gguf import write_tiny_gguf
    from tiny_models import make_tiny_checkpoint
    from tiny_tokenizer import write_tiny_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    src = root / "src"
    make_tiny_checkpoint("llama", src, shard_size="20KB")
    write_tiny_tokenizer(src)
    lowbit.convert(src, root / "converted", preset="q4", force=True, progress=False)
    lowbit.convert(src, root / "npz", preset="q4", force=True, progress=False, fmt="npz")
    (root / "tol").mkdir(exist_ok=True)
    shutil.copy(Path(__file__).parents[1] / "tolerances.toml", root / "tol" / "tolerances.toml")
    (root / "gguf").mkdir(exist_ok=True)
    write_tiny_gguf(root / "gguf" / "tiny.gguf")
    done.touch()
    return root


# ---------------------------------------------------------------- workers


def _worker(conn: Any) -> None:
    """Run targets on the inputs the parent sends, under a memory limit."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    warnings.simplefilter("ignore")  # numpy's overflow warnings on garbage weights
    # Import what the targets use before saying ready, so that an input's
    # timeout never includes the start-up of a (re)started worker.
    import lowbit.eval.tolerances
    import lowbit.formats.gguf
    import lowbit.formats.inspect_model
    import lowbit.models.tokenizer
    import lowbit.runtime.model  # noqa: F401
    from lowbit.util.errors import LowbitError

    conn.send(("ready", ""))
    while True:
        try:
            reader, path = conn.recv()
        except EOFError:
            return
        try:
            target = SELF_TESTS[reader] if reader in SELF_TESTS else READERS[reader].target
            target(Path(path))
            conn.send(("accepted", ""))
        except LowbitError as e:
            conn.send(("clean", str(e)))
        except BaseException:
            conn.send(("unclean", traceback.format_exc()))


class Worker:
    """A reusable child process; restarted after a crash or a hang."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self.conn, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(STARTUP_TIMEOUT) or self.conn.recv()[0] != "ready":
            raise RuntimeError(f"fuzz worker did not start in {STARTUP_TIMEOUT} s")

    def run(self, reader: str, path: Path, timeout: float) -> tuple[str, str]:
        self.conn.send((reader, str(path)))
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        else:
            self._restart()
            return "hang", f"no answer in {timeout:g} s"
        self.proc.join(5)
        code = self.proc.exitcode
        self._restart()
        return "crash", f"worker exit code {code}"

    def _restart(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()
        self._start()

    def close(self) -> None:
        self.conn.close()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# ---------------------------------------------------------------- campaign


@dataclass
class Stats:
    reader: str
    tried: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    findings: list[tuple[str, str, str]] = field(default_factory=list)  # outcome, input, detail


def _mutated(
    reader: Reader, seed_dir: Path, files: list[str], rng: random.Random, gguf_parts: list
) -> tuple[str, bytes]:
    name = rng.choice(files)
    data = (seed_dir / name).read_bytes()
    if rng.random() < 0.25:  # plain byte mutations for every kind
        donor = (seed_dir / rng.choice(files)).read_bytes()
        return name, mutate.mutate_bytes(data, rng, donor)
    kind = reader.kind if not name.endswith(".json") else "json"
    if kind == "json":
        return name, mutate.mutate_json(data, rng)
    if kind == "safetensors":
        return name, mutate.mutate_safetensors(data, rng)
    if kind == "toml":
        return name, mutate.mutate_toml(data, rng)
    if kind == "gguf":
        return name, mutate.mutate_gguf(data, rng, gguf_parts)
    return name, mutate.mutate_bytes(data, rng)


def fuzz_reader(
    reader: Reader,
    seeds: Path,
    work: Path,
    *,
    seconds: float | None = None,
    inputs: int | None = None,
    seed: int = 0,
    timeout: float = TIMEOUT,
    keep: Path | None = None,
    worker: Worker | None = None,
) -> Stats:
    """Fuzz one reader for ``seconds`` or ``inputs`` (whichever ends first).

    Each input is the seed directory with one file mutated (the other files
    hard-linked, so a mutation never reaches the seeds). Findings are copied
    to ``keep`` when given.
    """
    rng = random.Random(f"{reader.name}:{seed}")
    seed_dir = seeds / reader.seed
    files = sorted(p.name for pattern in reader.files for p in seed_dir.glob(pattern))
    parts = mutate.gguf_parts(str(seed_dir / files[0])) if reader.kind == "gguf" else []
    stats = Stats(reader.name)
    own = worker is None
    worker = worker or Worker()
    deadline = time.monotonic() + seconds if seconds is not None else None
    try:
        while (inputs is None or stats.tried < inputs) and (
            deadline is None or time.monotonic() < deadline
        ):
            case = work / f"{reader.name}-{stats.tried}"
            shutil.copytree(seed_dir, case, copy_function=os.link)
            name, data = _mutated(reader, seed_dir, files, rng, parts)
            (case / name).unlink()
            (case / name).write_bytes(data)
            outcome, detail = worker.run(reader.name, case, timeout)
            stats.tried += 1
            stats.counts[outcome] += 1
            if outcome in ("crash", "hang", "unclean"):
                kept = case
                if keep is not None:
                    kept = keep / case.name
                    shutil.copytree(case, kept, dirs_exist_ok=True)
                stats.findings.append((outcome, str(kept / name), detail))
            shutil.rmtree(case, ignore_errors=True)
    finally:
        if own:
            worker.close()
    return stats


def campaign(
    names: list[str],
    seeds: Path,
    *,
    seconds: float | None = None,
    inputs: int | None = None,
    seed: int = 0,
    keep: Path | None = None,
) -> list[Stats]:
    """Fuzz each reader in turn; ``seconds`` and ``inputs`` are per reader."""
    out = []
    worker = Worker()
    try:
        with tempfile.TemporaryDirectory(prefix="lowbit-fuzz-") as work:
            for name in names:
                out.append(
                    fuzz_reader(
                        READERS[name],
                        seeds,
                        Path(work),
                        seconds=seconds,
                        inputs=inputs,
                        seed=seed,
                        keep=keep,
                        worker=worker,
                    )
                )
    finally:
        worker.close()
    return out


def table(stats: list[Stats]) -> str:
    head = ("reader", "inputs tried", "clean errors", "accepted", "crashes", "hangs", "unclean")
    rows = [
        (s.reader, s.tried, s.counts["clean"], s.counts["accepted"], s.counts["crash"],
         s.counts["hang"], s.counts["unclean"])
        for s in stats
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# Targets that misbehave on purpose, so that tests/test_fuzz.py can check that
# the harness reports each outcome.
def _self_test_crash(path: Path) -> None:
    os.kill(os.getpid(), 11)


def _self_test_hang(path: Path) -> None:
    time.sleep(3600)


def _self_test_unclean(path: Path) -> None:
    raise KeyError(str(path))


def _self_test_clean(path: Path) -> None:
    from lowbit.util.errors import LowbitError

    raise LowbitError(f"{path}: bad")


SELF_TESTS = {
    "_crash": _self_test_crash,
    "_hang": _self_test_hang,
    "_unclean": _self_test_unclean,
    "_clean": _self_test_clean,
}
