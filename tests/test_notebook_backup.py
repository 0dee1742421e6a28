"""Run notebooks/backup_and_restore.ipynb top to bottom against the testbed, in a temporary HOME."""

from __future__ import annotations

import json
import stat

import pytest

from tests.conftest import REPO
from tests.notebook_support import assert_stored_without_outputs, notebook_client
from deploy_support import destroy_if_deployed

# The panels and notebooks drive the same core calls that run on both servers in the API tests;
# to keep the suite's time they run on one (the trixie server runs the PsyNet tests instead).
pytestmark = pytest.mark.servers("bookworm")

NOTEBOOK = REPO / "notebooks" / "backup_and_restore.ipynb"
APP = "demo-backup"


def test_notebook_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_backup_and_restore_notebook_runs_top_to_bottom(home, testbed, monkeypatch, tmp_path, session_remote):
    nb, client, workdir = notebook_client(NOTEBOOK, testbed, monkeypatch, tmp_path)
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
