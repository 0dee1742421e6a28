"""Capacity rehearsals on the testbed: simulated participants through Caddy against a
side-by-side copy of examples/stroop (a described flow) and examples/dallinger-hello
(Dallinger's participant routes), the server sampled meanwhile, the answer as DataFrames and a
sentence; a Stop mid-run ends the load at once; an app that starts failing under load gives an
error-rate curve; the copy and every simulated participant's rows are gone afterwards.

Small on purpose (a few participants, seconds per step): the machine has 2 cores and other
tests run at the same time. Other tests' apps may have participants working meanwhile, so the
rehearsals here are forced past that check (the refusal itself is tested on its own).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from labdeploy import backup, export
from labdeploy.app import apps, deploy
from labdeploy.rehearsal import RehearsalRefused, analysis, rehearse, start
from labdeploy.rehearsal.copydata import NoDataToCopy
from labdeploy.server import compose, psql
from labdeploy import names
from deploy_support import EXAMPLE, deploy_kwargs, destroy_if_deployed, prepare_local_stack

# The rehearsal's own parts (load, samples, analysis) do not depend on the Compose version, and
# the copy's deploy, restore and destroy are proven on both servers by their own tests: the
# bookworm run is enough, and keeps the suite's time down.
pytestmark = pytest.mark.servers("bookworm")

HELLO = Path(__file__).resolve().parent.parent / "examples" / "dallinger-hello"
STROOP_FLOW = [
    {"method": "POST", "path": "/api/participants", "json": {"worker_id": "{worker_id}"}, "save": {"pid": "id"}},
    {"method": "POST", "path": "/api/participants/{pid}/responses",
     "json": {"trial": 0, "word": "red", "ink": "red", "answer": "red", "rt_ms": 500}},
    {"method": "POST", "path": "/api/participants/{pid}/finish"},
]


@pytest.fixture(scope="module")
def stack(testbed, session_remote):
    prepare_local_stack(session_remote, testbed)
    return session_remote


def database_exists(remote, app: str) -> bool:
    found = psql.query_df(remote, "SELECT datname FROM pg_database WHERE datname = "
                                  f"'{names.db_identifier(app)}'")
    return len(found) > 0


def assert_gone(remote, copy: str) -> None:
    assert copy not in set(apps.apps(remote)["app"])
    assert not database_exists(remote, copy)  # every simulated participant's row went with it


def test_a_stroop_rehearsal_gives_the_dataframes_and_a_recommendation(testbed, stack):
    app = "t-rh-stroop"
    destroy_if_deployed(stack, app + "-rh")
    result = rehearse(app, stack, experiment=EXAMPLE, participants=6, ramp=2, duration=16, flow=STROOP_FLOW, think=0.5,
                      force=True, deploy_settings=deploy_kwargs(testbed))
    lat = result.latency
    assert list(lat.index) == [3, 6] and list(lat.columns) == analysis.LATENCY_COLUMNS
    assert (lat["requests"] > 0).all() and (lat["error_rate"] == 0).all(), result.hits[~result.hits["ok"]]
    hits = result.hits
    assert set(hits["route"]) == {"POST /api/participants", "POST /api/participants/{pid}/responses",
                                  "POST /api/participants/{pid}/finish"}
    res = result.resources
    assert 0 in res.index and {3, 6} <= set(res.index)
    assert (res.loc[[3, 6], "app_cpu_cores"] > 0).all() and (res["app_mem_bytes"] > 0).all()
    assert res["server_cpu_cores"].notna().all()
    costs = result.costs
    assert {"app_cpu_cores", "app_mem_bytes", "connections"} <= set(costs.index)
    assert costs["per_participant"].notna().all()
    rec = result.recommendation
    assert rec.measured_max == 6 and rec.participants >= 6 and rec.web_workers >= 2 and rec.connection_limit >= 10
    assert result.sentence.startswith("This experiment on this server holds about ")
    assert "web workers" in result.sentence and "5 GB" in result.sentence
    assert result.removed and not result.stopped
    assert_gone(stack, result.copy)
    fig = result.plot()
    assert len(fig.axes) >= 2


def test_a_dallinger_rehearsal_walks_the_participant_routes_and_leaves_no_bot(testbed, stack):
    if "dallinger" not in testbed["images"]:
        pytest.fail("The testbed has no Dallinger image; run `sudo scripts/testbed up` (builds it once).",
                    pytrace=False)
    app = "t-rh-hello"
    destroy_if_deployed(stack, app + "-rh")
    settings = {"build_args": {"BASE_IMAGE": testbed["images"]["dallinger"]}, "redis_image": testbed["images"]["redis"],
                "start_timeout": 180, "config": {"num_participants": "1000"}}  # a chain long enough for every bot
    result = rehearse(app, stack, experiment=HELLO, participants=4, ramp=2, duration=16, think=0.5, force=True,
                      deploy_settings=settings)
    hits = result.hits
    by_route = hits.groupby("route")["ok"].agg(["count", "all"])
    assert set(by_route.index) == {"GET /ad", "POST /participant", "POST /node", "GET /node/infos", "POST /info",
                                   "POST /question", "GET /worker_complete"}, by_route
    assert by_route["all"].all(), hits.loc[~hits["ok"], ["route", "status", "error"]].to_string()
    assert list(result.latency.index) == [2, 4]
    assert (result.resources.loc[[2, 4], "connections"] > 0).all()  # the copy's own database connections
    assert result.recommendation.participants >= 4
    assert result.removed
    assert_gone(stack, result.copy)


def test_stop_mid_run_ends_all_load_at_once(testbed, stack):
    app = "t-rh-stop"
    destroy_if_deployed(stack, app + "-rh")
    levels = threading.Event()
    running = start(app, stack, experiment=EXAMPLE, participants=4, ramp=[2, 4], duration=600, flow=STROOP_FLOW,
                    think=0.2, force=True, deploy_settings=deploy_kwargs(testbed),
                    on_level=lambda k, n: levels.set())
    assert levels.wait(600), "the load never started"
    time.sleep(3)
    running.stop()
    stopped_at = pd.Timestamp.now(tz="UTC")
    result = running.result(600)
    assert result.stopped and len(result.schedule) == 1  # the 10-minute first step was cut short
    assert len(result.hits) > 0
    assert (result.hits["time"] <= stopped_at).all()  # nothing was sent after Stop
    assert result.removed
    assert_gone(stack, result.copy)


def test_an_app_failing_under_load_gives_an_error_rate_curve(testbed, stack):
    app = "t-rh-fail"
    copy = app + "-rh"
    destroy_if_deployed(stack, copy)

    def break_at_second_step(k: int, n: int) -> None:
        if k == 1:  # the web process dies while the second step's participants arrive (not in the load's thread)
            threading.Thread(target=compose.run_app, args=(stack, copy, ["stop", "web"]), kwargs={"timeout": 120},
                             daemon=True).start()

    result = rehearse(app, stack, experiment=EXAMPLE, participants=4, ramp=2, duration=20, flow=STROOP_FLOW, think=0.3,
                      force=True, deploy_settings=deploy_kwargs(testbed), on_level=break_at_second_step)
    lat = result.latency
    assert list(lat.index) == [2, 4]
    assert lat.loc[2, "error_rate"] == 0 and lat.loc[4, "error_rate"] > 0.5, lat
    assert set(result.hits.loc[~result.hits["ok"], "status"]) <= {0, 502, 503, 504}
    rec = result.recommendation
    assert rec.held_measured == 2 and rec.limited_by == "latency"
    assert "4 at once did not hold" in result.sentence
    assert result.removed
    assert_gone(stack, copy)


def test_an_app_recruiting_live_is_refused_and_nothing_is_deployed(testbed, stack, tmp_path):
    live = tmp_path / "hello-live"
    live.mkdir()
    for f in HELLO.iterdir():
        if f.is_file():
            (live / f.name).write_bytes(f.read_bytes())
    (live / "config.txt").write_text(HELLO.joinpath("config.txt").read_text()
                                     .replace("mode = sandbox", "mode = live").replace("recruiter = hotair",
                                                                                       "recruiter = prolific"))
    with pytest.raises(RehearsalRefused, match="recruits real participants"):
        rehearse("t-rh-live", stack, experiment=live, participants=2, ramp=1, duration=5)
    assert "t-rh-live-rh" not in set(apps.apps(stack)["app"])


def _through_caddy(testbed, app: str, path: str, **kw) -> requests.Response:
    return requests.post(f"http://{testbed['http']['host']}:{testbed['http']['port']}{path}",
                         headers={"Host": f"{app}.localhost"}, timeout=15, **kw)


def _a_participant(testbed, app: str, worker_id: str) -> None:
    p = _through_caddy(testbed, app, "/api/participants", json={"worker_id": worker_id}).json()
    for t in p["trials"][:3]:
        assert _through_caddy(testbed, app, f"/api/participants/{p['id']}/responses",
                              json={**t, "answer": t["ink"], "rt_ms": 400.0}).status_code == 200


def _rows(remote, app: str, database_app: str | None = None) -> dict:
    """The study's own rows (participants, responses); the clock's ticks fill `jobs` by themselves."""
    counts = export.table_counts(database_app or app, remote).set_index("table")["rows"]
    return {t: int(counts[t]) for t in ("participants", "responses")}


def _real_rows_in(remote, copy: str) -> dict:
    ident = names.db_identifier(copy)
    df = psql.query_df(remote, "SELECT (SELECT count(*) FROM participants WHERE worker_id NOT LIKE 'lbot-%') AS p, "
                               "(SELECT count(*) FROM responses r JOIN participants p ON p.id = r.participant_id "
                               "WHERE p.worker_id NOT LIKE 'lbot-%') AS r", database=ident)
    return {"participants": int(df["p"][0]), "responses": int(df["r"][0])}


def test_the_copy_carries_the_apps_rows_and_the_app_is_left_as_it_was(testbed, stack):
    app = "t-rh-data"
    copy = app + "-rh"
    destroy_if_deployed(stack, copy)
    destroy_if_deployed(stack, app)
    deploy.deploy(EXAMPLE, app, stack, **deploy_kwargs(testbed))
    try:
        for i in range(3):
            _a_participant(testbed, app, f"real-{i}")
        before = _rows(stack, app)
        assert before == {"participants": 3, "responses": 9}
        seen: list = []

        def look_into_the_copy(k: int, n: int) -> None:  # while the load runs (not in the load's thread)
            if k == 0:
                threading.Thread(target=lambda: seen.append(_real_rows_in(stack, copy)), daemon=True).start()

        # The app has no backup yet: one is taken for the rehearsal (and kept, as any manual backup).
        first = rehearse(app, stack, experiment=EXAMPLE, participants=2, ramp=1, duration=8, flow=STROOP_FLOW,
                         think=0.5, force=True, deploy_settings=deploy_kwargs(testbed), on_level=look_into_the_copy)
        assert first.data.restored and first.data.fresh, first.data
        assert first.data.tables.set_index("table").loc[["participants", "responses"], "rows"].tolist() == [3, 9]
        assert seen == [before]  # the copy held the app's rows while the simulated participants worked
        assert (first.latency["error_rate"] == 0).all() and first.hits["ok"].all()
        assert first.removed
        assert_gone(stack, copy)
        assert _rows(stack, app) == before  # the live app: not one row more or less
        assert list(backup.backups(app, stack, checksums=False)["id"]) == [first.data.backup_id]

        # A participant more in the app; the default restores the latest backup, so the copy has
        # the backup's rows, not the newest (a fresh one is data="fresh").
        _a_participant(testbed, app, "real-3")
        later = _rows(stack, app)
        seen.clear()
        second = rehearse(app, stack, experiment=EXAMPLE, participants=2, ramp=1, duration=8, flow=STROOP_FLOW,
                          think=0.5, force=True, deploy_settings=deploy_kwargs(testbed), on_level=look_into_the_copy)
        assert second.data.backup_id == first.data.backup_id and not second.data.fresh
        assert seen == [before] and second.removed
        assert_gone(stack, copy)
        assert _rows(stack, app) == later
        assert "data: backup " in second.summary()
    finally:
        destroy_if_deployed(stack, copy)
        destroy_if_deployed(stack, app)


def test_a_fresh_copy_of_an_app_without_data_is_refused_before_anything_is_deployed(testbed, stack):
    with pytest.raises(NoDataToCopy, match="no rows of 't-rh-nodata'"):
        rehearse("t-rh-nodata", stack, experiment=EXAMPLE, participants=2, ramp=1, duration=5, flow=STROOP_FLOW,
                 force=True, data="fresh", deploy_settings=deploy_kwargs(testbed))
    assert_gone(stack, "t-rh-nodata-rh")
