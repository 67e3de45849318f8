"""Faults while writing an output: concurrent runs, kills, a full disk, Ctrl-C,
outputs that are files or links, a check that fails before commit.

Every output goes through ``lowbit.util.outdir.writing``; these tests drive it
through ``lowbit convert`` and ``upcycle`` as a user would meet the fault.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from lowbit.cli import main
from lowbit.formats import npz as npz_format
from lowbit.formats.manifest import load
from lowbit.moe.upcycle import UpcycleError, upcycle
from lowbit.util.outdir import OutputError, locked, writing

# The modules (``lowbit.convert`` the attribute is the function).
convert_module = importlib.import_module("lowbit.conversion.convert")
upcycle_module = importlib.import_module("lowbit.moe.upcycle")

# A child running the CLI whose conversion pauses at its first tensor: it
# touches READY, then waits for GO (or for a signal).
PAUSED_CHILD = """
import importlib, sys, time
from pathlib import Path
from lowbit.cli import main

convert_module = importlib.import_module("lowbit.conversion.convert")
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
real = convert_module._encode

def paused(*args):
    ready.touch()
    while not go.exists():
        time.sleep(0.02)
    return real(*args)

convert_module._encode = paused
sys.exit(main(sys.argv[3:]))
"""

# A child killed outright (no cleanup runs) at commit's second rename, the
# one that puts OUT.partial in place of the OUT just moved to OUT.old.
KILLED_AT_COMMIT_CHILD = """
import os, sys
from pathlib import Path
from lowbit.cli import main

real = Path.rename

def rename(self, target):
    if self.name.endswith(".partial"):
        os._exit(9)
    return real(self, target)

Path.rename = rename
sys.exit(main(sys.argv[1:]))
"""


def _leftovers(out: Path) -> list[str]:
    """What lowbit may leave beside OUT, that is there."""
    return [
        p.name for p in (out.with_name(out.name + s) for s in (".partial", ".old", ".lock"))
        if p.exists() or p.is_symlink()
    ]  # fmt: skip


def _interrupt_and_check(child: subprocess.Popen, command: str, out: Path) -> None:
    """Ctrl-C to a running ``lowbit COMMAND ... OUT``: exit 130, one line on
    stderr, and nothing left of OUT."""
    child.send_signal(signal.SIGINT)
    _stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 130
    assert stderr == f"lowbit {command}: interrupted\n"
    assert not out.exists()
    assert _leftovers(out) == []


def _start_paused(tmp_path: Path, argv: list[str]) -> tuple[subprocess.Popen[str], Path]:
    ready, go = tmp_path / "ready", tmp_path / "go"
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSED_CHILD, str(ready), str(go), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if child.poll() is not None:
            pytest.fail(f"the child exited early: {child.communicate()}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the child never reached its first tensor")
        time.sleep(0.05)
    return child, go


def test_a_second_run_into_the_same_output_fails_at_once(tiny_checkpoint, tmp_path, capsys):
    # Before the lock, both runs wrote OUT.partial: one exited 0 with a q4
    # manifest over q8 weights.
    src = tiny_checkpoint("qwen3")
    capsys.readouterr()  # transformers' progress bars while making it
    out = tmp_path / "out"
    first, go = _start_paused(tmp_path, ["convert", str(src), str(out), "--quiet"])
    try:
        t0 = time.monotonic()
        code = main(["convert", str(src), str(out), "--quiet", "--force", "--preset", "q8"])
        assert time.monotonic() - t0 < 10  # at once, not after the first run
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"lowbit convert: error: {out}: another lowbit run is writing it "
            f"(locked through {out}.lock); wait for it to finish or choose another output path"
        )
        assert (tmp_path / "out.partial").is_dir()  # the first run's, untouched
    finally:
        go.touch()
        _stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert load(out)["recipe"]["preset"] == "q4"
    assert main(["inspect", str(out), "--verify", "--quiet"]) == 0
    assert _leftovers(out) == []
    # The lock is released with the run: the next one goes ahead.
    assert main(["convert", str(src), str(out), "--quiet", "--force", "--preset", "q8"]) == 0
    assert load(out)["recipe"]["preset"] == "q8"


def test_a_kill_between_the_commit_renames_is_recovered_by_the_next_run(
    tiny_checkpoint, tmp_path, capsys
):
    src = tiny_checkpoint("llama")
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "--quiet"]) == 0
    capsys.readouterr()
    argv = ["convert", str(src), str(out), "--quiet", "--force", "--preset", "q8"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_COMMIT_CHILD, *argv], capture_output=True, text=True
    )
    assert killed.returncode == 9, killed.stderr
    # What the kill left: no OUT, the last complete output in OUT.old.
    assert not out.exists()
    assert sorted(_leftovers(out)) == ["out.lock", "out.old", "out.partial"]

    # The next run puts OUT.old back (then refuses to replace it without --force).
    assert main(["convert", str(src), str(out), "--quiet"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert load(out)["recipe"]["preset"] == "q4"
    assert main(["inspect", str(out), "--verify", "--quiet"]) == 0
    assert _leftovers(out) == []

    # A leftover OUT.old beside a complete OUT (killed during the final
    # cleanup) and a stale OUT.partial are deleted by the next run.
    (tmp_path / "out.old").mkdir()
    (tmp_path / "out.old" / "model.safetensors").write_bytes(b"half deleted")
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / "manifest.json").write_text("{}")
    assert main(argv) == 0
    assert load(out)["recipe"]["preset"] == "q8"
    assert main(["inspect", str(out), "--verify", "--quiet"]) == 0
    assert _leftovers(out) == []


def test_a_commit_failing_between_its_renames_puts_the_old_output_back(
    tiny_checkpoint, tmp_path, monkeypatch
):
    src = tiny_checkpoint("llama")
    out = tmp_path / "out"
    convert_module.convert(src, out, progress=False)
    real = Path.rename
    calls = {"n": 0}

    def rename(self: Path, target: Path) -> Path:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="Input/output error"):
        convert_module.convert(src, out, preset="q8", force=True, progress=False)
    monkeypatch.undo()
    assert calls["n"] == 3  # commit's two renames, then the recovery's
    assert load(out)["recipe"]["preset"] == "q4"
    assert _leftovers(out) == []


class _FullDisk:
    """A file whose writes fail with ENOSPC from the ``room``-th on, as a full disk's do."""

    def __init__(self, f: object, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data: bytes) -> int:
        self._room -= 1
        if self._room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)


