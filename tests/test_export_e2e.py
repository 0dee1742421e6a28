"""End to end: deploy the example experiment, answer it through its web page (HTTP through
Caddy), then export it with the panel, check the data, and "export, then destroy"."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
import requests

from labdeploy.app import apps, deploy
from labdeploy import export
from labdeploy.server import layout
from labdeploy.widgets.export import ExportPanel
from deploy_support import destroy_if_deployed, prepare_local_stack

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"
APP = "t-exp-e2e"


def through_caddy(testbed, path: str, method: str = "GET", **kw) -> requests.Response:
    return requests.request(method, f"http://{testbed['http']['host']}:{testbed['http']['port']}{path}",
                            headers={"Host": f"{APP}.localhost", "User-Agent": "export-test-browser/1.0"},
                            timeout=15, **kw)


def take_part(testbed, worker: str) -> int:
    """One participant through the real web API, as the page's JavaScript does it."""
    assert through_caddy(testbed, "/").status_code == 200
    p = through_caddy(testbed, "/api/participants", "POST", json={"worker_id": worker}).json()
    for t in p["trials"]:
        r = through_caddy(testbed, f"/api/participants/{p['id']}/responses", "POST",
                          json={**t, "answer": t["ink"], "rt_ms": 400.5, "key": "k", "screen": "1920x1080"})
        assert r.status_code == 200, r.text
    assert through_caddy(testbed, f"/api/participants/{p['id']}/finish", "POST").status_code == 200
    return len(p["trials"])


@pytest.fixture(scope="module")
def deployed(testbed, session_remote):
    prepare_local_stack(session_remote, testbed)
    destroy_if_deployed(session_remote, APP)
    deploy.deploy(EXAMPLE, APP, session_remote, build_args={"BASE_IMAGE": testbed["images"]["python"]},
                  redis_image=testbed["images"]["redis"], health_path="/health")
    answered = {"W-one": take_part(testbed, "W-one"), "W-two": take_part(testbed, "W-two")}
    yield answered
    destroy_if_deployed(session_remote, APP)


def wait_for(cond, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def panel(deployed, session_remote, tmp_path, home):
    p = ExportPanel(session_remote, app=APP, folder=str(tmp_path / "exports"))
    wait_for(lambda: p.app_picker.value == APP and p.tables.options, what="the app's tables in the panel")
    return p


def test_panel_exports_what_participants_submitted(panel, deployed, session_remote, tmp_path):
    labels = [label for label, _ in panel.tables.options]
    assert any(label.startswith("responses (") for label in labels) and "participants" in panel.tables.value
    panel.mode.value = "both"
    panel.parquet.value = True
    panel.files.value = True
    panel.logs.value = True
    panel.export_button.click()
    panel.last_task.join(300)
    assert "labdeploy-error" not in panel.message.value, panel.message.value
    data = panel.data
    assert {"participants", "responses", "jobs", "launches"} <= set(data)
    workers = data["participants"].set_index("worker_id")
    for worker, n in deployed.items():
        pid = workers.loc[worker, "id"]
        assert (data["responses"]["participant_id"] == pid).sum() == n  # what was submitted, row for row
        assert bool(workers.loc[worker, "finished"])
    r = data["responses"]
    assert str(r["created_at"].dt.tz) == "UTC" and r["correct"].dtype == bool
    assert r["extra"].iloc[0] == {"key": "k", "screen": "1920x1080"}
    assert "data-table='responses'" in panel.summary.value
    assert len(panel.previews.children) == len(data) and panel.previews.get_title(0) == list(data)[0]
    # anonymised: worker ids and user agents really changed, in the DataFrames and the archive
    anon = panel.anonymous["participants"]
    assert not set(anon["worker_id"]) & set(deployed) and anon["user_agent"].isna().all()
    regular_zip = next(Path(p) for p in panel.paths if p.endswith("Z-data.zip"))
    anon_zip = next(Path(p) for p in panel.paths if p.endswith("-anonymous-data.zip"))
    assert "W-one" in zipfile.ZipFile(regular_zip).read("data/participants.csv").decode()
    assert "W-one" not in zipfile.ZipFile(anon_zip).read("data/participants.csv").decode()
    assert "export-test-browser" not in zipfile.ZipFile(anon_zip).read("data/participants.csv").decode()
    back = export.load_export(regular_zip)
    assert len(back["responses"]) == len(r) and back["participants"]["worker_id"].tolist() == \
        data["participants"]["worker_id"].tolist()
    assert (tmp_path / "exports" / f"{APP}-files" / "assets" / "stimuli.json").exists()  # uploaded assets
    assert "web" in (tmp_path / "exports" / f"{APP}-logs.txt").read_text()


def test_query_uses_the_app_role(deployed, session_remote):
    df = export.query(APP, session_remote, "SELECT worker_id, n_trials FROM participants WHERE worker_id = :w",
                      {"w": "W-one"})
    assert df["n_trials"].tolist() == [deployed["W-one"]]


def test_destroy_refused_without_export_then_export_and_destroy(panel, session_remote, home):
    with pytest.raises(export.ExportRequired):
        apps.destroy(APP, session_remote, confirm=True, remove_data=True)
    assert export.database_exists(APP, session_remote)  # nothing was dropped
    panel.destroy_button.click()  # not confirmed yet: refused, nothing happens
    panel.last_task.join(60)
    assert "confirmation" in panel.message.value and export.database_exists(APP, session_remote)
    panel.confirm_destroy.value = True
    panel.destroy_button.click()
    panel.last_task.join(300)
    assert "labdeploy-error" not in panel.message.value, panel.message.value
    assert "destroyed" in panel.message.value
    assert not export.database_exists(APP, session_remote)
    assert not session_remote.exists(layout.app_dir(APP))
    saved = export.load_export(next(p for p in panel.paths if p.endswith("Z-data.zip")))
    assert len(saved["responses"]) == len(panel.data["responses"]) > 0
