"""pg_stat_activity snapshots, summaries and warnings against real PostgreSQL on the testbed.

Connection-filling and stopping PostgreSQL happen in a PostgreSQL container of our own
(t-mon-pg, max_connections=12), never in the shared dallinger-postgresql; the shared one is
only read, plus one role/database of ours (app_t_mon_shared) with a connection limit.
"""

from __future__ import annotations

import secrets

import pandas as pd
import psycopg
import pytest

from labdeploy.watch import monitor
from labdeploy.watch.pgactivity import PostgresUnavailable
from test_monitor_support import (count_connections, drop_app_db, hold_connections, make_app_db, sql,
                                  start_postgres, wait_connections, wait_postgres)

# One server: pg_stat_activity is PostgreSQL's, the same on both engines: proved on the current one.
pytestmark = pytest.mark.servers("trixie")

PG = "t-mon-pg"


@pytest.fixture(scope="module")
def pg(session_remote, testbed):
    r = session_remote
    start_postgres(r, PG, testbed["images"], max_connections=12)
    try:
        yield r
    finally:
        monitor.close_persistent_psql(r)
        r.run(["docker", "rm", "-f", PG], check=False)


def test_snapshot_sees_a_connection_we_opened(pg):
    """A real client over TCP (psycopg through an SSH tunnel to the container's address)."""
    ident = make_app_db(pg, PG, "t-mon-probe", limit=5)
    password = secrets.token_urlsafe(16)
    # The password travels on psql's stdin, never on a command line.
    sql(pg, PG, f"ALTER ROLE {ident} PASSWORD '{password}';")
    ip = pg.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", PG]
                ).stdout.strip()
    with pg.forward(ip, 5432) as port:
        with psycopg.connect(host="127.0.0.1", port=port, user=ident, password=password, dbname=ident,
                             application_name="t-mon-probe-client", connect_timeout=10) as conn:
            conn.execute("select 1")  # psycopg opens a transaction: "idle in transaction" (a classic leak)
            df = monitor.pg_activity(pg, PG)
            assert list(df.columns[:8]) == ["pid", "user", "database", "client_address", "application_name",
                                            "backend_start", "state", "state_change"]
            row = df[df["application_name"] == "t-mon-probe-client"]
            assert len(row) == 1
            row = row.iloc[0]
            assert (row["user"], row["database"], row["state"]) == (ident, ident, "idle in transaction")
            assert row["client_address"]  # came over TCP, so it has an address
            assert pd.Timedelta(0) <= row["query_age"] < pd.Timedelta(minutes=1)
            assert df.attrs["max_connections"] == 12
            summ = monitor.pg_summary(pg, PG).set_index("database")
            assert summ.loc[ident, "app"] == "t-mon-probe"
            assert summ.loc[ident, "connections"] == 1 and summ.loc[ident, "idle_in_transaction"] == 1
            assert summ.loc[ident, "role_limit"] == 5 and summ.loc[ident, "pct_of_role_limit"] == 20.0
    drop_app_db(pg, PG, "t-mon-probe")


def test_warning_at_an_apps_connection_limit(pg):
    ident = make_app_db(pg, PG, "t-mon-lim", limit=3)
    try:
        hold_connections(pg, PG, ident, 3, seconds=60)
        wait_connections(pg, PG, ident, 3)
        snap = monitor.snapshot(pg, PG)
        summ = snap.summary().set_index("database")
        assert summ.loc[ident, "connections"] == 3 and summ.loc[ident, "active"] == 3
        warnings = [w for w in snap.warnings() if w.kind == "app"]
        assert [w.apps for w in warnings] == [("t-mon-lim",)]
        assert "3 of its 3" in warnings[0].message and "at its limit" in warnings[0].message
        assert "restart" in warnings[0].hint
        assert not [w for w in snap.warnings() if w.kind == "server"]  # 3 of 12 is fine for the server
    finally:
        drop_app_db(pg, PG, "t-mon-lim")


def test_warning_near_max_connections_names_the_biggest_apps(pg):
    big = make_app_db(pg, PG, "t-mon-big", limit=-1)
    small = make_app_db(pg, PG, "t-mon-small", limit=-1)
    try:
        hold_connections(pg, PG, big, 6, seconds=60)
        hold_connections(pg, PG, small, 3, seconds=60)
        wait_connections(pg, PG, big, 6)
        wait_connections(pg, PG, small, 3)
        snap = monitor.snapshot(pg, PG)
        assert snap.total >= 9
        [w] = [w for w in snap.warnings(threshold=0.75) if w.kind == "server"]
        assert w.apps[:2] == ("t-mon-big", "t-mon-small")
        assert "t-mon-big (6)" in w.message and "of 12 connections" in w.message
        assert "t-mon-big" in w.hint
        assert not [w for w in snap.warnings(threshold=0.9) if w.kind == "server"]  # below 90% of 12
    finally:
        drop_app_db(pg, PG, "t-mon-big")
        drop_app_db(pg, PG, "t-mon-small")


def test_shared_postgres_snapshot_with_our_own_role(session_remote):
    """The default container is the shared dallinger-postgresql; we only add a role of ours."""
    r = session_remote
    shared = "dallinger-postgresql"
    ident = make_app_db(r, shared, "t-mon-shared", limit=2)
    try:
        hold_connections(r, shared, ident, 1, seconds=30, application_name="t-mon-shared-holder")
        wait_connections(r, shared, ident, 1)
        df = monitor.pg_activity(r)  # default container
        mine = df[df["user"] == ident]
        assert len(mine) == 1 and mine.iloc[0]["application_name"] == "t-mon-shared-holder"
        summ = monitor.pg_summary(r).set_index("database")
        assert summ.loc[ident, "role_limit"] == 2 and summ.loc[ident, "connections"] == 1
        assert summ.attrs["max_connections"] >= 20
        # One-shot (no persistent session) gives the same picture.
        again = monitor.snapshot(r, persistent=False).summary().set_index("database")
        assert again.loc[ident, "connections"] == 1
    finally:
        drop_app_db(r, shared, "t-mon-shared")
        assert count_connections(r, shared, ident) == 0


def test_bad_container_name_and_missing_container(pg):
    with pytest.raises(monitor.LabdeployError):
        monitor.pg_activity(pg, "x; rm -rf /")
    with pytest.raises(PostgresUnavailable) as e:
        monitor.pg_activity(pg, "t-mon-no-such-pg", persistent=False)
    assert "does not exist" in e.value.message and e.value.hint


def test_postgres_down_gives_a_clear_message_then_recovers(pg):
    monitor.pg_activity(pg, PG)  # the persistent session is open now; it must notice the stop
    pg.run(["docker", "stop", "-t", "5", PG])
    try:
        for persistent in (True, False):
            with pytest.raises(PostgresUnavailable) as e:
                monitor.pg_activity(pg, PG, persistent=persistent)
            assert "PostgreSQL is down" in e.value.message, e.value.message
            assert "docker compose up -d postgresql" in e.value.hint
    finally:
        pg.run(["docker", "start", PG])
        wait_postgres(pg, PG)
    assert monitor.pg_activity(pg, PG).attrs["max_connections"] == 12  # the session reopens by itself
