"""Participant-aware operations on the testbed: how many participants are working (a
Dallinger-style participant table, or an app's own working_query), shown by status, refused
by destroy, waited for by restart.

The example experiment (examples/stroop) is deployed once as t-part-app; its participants
enter through Caddy as a browser would. A database-only "app" t-part-dal holds a
Dallinger-style participant table.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from labdeploy.app import apps, deploy
from labdeploy.errors import ValidationError
from labdeploy.progress import Collector, LogLine, WarningEvent
from labdeploy.server import psql
from labdeploy.watch import containers, participants
from deploy_support import deploy_kwargs, destroy_if_deployed, drop_data_only, prepare_local_stack
from test_cli_support import CLI

# One server: counting participants is SQL and HTTP through Caddy, the same on both engines: proved on
# the current one.
pytestmark = pytest.mark.servers("trixie")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"
APP = "t-part-app"
DAL = "t-part-dal"
NOT_FINISHED = "select count(*) from participants where not finished"


def through_caddy(testbed, path: str, method: str = "GET", **kw) -> requests.Response:
    return requests.request(method, f"http://{testbed['http']['host']}:{testbed['http']['port']}{path}",
                            headers={"Host": f"{APP}.localhost"}, timeout=15, **kw)


def enter(testbed) -> int:
    """A participant starts the experiment (and is working until they finish)."""
    r = through_caddy(testbed, "/api/participants", "POST", json={"worker_id": "t-part"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def finish(testbed, pid: int) -> None:
    assert through_caddy(testbed, f"/api/participants/{pid}/finish", "POST").status_code == 200


def finish_all(session_remote) -> None:
    psql.run_sql(session_remote, "UPDATE participants SET finished = TRUE;", "app_t_part_app")


@pytest.fixture(scope="module")
def deployed(testbed, session_remote):
    prepare_local_stack(session_remote, testbed)
    destroy_if_deployed(session_remote, APP)
    deploy.deploy(EXAMPLE, APP, session_remote, **deploy_kwargs(testbed))
    yield
    destroy_if_deployed(session_remote, APP)


@pytest.fixture(scope="module")
def dallinger_table(session_remote):
    """A database like a Dallinger app's: two participants working, one approved."""
    drop_data_only(session_remote, DAL)
    psql.run_sql(session_remote, "CREATE ROLE app_t_part_dal LOGIN;\nCREATE DATABASE app_t_part_dal OWNER app_t_part_dal;\n")
    psql.run_sql(session_remote, "CREATE TABLE participant (id serial PRIMARY KEY, status varchar(26));\n"
                                 "INSERT INTO participant (status) VALUES ('working'), ('working'), ('approved');\n",
                 "app_t_part_dal")
    yield
    drop_data_only(session_remote, DAL)


def test_an_app_without_participant_table_or_query_is_unknown_and_status_says_why(deployed, session_remote):
    participants.set_working_query(session_remote, APP, None)
    df = containers.status(session_remote, APP, participants=True)
    assert str(df["working"].dtype) == "Int64" and df["working"].isna().all()
    assert "no participant table and no working_query" in df.attrs["working_unknown"][APP]
    assert "working" not in containers.status(session_remote, APP).columns  # only when asked


def test_a_dallinger_participant_table_counts_the_working_ones(dallinger_table, session_remote):
    assert participants.working(session_remote, DAL) == 2
    psql.run_sql(session_remote, "UPDATE participant SET status = 'approved' WHERE id = 1;", "app_t_part_dal")
    assert participants.working(session_remote, DAL) == 1


def test_a_working_query_counts_the_apps_participants_and_status_shows_it(deployed, testbed, session_remote):
    finish_all(session_remote)
    participants.set_working_query(session_remote, APP, NOT_FINISHED)
    assert participants.working(session_remote, APP) == 0
    pid = enter(testbed)
    df = containers.status(session_remote, APP, participants=True)
    assert list(df["working"]) == [1] * len(df)
    assert participants.working_all(session_remote)[APP] == 1
    finish(testbed, pid)
    assert participants.working(session_remote, APP) == 0


