"""Monitoring end to end with the example experiment deployed (two copies) by labdeploy's own
deploy: status, logs, exec, stats, a snapshot with connections we opened as the app's role,
the limit warning, the sampler, and restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from labdeploy.app import deploy
from labdeploy.watch import monitor
from labdeploy import names
from labdeploy.progress import Collector, WarningEvent
from test_monitor_support import hold_connections, sql, wait_connections
from deploy_support import destroy_if_deployed, prepare_local_stack

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"
APP_A, APP_B = "t-mon-e2e-a", "t-mon-e2e-b"
LIMIT_A = 3


@pytest.fixture(scope="module")
def deployed(testbed, session_remote):
    r = session_remote
    prepare_local_stack(r, testbed)
    kw = {"build_args": {"BASE_IMAGE": testbed["images"]["python"]}, "redis_image": testbed["images"]["redis"],
          "health_path": "/health"}
    try:
        for app, limit in ((APP_A, LIMIT_A), (APP_B, 20)):
            destroy_if_deployed(r, app)
            deploy.deploy(EXAMPLE, app, r, connection_limit=limit, **kw)
        yield r
    finally:
        monitor.close_persistent_psql(r)
        for app in (APP_A, APP_B):
            destroy_if_deployed(r, app)


def participant(testbed, app: str) -> None:
    """What a participant's browser does first: it makes the app use its database."""
    res = requests.post(f"http://{testbed['http']['host']}:{testbed['http']['port']}/api/participants",
                        headers={"Host": f"{app}.localhost"}, json={"worker_id": "t-mon"}, timeout=15)
    assert res.status_code == 200, res.text


def test_status_logs_exec_stats(deployed, testbed):
    df = monitor.status(deployed)
    for app in (APP_A, APP_B):
        mine = df[df["app"] == app].set_index("service")
        assert set(mine.index) == {"web", "worker", "clock", "redis"}
        assert (mine["state"] == "running").all()
    participant(testbed, APP_A)
    logs = monitor.logs(APP_A, deployed, tail=50)
    assert {"web", "worker", "clock"} <= set(logs["service"])
    res = monitor.exec_(APP_A, deployed, "web", ["python", "-c",
                                                 "import os; print('DATABASE_URL' in os.environ, os.getcwd())"])
    assert res.ok and res.stdout.startswith("True")
    env = monitor.exec_(APP_A, deployed, "web", "env").stdout  # what a researcher types to debug
    role = names.db_identifier(APP_A)
    assert f"DATABASE_URL=postgresql://{role}:***@" in env  # the password never reaches the notebook
    st = monitor.stats(deployed, APP_A)
    assert set(st["service"]) == {"web", "worker", "clock", "redis"} and (st["mem_bytes"] > 0).all()


def test_connections_warning_sampler_and_restart(deployed, testbed):
    r = deployed
    role = names.db_identifier(APP_A)
    hold_connections(r, "dallinger-postgresql", role, LIMIT_A, seconds=40, application_name="t-mon-e2e-holder")
    wait_connections(r, "dallinger-postgresql", role, LIMIT_A)
    snap = monitor.snapshot(r)
    mine = snap.activity[snap.activity["user"] == role]
    assert (mine["application_name"] == "t-mon-e2e-holder").sum() >= LIMIT_A
    summ = snap.summary().set_index("app")
    assert summ.loc[APP_A, "role_limit"] == LIMIT_A and summ.loc[APP_A, "connections"] >= LIMIT_A
    assert summ.loc[APP_B, "role_limit"] == 20
    [w] = [w for w in snap.warnings() if w.kind == "app" and w.apps == (APP_A,)]
    assert "at its limit" in w.message

    events = Collector()
    with monitor.Sampler(r, interval=0.5, reporter=events) as s:
        deadline = time.monotonic() + 20
        while len(s.samples) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    frame = s.frame
    assert (frame[frame["app"] == APP_A]["connections"] >= LIMIT_A).all()
    assert set(frame["app"]) >= {APP_A, APP_B}
    assert any(APP_A in e.message for e in events.of(WarningEvent))

    # Free the slots we held (only our own sessions), so the app can connect after the restart.
    sql(r, "dallinger-postgresql", "select pg_terminate_backend(pid) from pg_stat_activity "
                                   "where application_name = 't-mon-e2e-holder'")
    before = monitor.status(r, APP_A).set_index("service")["started_at"]
    after = monitor.restart(APP_A, r).set_index("service")
    for svc in ("web", "worker", "clock"):
        assert after.loc[svc, "started_at"] > before[svc] and after.loc[svc, "state"] == "running"
    assert after.loc["redis", "started_at"] == before["redis"]
    participant(testbed, APP_A)  # it serves again after the restart
