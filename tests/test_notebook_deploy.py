"""Run notebooks/deploy.ipynb top to bottom against the testbed, in a temporary HOME."""

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

NOTEBOOK = REPO / "notebooks" / "deploy.ipynb"
APP = "demo-stroop"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_deploy_notebook_runs_top_to_bottom(home, testbed, monkeypatch, tmp_path, session_remote):
    monkeypatch.setenv("LABDEPLOY_TESTBED", testbed["file"])
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the kernel imports this checkout
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    destroy_if_deployed(session_remote, APP)
    try:
        client.execute()
        outputs = json.dumps([c.get("outputs", []) for c in nb.cells], ensure_ascii=False)
        assert "is live at http://demo-stroop.localhost/" in outputs
        assert "Images and registry" in outputs  # the optional registry panel renders in the notebook
        assert "accuracy: 1.0" in outputs
        assert "now running version" in outputs and "True" in outputs  # the v2 title is served
        assert "removed containers, web address" in outputs and "kept database" in outputs
        # No secret reaches the notebook's outputs.
        assert testbed["ssh"]["password"] not in outputs
        assert testbed["registry"]["password"] not in outputs
        assert "password ••••••••" in outputs  # the dashboard password printed masked
        assert not session_remote.exists("dallinger/demo-stroop")  # destroyed: its folder is gone
        assert (home / ".config" / "labdeploy").exists()  # registered in the temporary HOME only
    finally:
        destroy_if_deployed(session_remote, APP)