@pytest.mark.parametrize("fmt", ["lowbit", "npz"])
def test_a_full_disk_leaves_nothing_and_names_the_file(
    fmt, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    src = tiny_checkpoint("mistral")
    capsys.readouterr()  # transformers' progress bars while making it
    out = tmp_path / "out"
    if fmt == "lowbit":
        real_open = Path.open

        def open_(self: Path, mode: str = "r", *args: object, **kw: object):
            f = real_open(self, mode, *args, **kw)
            return _FullDisk(f, 3) if self.name == "model.safetensors" and "w" in mode else f

        monkeypatch.setattr(Path, "open", open_)
        named = str(out) + ".partial/model.safetensors"
    else:
        real_write = np.lib.format.write_array
        written = {"n": 0}

        def write_array(f: object, array: np.ndarray, **kw: object) -> None:
            written["n"] += 1
            if written["n"] == 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_write(f, array, **kw)

        monkeypatch.setattr(npz_format.np.lib.format, "write_array", write_array)
        named = str(out) + ".partial/model.npz"
    code = main(["convert", str(src), str(out), "--quiet", "--format", fmt])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert named in err
    assert "No space left on device" in err
    assert not out.exists()
    assert _leftovers(out) == []


def test_force_never_replaces_a_file_or_a_symlink(tiny_checkpoint, tmp_path, capsys):
    src = tiny_checkpoint("qwen2")
    capsys.readouterr()  # transformers' progress bars while making it
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me too")
    cases = {
        "a_file": (
            a_file,
            "exists and is not a directory; --force replaces only a model directory",
        ),
        "dir_link": (tmp_path / "dir_link", "is a symbolic link"),
        "file_link": (tmp_path / "file_link", "is a symbolic link"),
        "dangling": (tmp_path / "dangling", "is a symbolic link"),
    }
    (tmp_path / "dir_link").symlink_to(precious, target_is_directory=True)
    (tmp_path / "file_link").symlink_to(a_file)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out, message in cases.values():
        for force in ([], ["--force"]):
            assert main(["convert", str(src), str(out), "--quiet", *force]) == 2
            err = capsys.readouterr().err
            assert f"lowbit convert: error: {out}: {message}" in err
            assert _leftovers(out) == []
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    assert (precious / "notes.txt").read_text() == "keep me"
    assert a_file.read_text() == "keep me too"
    assert (tmp_path / "dir_link").is_symlink()
    assert (tmp_path / "file_link").is_symlink()
    assert not (tmp_path / "nowhere").exists()

    # The library API refuses the same way.
    with pytest.raises(OutputError, match="is a symbolic link"), writing(tmp_path / "dir_link"):
        pass


def _write_and_raise(out: Path, exc: BaseException) -> None:
    with writing(out) as partial:
        (partial / "model.safetensors").write_bytes(b"half")
        raise exc


def test_writing_removes_the_partial_output_on_any_exception(tmp_path):
    out = tmp_path / "out"
    for exc in (KeyboardInterrupt(), ValueError("bad input")):
        with pytest.raises(type(exc)):
            _write_and_raise(out, exc)
        assert not out.exists()
        assert _leftovers(out) == []
    with writing(out) as partial:
        (partial / "manifest.json").write_text("{}")
    assert (out / "manifest.json").read_text() == "{}"
    assert _leftovers(out) == []


def _eval_ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 96, size=(2, 16))


