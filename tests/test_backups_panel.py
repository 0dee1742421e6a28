"""Drive the backups panel against the testbed: the list, back up now, a drill, a pull into a
private folder, a restore side by side, and a restore into a name that holds data refused
until the researcher ticks "replace"."""

from __future__ import annotations

import stat
import time

import pytest

from labdeploy.server import psql
from labdeploy.widgets.backups import BackupsPanel
from deploy_support import drop_data_only, prepare_local_stack

# The panels and notebooks drive the same core calls that run on both servers in the API tests;
# to keep the suite's time they run on one (the trixie server runs the PsyNet tests instead).
pytestmark = pytest.mark.servers("bookworm")

APP = "t-bk-panel"
COPY = "t-bk-panel-restore"


def _drop(remote) -> None:
    drop_data_only(remote, APP, COPY)


@pytest.fixture(scope="module")
def app(session_remote, testbed):
    prepare_local_stack(session_remote, testbed)
    _drop(session_remote)
    psql.run_sql(session_remote, "CREATE DATABASE app_t_bk_panel;\n")
    psql.run_sql(session_remote, "CREATE TABLE answers (id serial PRIMARY KEY, worker text);\n"
                                 "INSERT INTO answers (worker) SELECT 'w' || g FROM generate_series(1, 25) g;\n",
                 database="app_t_bk_panel")
    yield session_remote
    _drop(session_remote)


def wait_for(cond, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def click(panel, button) -> None:
    button.click()
    assert panel.last_task is not None
    panel.last_task.join(300)
    wait_for(lambda: not panel.busy, what="the action to end")


def test_panel_backs_up_drills_pulls_and_restores_side_by_side(app, home, tmp_path):
    panel = BackupsPanel(app, app=APP, folder=str(tmp_path / "copies"))
    try:
        wait_for(lambda: panel.app_picker.value == APP, what="the app picked")
        wait_for(lambda: "No backups yet" in panel.table.value, what="the empty list")
        click(panel, panel.now_button)
        assert "Backed up t-bk-panel" in panel.message.value, panel.message.value
        wait_for(lambda: "labdeploy-backups-row" in panel.table.value, what="the new backup listed")
        assert len(panel.backups) == 1 and panel.backups.iloc[0]["rows"] == 25
        click(panel, panel.drill_button)
        assert "restores" in panel.message.value, panel.message.value
        wait_for(lambda: "✓ restores" in panel.table.value, what="the drill in the list")
        click(panel, panel.pull_button)
        assert "1 new backup copied" in panel.message.value, panel.message.value
        dumps = list((tmp_path / "copies" / APP).glob("*.dump"))
        assert len(dumps) == 1 and stat.S_IMODE(dumps[0].stat().st_mode) == 0o600
        click(panel, panel.restore_button)  # default: side by side, into t-bk-panel-restore
        assert f"into {COPY}" in panel.message.value and "25 rows" in panel.message.value, panel.message.value
        panel.into.value = COPY  # it holds data now: refused until "replace" is ticked
        click(panel, panel.restore_button)
        assert "Tick" in panel.message.value and "replace" in panel.message.value, panel.message.value
        panel.replace.value = True
        click(panel, panel.restore_button)
        assert f"into {COPY}" in panel.message.value and "previous data is backup" in panel.message.value
        panel.every.value = "120"  # a database without a deployed app has no schedule of its own
        click(panel, panel.schedule_button)
        assert "no app named" in panel.message.value and "What to do" in panel.message.value
    finally:
        panel.close()
