"""Monitoring of app containers against the testbed: status, logs, exec, stats, restart and
the faults around them (unknown app/service, a restarting container, a missing command,
SSH dropped during a log follow)."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from labdeploy.watch import monitor
from labdeploy.watch.containers import CommandNotFound, ServiceNotRunning, UnknownApp, UnknownService
from labdeploy.progress import Collector, WarningEvent
from test_monitor_support import make_app, remove_app, wait_up

APP = "t-mon-core"
CRASH = "t-mon-crash"


@pytest.fixture(scope="module")
def apps(session_remote, testbed):
    for app in (APP, CRASH):
        remove_app(session_remote, app)
    try:
        make_app(session_remote, APP, testbed["images"])
        make_app(session_remote, CRASH, testbed["images"], crash_web=True)
        wait_up(session_remote, APP)
        yield session_remote
    finally:
        for app in (APP, CRASH):
            remove_app(session_remote, app)


def test_status_all_apps_in_one_round_trip(apps):
    before = apps.stats["commands"]
    df = monitor.status(apps)
    assert apps.stats["commands"] - before == 1
    assert list(df.columns[:7]) == ["app", "service", "container", "state", "health", "uptime", "image"]
    mine = df[df["app"] == APP].set_index("service")
    assert set(mine.index) == {"web", "worker", "clock", "redis"}
    assert (mine["state"] == "running").all()
    assert mine.loc["web", "health"] == "healthy"      # it has a health check
    assert mine.loc["worker", "health"] == ""          # it has none
    assert mine.loc["redis", "image"].endswith("redis:7")
    assert (mine["uptime"] > pd.Timedelta(0)).all()
    assert set(df[df["app"] == CRASH]["service"]) == {"web", "worker", "clock", "redis"}


def test_status_of_unknown_app(apps):
    with pytest.raises(UnknownApp) as e:
        monitor.status(apps, "t-mon-nope")
    assert APP in e.value.hint
    with pytest.raises(monitor.ValidationError):
        monitor.status(apps, "Bad;name")


def test_restarting_container_is_reported(apps):
    deadline = time.monotonic() + 30
    while True:  # docker marks it "restarting" between its quick crashes
        row = monitor.status(apps, CRASH).set_index("service").loc["web"]
        if row["state"] == "restarting" or row["restarts"] >= 2:
            break
        assert time.monotonic() < deadline, row
        time.sleep(0.3)
    assert row["state"] in ("restarting", "running", "exited")
    assert row["restarts"] >= 1
    # Its logs still tell why it crashes.
    lines = monitor.logs(CRASH, apps, "web", tail=5, as_frame=False)
    assert any("web boom: missing DATABASE_URL" in line for line in lines)


def test_exec_in_restarting_container_says_so(apps):
    deadline = time.monotonic() + 30
    while True:
        try:
            monitor.exec_(CRASH, apps, "web", ["true"])
        except ServiceNotRunning as exc:
            assert "restarting" in exc.message or "not running" in exc.message
            assert exc.hint
            return
        assert time.monotonic() < deadline  # it may be up for an instant; it crashes again at once
        time.sleep(0.2)


def test_logs_frame_of_all_services(apps):
    df = monitor.logs(APP, apps, tail=3)
    assert list(df.columns) == ["time", "service", "line"]
    assert set(df["service"]) == {"web", "worker", "clock", "redis"}
    assert df["time"].is_monotonic_increasing
    assert str(df["time"].dt.tz) == "UTC"
    assert df[df["service"] == "worker"]["line"].str.startswith("worker ").all()
    assert len(df[df["service"] == "web"]) == 3


def test_logs_one_service_since(apps):
    df = monitor.logs(APP, apps, "clock", tail="all", since="3s")
    assert set(df["service"]) == {"clock"}
    assert 1 <= len(df) <= 6
    assert (df["time"] > pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=30)).all()


def test_logs_bad_input(apps):
    with pytest.raises(UnknownService) as e:
        monitor.logs(APP, apps, "webb")
    assert "web" in e.value.hint
    with pytest.raises(UnknownApp):
        monitor.logs("t-mon-nope", apps)
    with pytest.raises(monitor.LabdeployError):
        monitor.logs(APP, apps, since="yesterday; rm -rf /")
    # The server first (like status(server, app)) is understood too: app names are strings.
    assert set(monitor.logs(apps, APP, "web", tail=1)["service"]) == {"web"}
    with pytest.raises(monitor.ValidationError) as e:
        monitor.logs(apps, apps)
    assert "needs an app name" in e.value.message


def test_follow_streams_until_stopped(apps):
    got, stop = [], threading.Event()

    def on_line(entry):
        got.append(entry)
        if len([e for e in got if e.line.startswith("worker tick")]) >= 2:
            stop.set()

    df = monitor.logs(APP, apps, "worker", tail=0, follow=True, on_line=on_line, stop=stop)  # returns once stopped
    assert len(df) >= 2 and set(df["service"]) == {"worker"}
    time.sleep(0.5)  # the server-side watcher ends `docker logs -f` once our stdin closes
    cid = monitor.status(apps, APP).set_index("service").loc["worker", "id"]
    ps = apps.run(["sh", "-c", "ps -eo args | grep -- '-f' | grep -c \"[d]ocker logs.*$1\" || true", "sh", cid])
    assert ps.stdout.strip() == "0"


def test_follow_survives_dropped_connection(remote, apps):
    """Kill our sshd session from the server side mid-follow: the follow reconnects and goes on."""
    got, stop, events = [], threading.Event(), Collector()
    result = {}

    def follow():
        result["df"] = monitor.logs(APP, remote, "web", tail=0, follow=True, on_line=got.append,
                                    stop=stop, reporter=events)

    t = threading.Thread(target=follow)
    t.start()
    deadline = time.monotonic() + 15
    while len(got) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    connections = remote.stats["connections"]
    with pytest.raises(monitor.ConnectionLost):  # killing the session's sshd drops the whole connection
        remote.run(["sh", "-c", "kill -9 $PPID"], check=False)
    deadline = time.monotonic() + 30
    while remote.stats["connections"] == connections:
        assert time.monotonic() < deadline, "follow did not reconnect"
        time.sleep(0.2)
    n = len(got)
    deadline = time.monotonic() + 15
    while len(got) < n + 2:
        assert time.monotonic() < deadline, "no lines after reconnecting"
        time.sleep(0.1)
    stop.set()
    t.join(15)
    assert not t.is_alive()
    assert any("dropped" in w.message for w in events.of(WarningEvent))
    ticks = [e.line for e in got if e.line.startswith("web tick")]
    assert len(ticks) == len(set(ticks))  # no repeats after resuming


def test_exec_returns_output_and_status(apps):
    res = monitor.exec_(APP, apps, "web", ["sh", "-c", "echo out; echo err >&2; exit 4"])
    assert (res.exit_status, res.stdout, res.stderr) == (4, "out\n", "err\n")
    res = monitor.exec_(APP, apps, "worker", "echo $((6*7))")  # a string runs in the container's shell
    assert res.stdout.strip() == "42" and res.ok
    res = monitor.exec_(APP, apps, "web", ["cat"], stdin=b"via stdin\n")
    assert res.stdout == "via stdin\n"
    with pytest.raises(monitor.CommandFailed):
        monitor.exec_(APP, apps, "web", ["false"], check=True)


def test_exec_bad_input(apps):
    with pytest.raises(CommandNotFound) as e:
        monitor.exec_(APP, apps, "web", ["no-such-command", "--x"])
    assert "no-such-command" in e.value.message and e.value.hint
    with pytest.raises(UnknownService):
        monitor.exec_(APP, apps, "database", ["true"])
    with pytest.raises(UnknownApp):
        monitor.exec_("t-mon-nope", apps, "web", ["true"])
    with pytest.raises(monitor.ValidationError):
        monitor.exec_(APP, apps, "web; reboot", ["true"])


def test_stats(apps):
    df = monitor.stats(apps, APP)
    assert set(df["service"]) == {"web", "worker", "clock", "redis"}
    assert (df["mem_bytes"] > 0).all() and (df["mem_limit_bytes"] >= df["mem_bytes"]).all()
    assert (df["pids"] >= 1).all()
    assert df[["cpu_percent", "net_rx_bytes", "block_read_bytes"]].notna().all().all()
    with pytest.raises(UnknownApp):
        monitor.stats(apps, "t-mon-nope")


def test_restart_waits_until_up(apps):
    before = monitor.status(apps, APP).set_index("service")
    events = Collector()
    after = monitor.restart(APP, apps, ["web", "worker"], reporter=events).set_index("service")
    assert after.loc["web", "started_at"] > before.loc["web", "started_at"]
    assert after.loc["worker", "started_at"] > before.loc["worker", "started_at"]
    assert after.loc["clock", "started_at"] == before.loc["clock", "started_at"]  # untouched
    assert after.loc["web", "state"] == "running" and after.loc["web", "health"] == "healthy"
    assert events.steps() == ["restart web, worker of t-mon-core", "wait until up"]
    with pytest.raises(UnknownService):
        monitor.restart(APP, apps, ["webserver"])


def test_restart_of_crashing_service_times_out_clearly(apps):
    with pytest.raises(monitor.RestartTimeout) as e:
        monitor.restart(CRASH, apps, ["web"], timeout=4, stop_timeout=1)
    assert "web" in e.value.message and "logs" in e.value.hint


def test_a_user_without_docker_access_is_told_what_to_do(testbed, known_hosts):
    from labdeploy.remote import Remote

    s = testbed["ssh"]
    with Remote(s["host"], s["port"], s["user_nodocker"], key_filename=s["key"], known_hosts=known_hosts,
                use_agent=False) as r:
        with pytest.raises(monitor.LabdeployError) as e:
            monitor.status(r)
        assert "may not use Docker" in e.value.message and "docker" in e.value.hint
        with pytest.raises(monitor.LabdeployError) as e:
            monitor.pg_activity(r, persistent=False)
        assert "may not use Docker" in e.value.message
