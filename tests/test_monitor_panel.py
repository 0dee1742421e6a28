"""Drive the monitor panel against the testbed: status table, logs and follow, exec,
restart with confirmation, connections gauge/chart/warnings, and stop."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from labdeploy.watch import monitor
from labdeploy.widgets.monitor import MonitorPanel, status_html
from test_monitor_support import drop_app_db, hold_connections, make_app, make_app_db, remove_app, wait_connections, wait_up

# The panels and notebooks drive the same core calls that run on both servers in the API tests;
# to keep the suite's time they run on one (the trixie server runs the PsyNet tests instead).
pytestmark = pytest.mark.servers("bookworm")

APP = "t-mon-panel"
SHARED_PG = "dallinger-postgresql"


@pytest.fixture(scope="module")
def app(session_remote, testbed):
    remove_app(session_remote, APP)
    try:
        make_app(session_remote, APP, testbed["images"])
        ident = make_app_db(session_remote, SHARED_PG, APP, limit=1)
        hold_connections(session_remote, SHARED_PG, ident, 1, seconds=120)
        wait_connections(session_remote, SHARED_PG, ident, 1)
        wait_up(session_remote, APP)
        yield session_remote
    finally:
        drop_app_db(session_remote, SHARED_PG, APP)
        remove_app(session_remote, APP)


@pytest.fixture
def panel(app, home):  # home: the server list is read from a temporary HOME, never the real one
    p = MonitorPanel(app, refresh=0.5, interval=0.5)
    try:
        yield p
    finally:
        p.stop()


def wait_for(cond, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ready(panel):
    wait_for(lambda: APP in panel.app_picker.options, what="the app in the picker")
    panel.app_picker.value = APP
    wait_for(lambda: "web" in panel.exec_service.options, what="services of the app")


def test_status_table_gauge_chart_and_warning(panel):
    ready(panel)
    wait_for(lambda: f"data-app='{APP}' data-service='web' data-state='running'" in panel.status_table.value,
             what="status row")
    first = panel.updated.value
    wait_for(lambda: panel.updated.value != first, what="a timed refresh")
    wait_for(lambda: panel.gauge_label.value and len(panel.chart.value) > 1000, what="gauge and chart")
    assert panel.gauge.max >= 20 and panel.gauge.value >= 1
    # Our role has limit 1 and holds 1 connection: a prominent warning names the app.
    wait_for(lambda: f"{APP} uses 1 of its 1" in panel.warnings.value, what="the warning")
    assert "labdeploy-warning" in panel.warnings.value and APP in panel.summary.value


def test_logs_follow_and_service_filter(panel):
    ready(panel)
    panel.log_service.value = "worker"
    panel.log_tail.value = 3
    panel.logs_button.click()
    panel.last_task.join(30)
    lines = panel.log_pane.text.splitlines()
    assert len(lines) == 3 and all(line.startswith("worker | worker ") for line in lines)
    panel.log_service.value = "clock"
    panel.log_tail.value = 0
    panel.follow.value = True
    task = panel.last_task
    wait_for(lambda: "clock | clock tick" in panel.log_pane.text, what="followed lines")
    panel.follow.value = False
    task.join(15)
    assert not task.is_alive()
    # With a backlog: the last lines first, then new ones, none twice.
    panel.log_service.value = "web"
    panel.log_tail.value = 2
    panel.follow.value = True
    task = panel.last_task
    wait_for(lambda: len([x for x in panel.log_pane.text.splitlines() if "web tick" in x]) >= 4,
             what="backlog and new lines")
    panel.follow.value = False
    task.join(15)
    ticks = [int(x.rsplit(" ", 1)[1]) for x in panel.log_pane.text.splitlines() if "web tick" in x]
    assert ticks == sorted(set(ticks)) and ticks == list(range(ticks[0], ticks[0] + len(ticks)))


def test_resource_use_table(panel):
    ready(panel)
    panel.stats_button.click()
    panel.last_task.join(60)
    assert "labdeploy-monitor-stats" in panel.stats_table.value and APP in panel.stats_table.value
    assert "(shared)" in panel.stats_table.value  # the shared PostgreSQL and Caddy too


def test_exec_box(panel):
    ready(panel)
    panel.exec_service.value = "web"
    panel.exec_command.value = "echo hello from $((40+2))"
    panel.exec_button.click()
    panel.last_task.join(30)
    assert "hello from 42" in panel.exec_output.value and "[exit status 0]" in panel.exec_output.value
    panel.exec_command.value = "definitely-not-a-command"
    panel.exec_button.click()
    panel.last_task.join(30)
    assert "exit status 127" in panel.exec_output.value  # through sh: the shell says "not found"
    panel.exec_command.value = ""
    panel.exec_button.click()
    panel.last_task.join(30)
    assert "labdeploy-error" in panel.message.value and "empty" in panel.message.value


def test_restart_needs_confirmation(panel, app):
    ready(panel)
    before = monitor.status(app, APP).set_index("service")["started_at"]
    panel.restart_services.value = ("worker",)
    panel.restart_button.click()
    assert panel.confirm_row.layout.display == "flex" and "worker of t-mon-panel" in panel.confirm_text.value
    panel.confirm_no.click()
    assert panel.confirm_row.layout.display == "none"
    time.sleep(0.5)
    assert monitor.status(app, APP).set_index("service")["started_at"].equals(before)  # nothing restarted
    panel.restart_button.click()
    panel.confirm_yes.click()
    panel.last_task.join(120)
    assert "restarted and running again" in panel.message.value, panel.message.value
    after = monitor.status(app, APP).set_index("service")["started_at"]
    assert after["worker"] > before["worker"] and after["web"] == before["web"]


def test_stop_ends_background_work(panel):
    ready(panel)
    panel.log_service.value = "web"
    panel.follow.value = True
    wait_for(lambda: panel.sampler is not None and panel.sampler.running, what="the sampler")
    assert panel.running
    panel.stop_button.click()
    assert not panel.running and not panel.sampler.running and panel.follow.value is False
    n = len(panel.sampler.samples)
    time.sleep(1.2)
    assert len(panel.sampler.samples) == n


def test_uptime_format():
    from labdeploy.widgets.monitor import _fmt_uptime

    assert [_fmt_uptime(pd.Timedelta(seconds=x)) for x in (5, 125, 7300, 90000)] == ["5s", "2m 5s", "2h 1m", "1d 1h"]
    assert _fmt_uptime(pd.NaT) == ""


def test_status_html_shows_a_restarting_container():
    df = pd.DataFrame([{"app": "a", "service": "web", "state": "restarting", "health": "", "uptime": pd.NaT,
                        "restarts": 7, "image": "img"}])
    out = status_html(df)
    assert "data-state='restarting'" in out and "#c5221f" in out and ">7<" in out


def test_server_picker_with_a_registered_server(app, home, testbed):
    from labdeploy.ssh import servers

    s = testbed["ssh"]
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "known_hosts").write_text(s["known_hosts_line"] + "\n")  # as after a confirmed first contact
    servers.add("tb-mon", s["host"], s["user"], port=s["port"], key=s["key"])
    p = MonitorPanel(app, refresh=0.5, interval=1)
    try:
        assert p.server_picker.options == (app.label, "tb-mon")
        wait_for(lambda: APP in p.app_picker.options, what="apps via the passed Remote")
        p.server_picker.value = "tb-mon"  # reconnects through the registered name
        wait_for(lambda: p.remote is not app and p.remote is not None, what="the switch")
        assert p.remote.host == s["host"]
        wait_for(lambda: APP in p.status_table.value and p.sampler is not None and p.sampler.running
                 and p.sampler.remote is p.remote, what="status and sampling via the name")
    finally:
        p.stop()
        if p.remote is not app:
            p.remote.close()


def test_missing_postgres_shows_a_prominent_warning_and_status_still_works(app, home):
    p = MonitorPanel(app, refresh=0.5, interval=0.5, container="t-mon-no-such-pg")
    try:
        wait_for(lambda: "No connection data" in p.warnings.value, what="the gap warning")
        assert "does not exist" in p.warnings.value and "labdeploy-warning" in p.warnings.value
        wait_for(lambda: APP in p.status_table.value, what="the status table")
        assert p.sampler.running and len(p.sampler.gaps) >= 1
    finally:
        p.stop()
