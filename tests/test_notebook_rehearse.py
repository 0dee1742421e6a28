"""Run notebooks/rehearse.ipynb top to bottom against the testbed, in a temporary HOME: the
panel shows, a small rehearsal of examples/stroop gives its sentence and tables, and the copy is
gone afterwards."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tests.notebook_support import assert_stored_without_outputs, notebook_client
from deploy_support import destroy_if_deployed

# The panels and notebooks drive the same core calls that run on both servers in the API tests;
# to keep the suite's time they run on one.
pytestmark = pytest.mark.servers("bookworm")

NOTEBOOK = REPO / "notebooks" / "rehearse.ipynb"
COPY = "demo-rehearse-rh"


def test_notebook_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_rehearse_notebook_runs_top_to_bottom(home, testbed, monkeypatch, tmp_path, session_remote):
    nb, client, _ = notebook_client(NOTEBOOK, testbed, monkeypatch, tmp_path)
    destroy_if_deployed(session_remote, COPY)
    try:
        client.execute()
        outputs = json.dumps([c.get("outputs", []) for c in nb.cells], ensure_ascii=False)
        said = json.dumps(next(c for c in nb.cells if "rehearsal.rehearse(" in c.source).outputs)
        # Either answer is the notebook working: with the machine's 2 cores busy with other tests, even 2
        # participants may see p95 over 1 s (once seen while the full suite ran), and the sentence says so.
        assert "This experiment on this server holds about " in said or "did not hold even" in said, said
        assert "p95" in outputs and "per_participant" in outputs  # the latency and costs tables
        assert "image/png" in outputs  # the plot
        assert not session_remote.exists(f"dallinger/{COPY}")
        assert testbed["ssh"]["password"] not in outputs
    finally:
        destroy_if_deployed(session_remote, COPY)
