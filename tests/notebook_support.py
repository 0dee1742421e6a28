"""What the notebook tests share: a notebook run as a researcher would, from a `notebooks/`
folder beside `examples/`, against the testbed, with the kernel importing this checkout."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO


def assert_stored_without_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def notebook_client(notebook: Path, testbed: dict, monkeypatch, tmp_path: Path):
    """(the notebook, a client that runs it, its working folder)."""
    monkeypatch.setenv("LABDEPLOY_TESTBED", testbed["file"])
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout
    workdir = tmp_path / "notebooks"
    workdir.mkdir()
    (tmp_path / "examples").symlink_to(REPO / "examples")
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    return nb, client, workdir
