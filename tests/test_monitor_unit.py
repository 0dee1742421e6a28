"""Pure parts of monitoring: command building, parsing, summaries and warnings."""

from __future__ import annotations

import datetime as dt
import json
import shlex

import pandas as pd
import pytest

from labdeploy.commands import containers as commands
from labdeploy.watch import containers, pgactivity
from labdeploy.errors import LabdeployError, ValidationError


def test_parse_status_computes_uptime_from_the_servers_clock():
    out = "1764316800.000000000\n" + "\n".join(json.dumps(d) for d in [
        {"id": "a" * 64, "name": "/x_web_1", "app": "x", "service": "web", "image": "img:1", "restarts": 0,
         "st": {"Status": "running", "StartedAt": "2025-11-28T07:59:00.5Z", "ExitCode": 0,
                "Health": {"Status": "healthy"}}},
        {"id": "b" * 64, "name": "/x_worker_1", "app": "x", "service": "worker", "image": "img:1", "restarts": 4,
         "st": {"Status": "restarting", "StartedAt": "2025-11-28T07:59:59Z", "ExitCode": 3}},
        {"id": "c" * 64, "name": "/x_clock_1", "app": "x", "service": "clock", "image": "img:1", "restarts": 0,
         "st": {"Status": "created", "StartedAt": "0001-01-01T00:00:00Z", "ExitCode": 0}},
    ])
    df = containers.parse_status(out).set_index("service")
    assert df.loc["web", "uptime"] == pd.Timedelta(seconds=59.5)
    assert (df.loc["web", "health"], df.loc["worker", "health"]) == ("healthy", "")
    assert pd.isna(df.loc["worker", "uptime"]) and df.loc["worker", "restarts"] == 4
    assert pd.isna(df.loc["clock", "started_at"])
    assert df.loc["web", "container"] == "x_web_1" and df.loc["web", "id"] == "a" * 12


def test_parse_status_empty_server():
    df = containers.parse_status("1764316800.0\n")
    assert df.empty and list(df.columns) == containers.STATUS_COLUMNS


def test_commands_carry_names_as_values_and_validate_them():
    argv = commands.exec_in("my-app", "web", ["sh", "-c", "echo 'hi'; rm x"], interactive=False)
    assert argv[:3] == ["sh", "-c", commands.EXEC] and "label=labdeploy.app=my-app" in argv
    assert argv[-3:] == ["sh", "-c", "echo 'hi'; rm x"]  # the command's own argv, untouched
    assert shlex.split(shlex.join(argv)) == argv
    for bad in ("My_App", "a;b", "$(x)"):
        with pytest.raises(ValidationError):
            commands.logs(bad, None, 10, None, False)
    with pytest.raises(ValidationError):
        commands.exec_in("ok", "web;reboot", ["true"], False)
    assert "kill 0" in commands.logs("ok", "web", 10, None, True)[2]
    assert "kill 0" not in commands.logs("ok", "web", 10, None, False)[2]


def test_since_arg():
    assert containers.since_arg(None) is None
    assert containers.since_arg("10m") == "10m"
    assert containers.since_arg("1h30m") == "1h30m"
    assert containers.since_arg("2026-01-31T12:00:00Z") == "2026-01-31T12:00:00Z"
    assert containers.since_arg(dt.timedelta(minutes=2)) == "120s"
    assert containers.since_arg(dt.datetime(2026, 1, 31, 12, tzinfo=dt.timezone.utc)) == "2026-01-31T12:00:00.000000Z"
    for bad in ("yesterday", "10m; rm -rf /", "", 5):
        with pytest.raises(LabdeployError):
            containers.since_arg(bad)


def test_parse_log_line():
    e = containers.parse_log_line("web 2026-11-28T06:47:40.059062243Z hello  world")
    assert (e.service, e.line) == ("web", "hello  world")
    assert e.time == pd.Timestamp("2026-11-28T06:47:40.059062243Z")
    odd = containers.parse_log_line("web Error response from daemon: x")
    assert pd.isna(odd.time) and odd.line == "Error response from daemon: x"
    assert containers.parse_log_line("web 2026-11-28T06:47:40Z").line == ""


def test_entries_frame_orders_by_time():
    lines = ["worker 2026-01-01T00:00:02Z b", "web 2026-01-01T00:00:01Z a", "web 2026-01-01T00:00:03Z c"]
    df = containers.entries_frame(containers.parse_log_line(x) for x in lines)
    assert list(df["line"]) == ["a", "b", "c"] and list(df.columns) == ["time", "service", "line"]


def test_parse_size_and_stats():
    assert containers.parse_size("1.5MiB") == 1.5 * 1024 ** 2
    assert containers.parse_size("1.2kB") == 1200
    assert containers.parse_size("0B") == 0
    assert pd.isna(containers.parse_size("--"))
    out = (json.dumps({"BlockIO": "4.1MB / 0B", "CPUPerc": "12.50%", "ID": "384e643fa306", "MemPerc": "0.10%",
                       "MemUsage": "24MiB / 1GiB", "Name": "x_web_1", "NetIO": "1kB / 2kB", "PIDs": "3"})
           + f"\n{commands.STATS_MARK}\n384e643fa3066298c000\tx_web_1\tx\tweb\tweb\n")
    row = containers.parse_stats(out).iloc[0]
    assert (row["app"], row["service"], row["cpu_percent"], row["pids"]) == ("x", "web", 12.5, 3)
    assert row["mem_bytes"] == 24 * 1024 ** 2 and row["mem_limit_bytes"] == 1024 ** 3
    assert (row["net_rx_bytes"], row["net_tx_bytes"], row["block_read_bytes"]) == (1000, 2000, 4.1e6)


