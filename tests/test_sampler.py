"""The background connection sampler against a PostgreSQL container of our own (t-mon-pgs):
time series, bounded memory, warnings, gaps while PostgreSQL is down, SSH drops."""

from __future__ import annotations

import time

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

from labdeploy.watch import monitor  # noqa: E402
from labdeploy.progress import Collector, WarningEvent  # noqa: E402
from test_monitor_support import (drop_app_db, hold_connections, make_app_db, start_postgres,  # noqa: E402
                                  wait_connections, wait_postgres)

# One server: the sampler reads PostgreSQL over SSH, the same on both engines: proved on the current one.
pytestmark = pytest.mark.servers("trixie")

PG = "t-mon-pgs"


@pytest.fixture(scope="module")
def pg(session_remote, testbed):
    start_postgres(session_remote, PG, testbed["images"], max_connections=12)
    try:
        yield session_remote
    finally:
        monitor.close_persistent_psql(session_remote)
        session_remote.run(["docker", "rm", "-f", PG], check=False)


def wait_for(cond, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_time_series_warnings_and_bounded_memory(pg):
    ident = make_app_db(pg, PG, "t-mon-samp", limit=2)
    events, seen = Collector(), []
    try:
        hold_connections(pg, PG, ident, 2, seconds=60)
        wait_connections(pg, PG, ident, 2)
        s = monitor.Sampler(pg, interval=0.2, container=PG, max_samples=5, reporter=events,
                            on_sample=lambda smp, snap: seen.append(snap))
        with s:
            assert s.running
            wait_for(lambda: len(seen) >= 8, what="8 samples")
        assert not s.running
        n = len(seen)
        time.sleep(0.5)
        assert len(seen) == n  # stopped means stopped
        assert len(s.samples) == 5  # bounded: only the newest samples are kept
        assert s.samples["ok"].all() and s.samples["time"].is_monotonic_increasing
        frame = s.frame
        mine = frame[frame["app"] == "t-mon-samp"]
        assert len(mine) == 5 and (mine["connections"] == 2).all() and (mine["role_limit"] == 2).all()
        # The app is at its limit: warned once (not once per sample), naming it.
        warnings = events.of(WarningEvent)
        assert len(warnings) == 1 and "t-mon-samp uses 2 of its 2" in warnings[0].message
        assert [w.apps for w in s.warnings] == [("t-mon-samp",)]
        ax = s.plot()
        assert "t-mon-samp" in [line.get_label() for line in ax.get_lines()]
    finally:
        drop_app_db(pg, PG, "t-mon-samp")


def test_postgres_down_is_a_gap_and_sampling_goes_on(pg):
    s = monitor.Sampler(pg, interval=0.3, container=PG).start()
    try:
        wait_for(lambda: len(s.samples) >= 2, what="first samples")
        pg.run(["docker", "stop", "-t", "5", PG])
        wait_for(lambda: len(s.gaps) >= 2, what="gaps while PostgreSQL is down")
        assert s.running
        assert "PostgreSQL is down" in s.gaps["error"].iloc[-1]
        assert isinstance(s.last_error, monitor.PostgresUnavailable)
        pg.run(["docker", "start", PG])
        wait_postgres(pg, PG)
        after = len(s.samples)
        wait_for(lambda: s.samples["ok"].iloc[after:].sum() >= 2, timeout=30, what="samples after the restart")
    finally:
        s.stop()
    oks = s.samples["ok"].tolist()
    first_gap = oks.index(False)
    assert all(oks[:first_gap]) and oks[-1]  # ok, then a gap, then ok again
    wide = s.connections_by_app()
    assert wide.loc[pd.DatetimeIndex(s.gaps["time"])].isna().all().all()  # the lines break in the gap
    ax = s.plot()
    assert "no data" in ax.get_title()


def test_ssh_drop_during_sampling_recovers(remote, pg):
    s = monitor.Sampler(remote, interval=0.3, container=PG).start()
    try:
        wait_for(lambda: len(s.samples) >= 2, what="first samples")
        connections = remote.stats["connections"]
        with pytest.raises(monitor.ConnectionLost):
            remote.run(["sh", "-c", "kill -9 $PPID"])  # the server side kills our SSH session
        wait_for(lambda: remote.stats["connections"] > connections, what="a reconnect")
        n = len(s.samples)
        wait_for(lambda: s.samples["ok"].iloc[n:].sum() >= 2, what="samples after the reconnect")
        assert s.running
    finally:
        s.stop()


def test_bad_arguments(pg):
    with pytest.raises(monitor.LabdeployError):
        monitor.Sampler(pg, interval=0)
    with pytest.raises(monitor.LabdeployError):
        monitor.Sampler(pg, container="bad name!")
    # A container that isn't there: every sample is a gap saying so; nothing raises.
    s = monitor.Sampler(pg, container="t-mon-no-such-pg", persistent=False)
    assert s.sample_once() is None
    assert "does not exist" in s.gaps["error"].iloc[0]