def test_the_working_query_runs_read_only_and_a_failure_is_none_with_the_reason(deployed, session_remote):
    def last_id() -> int:
        return int(psql.query_df(session_remote, "SELECT last_value FROM participants_id_seq",
                                 "app_t_part_app")["last_value"][0])

    before = last_id()
    participants.set_working_query(session_remote, APP, "select nextval('participants_id_seq')")
    try:
        events = Collector()
        assert participants.working(session_remote, APP, reporter=events) is None
        assert "read-only transaction" in events.of(WarningEvent)[0].message
        assert last_id() == before  # nothing was written
        # status keeps working, the app's count is unknown
        assert containers.status(session_remote, APP, participants=True)["working"].isna().all()
    finally:
        participants.set_working_query(session_remote, APP, NOT_FINISHED)
    with pytest.raises(ValidationError):
        participants.set_working_query(session_remote, APP, "select 1; delete from participants")


def test_destroy_is_refused_while_a_participant_works_and_the_app_keeps_serving(deployed, testbed, session_remote):
    participants.set_working_query(session_remote, APP, NOT_FINISHED)
    pid = enter(testbed)
    try:
        with pytest.raises(participants.ParticipantsWorking) as refused:
            apps.destroy(APP, session_remote, confirm=True)
        assert "1 participant is working" in refused.value.message and "force=True" in refused.value.hint
        df = containers.status(session_remote, APP)
        assert set(df["state"]) == {"running"}
        assert through_caddy(testbed, "/").status_code == 200
    finally:
        finish(testbed, pid)


def test_restart_reports_the_working_participants_and_waits_until_none_works(deployed, testbed, session_remote):
    participants.set_working_query(session_remote, APP, NOT_FINISHED)
    pid = enter(testbed)
    web_started = containers.status(session_remote, APP).set_index("service").loc["web", "started_at"]
    with pytest.raises(participants.IdleTimeout) as timed_out:
        containers.restart(APP, session_remote, ["web"], wait_idle=True, idle_timeout=2)
    assert "1 still working" in timed_out.value.message and "idle_timeout" in timed_out.value.hint
    assert containers.status(session_remote, APP).set_index("service").loc["web", "started_at"] == web_started

    threading.Timer(3, finish, (testbed, pid)).start()
    events = Collector()
    t0 = time.monotonic()
    df = containers.restart(APP, session_remote, ["web"], wait_idle=True, idle_timeout=60, reporter=events)
    assert time.monotonic() - t0 >= 3
    assert df.attrs["working_before"] == 1
    lines = [e.line for e in events.of(LogLine)]
    assert f"1 participant working in {APP}" in lines and f"0 participants working in {APP}" in lines
    assert df.set_index("service").loc["web", "started_at"] > web_started


def test_wait_idle_returns_at_once_for_an_app_that_can_not_tell(deployed, session_remote):
    participants.set_working_query(session_remote, APP, None)
    events = Collector()
    t0 = time.monotonic()
    assert participants.wait_idle(session_remote, APP, 60, poll=1, reporter=events) is None
    assert time.monotonic() - t0 < 15
    assert "not waiting" in events.of(WarningEvent)[0].message
    participants.set_working_query(session_remote, APP, NOT_FINISHED)


def test_the_cli_shows_working_participants_and_destroy_refuses_with_exit_3(deployed, testbed, session_remote,
                                                                              tmp_path):
    cli = CLI(tmp_path)
    s = testbed["ssh"]
    cli.ok("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"],
           "--trust-host-key", s["host_key_fingerprint"])
    participants.set_working_query(session_remote, APP, NOT_FINISHED)
    pid = enter(testbed)
    try:
        rows = cli.ok("status", "--app", APP, "--participants", "--json").json()
        assert {r["working"] for r in rows} == {1}, rows
        text = cli.ok("status", "--participants").out
        assert "working" in text
        refused = cli("destroy", "--app", APP, "--yes")
        assert refused.code == 3, str(refused)
        assert "1 participant is working" in refused.err and "--force" in refused.err
        assert set(containers.status(session_remote, APP)["state"]) == {"running"}
    finally:
        finish(testbed, pid)


def test_destroy_with_force_goes_ahead_and_says_how_many_were_working(deployed, testbed, session_remote):
    participants.set_working_query(session_remote, APP, NOT_FINISHED)
    enter(testbed)
    events = Collector()
    result = apps.destroy(APP, session_remote, confirm=True, remove_data=True, export_check=False,
                          remove_backups=True, force=True, reporter=events)
    assert result.working == 1 and "1 participant working" in result.summary() and "force" in result.summary()
    assert any("1 participant working" in line for line in events.lines())
    assert APP not in set(pd.DataFrame(apps.apps(session_remote))["app"])