SNAP = """labdeploy-section:activity
pid,user,database,client_address,application_name,backend_start,state,state_change,query_start,wait_event_type,query
11,app_big_one,app_big_one,10.0.0.5,,2026-11-28 07:00:00+00,idle,2026-11-28 07:00:01+00,2026-11-28 07:00:01+00,Client,COMMIT
12,app_big_one,app_big_one,10.0.0.5,,2026-11-28 07:00:00+00,active,2026-11-28 07:00:09+00,2026-11-28 07:00:09+00,,"select ""x"", 1"
13,app_big_one,app_big_one,10.0.0.5,,2026-11-28 07:00:00+00,idle in transaction,2026-11-28 07:00:05+00,2026-11-28 07:00:05+00,Client,BEGIN
14,app_small,app_small,,psql,2026-11-28 07:00:00+00,idle,2026-11-28 07:00:02+00,2026-11-28 07:00:02+00,Client,
labdeploy-section:settings
now,max_connections,reserved
2026-11-28 07:00:10+00,5,1
labdeploy-section:roles
role,role_limit
dallinger,-1
app_big_one,3
app_small,-1
labdeploy-section:databases
database
postgres
dallinger
app_big_one
app_small
"""


def test_parse_snapshot_and_summary():
    snap = pgactivity.parse_snapshot(SNAP)
    act = snap.activity
    assert list(act.columns[:8]) == ["pid", "user", "database", "client_address", "application_name",
                                     "backend_start", "state", "state_change"]
    assert act.set_index("pid").loc[11, "query_age"] == pd.Timedelta(seconds=9)
    assert act.set_index("pid").loc[12, "query"] == 'select "x", 1'
    assert (snap.total, snap.max_connections) == (4, 5)
    summ = snap.summary().set_index("database")
    assert list(summ.index) == ["app_big_one", "app_small", "dallinger"]  # most connections first
    big = summ.loc["app_big_one"]
    assert (big["app"], big["connections"], big["active"], big["idle"], big["idle_in_transaction"]) == \
        ("big-one", 3, 1, 1, 1)
    assert big["role_limit"] == 3 and big["pct_of_role_limit"] == 100.0 and big["pct_of_max"] == 60.0
    assert pd.isna(summ.loc["app_small", "role_limit"])


def test_warnings_name_the_apps_holding_most():
    snap = pgactivity.parse_snapshot(SNAP)
    server, app = sorted(snap.warnings(0.8), key=lambda w: w.kind, reverse=True)
    assert server.kind == "server" and server.apps == ("big-one", "small")
    assert "4 of 5 connections" in server.message and "big-one (3)" in server.message
    assert "big-one" in server.hint
    assert app.kind == "app" and "at its limit" in app.message
    assert [w.kind for w in snap.warnings(0.9)] == ["app"]  # 4/5 = 80% < 90%
    with pytest.raises(LabdeployError):
        snap.warnings(0)


def test_parse_snapshot_incomplete():
    with pytest.raises(LabdeployError):
        pgactivity.parse_snapshot("labdeploy-section:activity\npid\n")


def test_app_of_database_and_container_names():
    assert pgactivity.app_of_database("app_stroop_pilot_2") == "stroop-pilot-2"
    assert pgactivity.app_of_database("dallinger") == ""
    with pytest.raises(LabdeployError):
        pgactivity.container_name("pg; reboot")
    argv = pgactivity.psql_argv("my-pg")
    assert argv[:4] == ["docker", "exec", "-i", "my-pg"] and "--csv" in argv


def test_redact_masks_secrets_in_output():
    text = ("DATABASE_URL=postgresql://app_x:s3cr3t-PW@postgresql:5432/app_x\n"
            "FLASK_SECRET_KEY=abcdef123\nPGPASSWORD='pw with'\nREDIS_URL=redis://redis:6379/0\n"
            "password: hunter2, next\nHOME=/tmp")
    out = containers.redact(text)
    for secret in ("s3cr3t-PW", "abcdef123", "hunter2", "pw"):
        assert secret not in out.replace("password", "").replace("PASSWORD", "")
    assert "postgresql://app_x:***@postgresql:5432/app_x" in out
    assert "REDIS_URL=redis://redis:6379/0" in out and "HOME=/tmp" in out
    assert containers.parse_log_line("web 2026-01-01T00:00:00Z token=abc").line == "token=***"


def test_parse_status_when_every_container_is_stopped():
    # Every uptime is missing then; the column must still be timedeltas, not a crash.
    import json as _json

    from labdeploy.watch.containers import parse_status

    line = _json.dumps({"id": "abcdef1234567890", "name": "/x_web_1", "app": "x", "service": "web",
                        "image": "i", "restarts": 0,
                        "st": {"Status": "exited", "StartedAt": "2026-11-28T07:00:00.123Z", "ExitCode": 1,
                               "Health": None}})
    df = parse_status("1764313200.0\n" + line)
    assert df.loc[0, "state"] == "exited" and df.loc[0, "exit_code"] == 1
    assert str(df["uptime"].dtype).startswith("timedelta64") and df["uptime"].isna().all()
