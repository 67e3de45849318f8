"""README.md's "Layout" section lists every folder of the repository, one line
each, and no folder that is gone: a newcomer's map that cannot go stale."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _listed() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    # Lines of the indented block: "    path/   what it holds".
    return {m.group(1).rstrip("/") for m in re.finditer(r"(?m)^    (\S+/)\s", section)}


def _tracked_folders() -> set[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        # The tracked folders come from git; a source archive (sdist) has no
        # .git and no README check to make. CI always runs in a clone.
        pytest.skip("not a git checkout: the tracked folders come from git ls-files")
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return {str(Path(f).parent) for f in files} - {"."}


def test_layout_lists_every_folder():
    listed, tracked = _listed(), _tracked_folders()
    assert tracked - listed == set(), "add these folders to README.md's Layout section"
    assert listed - tracked == set(), "README.md's Layout names folders that are gone"
