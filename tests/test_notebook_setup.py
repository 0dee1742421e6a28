"""Run notebooks/setup_server.ipynb top to bottom against the testbed, in a temporary HOME."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

# The panels and notebooks drive the same core calls that run on both servers in the API tests;
# to keep the suite's time they run on one (the trixie server runs the PsyNet tests instead).
pytestmark = pytest.mark.servers("bookworm")

NOTEBOOK = REPO / "notebooks" / "setup_server.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_setup_notebook_runs_top_to_bottom(home, testbed, monkeypatch, tmp_path, known_hosts):
    from labdeploy.remote import Remote

    monkeypatch.setenv("LABDEPLOY_TESTBED", testbed["file"])
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the kernel imports this checkout
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    admin = Remote(testbed["ssh"]["host"], 22, testbed["ssh"]["user"], key_filename=testbed["ssh"]["key"],
                   known_hosts=known_hosts, use_agent=False)
    body = None
    try:
        client.execute()
        pub = home / ".ssh" / "id_ed25519.pub"
        assert pub.exists(), "the notebook made a key in the temporary HOME"
        body = pub.read_text().split()[1]
        outputs = json.dumps([c.get("outputs", []) for c in nb.cells])
        assert testbed["ssh"]["password"] not in outputs
        assert "Logged in as labdeploy@" in outputs
        assert "Room for about" in outputs
        assert "Steps: check docker, write files, start services, wait for postgresql, record settings" in outputs
        assert (home / ".config" / "labdeploy" / "servers.json").exists()
    finally:
        # The notebook appended its new key to labdeploy's authorized_keys: take exactly that line out.
        if body is None and (home / ".ssh" / "id_ed25519.pub").exists():
            body = (home / ".ssh" / "id_ed25519.pub").read_text().split()[1]
        if body:
            admin.connect()
            lines = admin.get_bytes(".ssh/authorized_keys").decode().splitlines(keepends=True)
            if any(body in l for l in lines):
                admin.put_bytes(".ssh/authorized_keys", "".join(l for l in lines if body not in l), mode=0o600)
        admin.close()
