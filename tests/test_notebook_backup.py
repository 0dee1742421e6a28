"""Run notebooks/backup_and_restore.ipynb top to bottom against the testbed, in a temporary HOME."""

from __future__ import annotations

import json
from pathlib import Path
import stat

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from deploy_support import destroy_if_deployed

# The panels and notebooks drive the same core calls that run on both servers in the API tests;
# to keep the suite's time they run on one (the trixie server runs the PsyNet tests instead).
pytestmark = pytest.mark.servers("bookworm")

NOTEBOOK = REPO / "notebooks" / "backup_and_restore.ipynb"
APP = "demo-backup"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_backup_and_restore_notebook_runs_top_to_bottom(home, testbed, monkeypatch, tmp_path, session_remote):
    monkeypatch.setenv("LABDEPLOY_TESTBED", testbed["file"])
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the kernel imports this checkout
    workdir = tmp_path / "notebooks"
    workdir.mkdir()
    (tmp_path / "examples").symlink_to(REPO / "examples")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    for name in (APP, f"{APP}-restore"):
        destroy_if_deployed(session_remote, name)
    try:
        client.execute()
        outputs = json.dumps([c.get("outputs", []) for c in nb.cells], ensure_ascii=False)
        assert "server: testbed | app: demo-backup" in outputs
        assert "restored into demo-backup-restore | counts match: True" in outputs
        assert "restores" in outputs or "row counts match" in outputs
        dumps = sorted((workdir / "backups" / APP).glob("*.dump"))
        assert dumps and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in dumps)
        assert not session_remote.exists(f"dallinger/{APP}")
        assert not any(s in outputs for s in (testbed["ssh"]["password"], testbed["registry"]["password"]))
    finally:
        for name in (APP, f"{APP}-restore"):
            destroy_if_deployed(session_remote, name)
        session_remote.run(["rm", "-rf", "--", f"dallinger-data/backups/{APP}", f"dallinger-data/backups/{APP}-restore"])
