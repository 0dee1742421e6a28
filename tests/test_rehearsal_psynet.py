"""A capacity rehearsal of a real PsyNet experiment (examples/psynet-static: consent, an info
page, four words and two repeats with push buttons, feedback, the end page) on the testbed:
its simulated participants enter as a browser does (ad, consent, start, PsyNet's
POST /participant), walk the timeline page by page through Caddy (GET /timeline, POST /response
with the page's uuid and a button's answer), and complete the assignment (worker_complete);
the copy's own database shows them complete, marked as bots; the answer comes as DataFrames
and the sentence; the copy is gone afterwards.

Small on purpose (a few participants, a short think time): the machine has 2 cores and other
tests run at the same time. Forced past the "participants working" check, as in
tests/test_rehearsal.py (other tests' apps may have participants meanwhile).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from labdeploy import names
from labdeploy.app import apps
from labdeploy.rehearsal import BOT_PREFIX, analysis, start
from labdeploy.server import psql
from deploy_support import destroy_if_deployed, prepare_local_stack

# PsyNet runs on the trixie server only (as tests/test_psynet_static.py): what the rehearsal's
# load, samples and copy prove does not depend on the Compose version (tests/test_rehearsal.py).
pytestmark = pytest.mark.servers("trixie")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "psynet-static"
APP = "t-rh-psy"
PAGES = 10  # the pages a participant answers before the submit page
ROUTES = {"GET /ad", "GET /consent", "GET /start", "POST /participant", "GET /timeline", "POST /response",
          "POST /worker_complete", "GET /recruiter-exit"}


def assert_gone(remote, copy: str) -> None:
    assert copy not in set(apps.apps(remote)["app"])
    found = psql.query_df(remote, f"SELECT datname FROM pg_database WHERE datname = '{names.db_identifier(copy)}'")
    assert len(found) == 0  # every simulated participant's row went with the copy's database


def _bots_in_the_copy(remote, copy: str) -> dict:
    df = psql.query_df(remote, "SELECT count(*) FILTER (WHERE complete) AS complete, count(*) AS bots, "
                               f"(SELECT count(*) FROM participant WHERE worker_id NOT LIKE '{BOT_PREFIX}%') AS others "
                               f"FROM participant WHERE worker_id LIKE '{BOT_PREFIX}%' AND recruiter_id = 'hotair'",
                       database=names.db_identifier(copy))
    return {k: int(df[k][0]) for k in ("complete", "bots", "others")}


def test_a_psynet_rehearsal_walks_the_timeline_to_completion_and_leaves_no_copy(testbed, session_remote,
                                                                                tmp_path, monkeypatch):
    if "dallinger" not in testbed["images"]:
        pytest.fail("The testbed has no Dallinger image; run `sudo scripts/testbed up` (builds it once).",
                    pytrace=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.dallingerconfig and export records stay in the test's HOME
    prepare_local_stack(session_remote, testbed)
    copy = APP + "-rh"
    destroy_if_deployed(session_remote, copy)
    settings = {"build_args": {"BASE_IMAGE": testbed["images"]["dallinger"]}, "redis_image": testbed["images"]["redis"],
                "start_timeout": 240}
    running = start(APP, session_remote, experiment=EXAMPLE, participants=3, ramp=[1, 3], duration=50, think=0.3,
                    force=True, deploy_settings=settings)
    # While the copy exists: once a simulated participant has completed, its database says so.
    seen = None
    while not running.done and seen is None:
        run = running.stop_event.run
        if run is not None and (run.outcomes["outcome"] == "completed").any():
            seen = _bots_in_the_copy(session_remote, copy)
        time.sleep(1)
    result = running.result(900)
    assert seen is not None, "no simulated participant completed while the copy was there"
    assert seen["complete"] >= 1 and seen["others"] == 0, seen  # complete, marked, and nobody else in the copy

    hits = result.hits
    assert set(hits["route"]) == ROUTES, set(hits["route"])
    assert hits["ok"].all(), hits.loc[~hits["ok"], ["route", "status", "error"]].to_string()
    out = result.outcomes
    assert out["worker_id"].str.startswith(BOT_PREFIX).all()
    assert result.completion["completed"] >= 2 and result.completion["failed"] == 0, out
    assert result.completion["ended early"] == 0, out
    assert result.flow == "psynet" and "completed" in result.summary()
    # Every completed participant answered every page once: as many answers as pages per completion.
    responses = (hits["route"] == "POST /response").sum()
    assert responses >= PAGES * result.completion["completed"]

    lat = result.latency
    assert list(lat.index) == [1, 3] and list(lat.columns) == analysis.LATENCY_COLUMNS
    assert (lat["requests"] > 0).all() and (lat["error_rate"] == 0).all()
    assert {"app_cpu_cores", "app_mem_bytes", "connections"} <= set(result.costs.index)
    assert result.sentence.startswith("This experiment on this server holds about "), result.sentence
    print("\n" + result.summary())
    print(f"requests per completed participant: {len(hits) / result.completion['completed']:.1f}; "
          f"p95 {lat['p95'].round(3).to_dict()}")
    assert result.removed and not result.stopped
    assert_gone(session_remote, copy)
