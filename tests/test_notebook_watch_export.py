"""Run notebooks/watch_and_export.ipynb top to bottom against the testbed, in a temporary HOME."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from deploy_support import destroy_if_deployed

# The panels and notebooks drive the same core calls that run on both servers in the API tests;
# to keep the suite's time they run on one (the trixie server runs the PsyNet tests instead).
pytestmark = pytest.mark.servers("bookworm")

NOTEBOOK = REPO / "notebooks" / "watch_and_export.ipynb"
APP = "demo-watch"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_watch_and_export_notebook_runs_top_to_bottom(home, testbed, monkeypatch, tmp_path, session_remote):
    monkeypatch.setenv("LABDEPLOY_TESTBED", testbed["file"])
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the kernel imports this checkout
    workdir = tmp_path / "notebooks"
    workdir.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Run from a copy's folder so the exports land in tmp, with ../examples still resolving.
    (tmp_path / "examples").symlink_to(REPO / "examples")
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    destroy_if_deployed(session_remote, APP)
    try:
        client.execute()
        outputs = json.dumps([c.get("outputs", []) for c in nb.cells], ensure_ascii=False)
        assert "server: testbed | app: demo-watch" in outputs
        assert "app_demo_watch" in outputs  # the app's own database in the connections summary
        assert "watch-demo" in outputs  # the participant's worker id in the regular export
        # The anonymised copy does not carry it.
        anon_cell = next(c for c in nb.cells if "data.anonymous" in c.source)
        assert "watch-demo" not in json.dumps(anon_cell.outputs)
        zips = sorted((workdir / "exports").glob("*.zip"))
        assert len(zips) == 2, zips
        assert "dropped" in outputs or "removed" in outputs
        assert not session_remote.exists("dallinger/demo-watch")
        secrets = [testbed["ssh"]["password"], testbed["registry"]["password"]]
        assert not any(s in outputs for s in secrets)
    finally:
        destroy_if_deployed(session_remote, APP)