def test_upcycle_check_failing_leaves_no_output(tiny_checkpoint, tmp_path, monkeypatch):
    # A config that disagrees with the tensors written: transformers reports
    # the weights of a layer missing, and upcycle refuses the model before commit.
    real = upcycle_module._moe_config

    def wrong_config(*args: object) -> dict[str, object]:
        config = real(*args)  # type: ignore[arg-type]
        config["num_hidden_layers"] += 1
        return config

    monkeypatch.setattr(upcycle_module, "_moe_config", wrong_config)
    src = tiny_checkpoint("llama")
    out = tmp_path / "moe"
    with pytest.raises(UpcycleError, match=r"transformers reports .*missing_keys"):
        upcycle(src, out, experts=2, top_k=1, noise=0.01, eval_ids=_eval_ids())
    assert not out.exists()
    assert _leftovers(out) == []

    # Onto an existing output with force: the old one stays as it was.
    monkeypatch.undo()
    upcycle(src, out, experts=2, top_k=1, noise=0.01, evaluate=False)
    before = json.loads((out / "config.json").read_text())
    monkeypatch.setattr(upcycle_module, "_moe_config", wrong_config)
    with pytest.raises(UpcycleError, match="transformers reports"):
        upcycle(src, out, experts=2, top_k=1, noise=0.01, eval_ids=_eval_ids(), force=True)
    assert json.loads((out / "config.json").read_text()) == before
    assert _leftovers(out) == []


def test_ctrl_c_mid_convert_exits_130_with_one_line_and_leaves_nothing(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("gemma")
    out = tmp_path / "out"
    child, _go = _start_paused(tmp_path, ["convert", str(src), str(out), "--quiet"])
    assert (tmp_path / "out.partial").is_dir()
    _interrupt_and_check(child, "convert", out)


def test_a_waiting_lock_is_taken_when_the_holder_ends(tmp_path):
    # The default model's import waits (two first uses at once share it).
    out = tmp_path / "out"
    order: list[str] = []
    holding = threading.Event()

    def holder() -> None:
        with locked(out):
            holding.set()
            time.sleep(0.3)
            order.append("holder done")

    t = threading.Thread(target=holder)
    t.start()
    holding.wait(10)
    with pytest.raises(OutputError, match="another lowbit run is writing it"), locked(out):
        pass
    with locked(out, wait=True):
        order.append("waiter in")
    t.join()
    assert order == ["holder done", "waiter in"]
    assert not (tmp_path / "out.lock").exists()


# The upcycle counterpart of PAUSED_CHILD: pauses at its first router.
PAUSED_UPCYCLE_CHILD = """
import importlib, sys, time
from pathlib import Path
from lowbit.cli import main

upcycle_module = importlib.import_module("lowbit.moe.upcycle")
ready = Path(sys.argv[1])
real = upcycle_module._copy_router

def paused(*args):
    ready.touch()
    while True:
        time.sleep(0.02)

upcycle_module._copy_router = paused
sys.exit(main(sys.argv[2:]))
"""


def test_ctrl_c_mid_upcycle_exits_130_with_one_line_and_leaves_nothing(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("qwen3")
    out = tmp_path / "moe"
    ready = tmp_path / "ready"
    argv = ["upcycle", str(src), str(out), "--experts", "2", "--top-k", "1", "--no-eval"]
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSED_UPCYCLE_CHILD, str(ready), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), child.communicate(timeout=10) if child.poll() is not None else ""
    assert (tmp_path / "moe.partial").is_dir()
    _interrupt_and_check(child, "upcycle", out)
