"""The notebooks in notebooks/ run headless, without errors, and their own
assertions (key numbers) hold. They run in a temporary directory, so the
figures they save are not left in the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

pytest.importorskip("nbclient")
pytest.importorskip("transformers")


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quantization_error.ipynb", "model_accuracy.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_checks_pass(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    copy = tmp_path / path.name
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the cell and traceback
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "all checks passed" in outputs
