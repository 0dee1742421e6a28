"""The rehearsal's pure parts and its load generator, without a server: flow descriptions,
targets, ramps, the host usage parser, the analysis into the answer, and the generator against
a small HTTP server on this computer's loopback (started by the test; no testbed)."""

from __future__ import annotations

import asyncio
import time

import pandas as pd
import pytest

from labdeploy.commands import hostfacts
from labdeploy.errors import ValidationError
from labdeploy.rehearsal import analysis, flows, load
from labdeploy.rehearsal.rehearse import Stop, plan, plan_levels
from labdeploy.rehearsal.load import Flow, FlowError, LoadRun, Step, Target
from local_http import LocalHTTP

EXAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples"


# ------------------------------------------------------------------ flows and targets

def test_a_flow_checks_its_placeholders_and_holds_paths_only():
    Flow([{"method": "POST", "path": "/p", "json": {"w": "{worker_id}"}, "save": {"pid": "id"}},
          {"method": "GET", "path": "/p/{pid}"}])
    with pytest.raises(FlowError, match="no earlier step saves"):
        Flow([{"method": "GET", "path": "/p/{pid}"}])
    for path in ("http://elsewhere.example/x", "//elsewhere.example/x", "x"):
        with pytest.raises(FlowError, match="not a path"):
            Flow([{"method": "GET", "path": path}])
    with pytest.raises(FlowError, match="keys it does not know"):
        Flow([{"method": "GET", "path": "/", "url": "http://x"}])
    with pytest.raises(FlowError, match="no steps"):
        Flow([])
    with pytest.raises(FlowError, match="not an HTTP method"):
        Flow([{"method": "BREW", "path": "/"}])


def test_placeholders_fill_paths_and_bodies_and_saved_values_are_dug_out():
    values = {"worker_id": "lbot-1", "pid": 7}
    assert load._fill({"a": ["{worker_id}", 3], "b": "/x/{pid}"}, values) == {"a": ["lbot-1", 3], "b": "/x/7"}
    assert load._dig({"participant": {"id": 5}, "l": [{"x": 1}]}, "participant.id") == 5
    assert load._dig({"l": [{"x": 1}]}, "l.0.x") == 1


def test_the_dallinger_flow_walks_the_participant_routes_with_marked_bots():
    f = flows.dallinger(0.5)
    routes = [s.route for s in f.steps]
    assert routes == ["GET /ad", "POST /participant", "POST /node", "GET /node/infos", "POST /info", "POST /question",
                      "GET /worker_complete"]
    assert all("recruiter=hotair" in s.path for s in f.steps[:2])
    assert f.steps[2].expect == (403,)  # a full network turns a participant away: not a server error


def test_a_target_is_the_registered_address_with_the_apps_name():
    t = Target.for_app("10.250.0.2", "http://study.localhost/")
    assert (t.address, t.port, t.host, t.tls) == ("10.250.0.2", 80, "study.localhost", False)
    t = Target.for_app("lab.example.org", "https://study.lab.example.org/")
    assert (t.address, t.port, t.tls) == ("lab.example.org", 443, True)
    with pytest.raises(ValidationError):
        Target.for_app("10.0.0.1", "ftp://x/")


def test_ramps_and_bounds_are_refused_before_anything_runs():
    assert plan_levels(10, 3) == [4, 7, 10]
    assert plan_levels(2, 4) == [1, 2]
    assert plan_levels(0, [2, 5]) == [2, 5]
    for bad in ((10, 0), (10, 21), (0, 3), (10, [5, 2])):
        with pytest.raises(ValidationError):
            plan_levels(*bad)
    with pytest.raises(ValidationError, match="outside 1-"):
        load.check_bounds([load.MAX_PARTICIPANTS + 1], 10)
    with pytest.raises(ValidationError, match="at most"):
        load.check_bounds([1, 2], load.MAX_SECONDS)
    with pytest.raises(ValidationError, match="not an experiment folder"):
        plan("a", EXAMPLES / "nothing-here", 5, 2, 10, None, 1.0, 3.0, None)
    with pytest.raises(ValidationError, match="does not know what"):
        plan("a", EXAMPLES / "stroop", 5, 2, 10, None, 1.0, 3.0, None)  # not Dallinger: a flow is needed
    assert plan("a", EXAMPLES / "stroop", 5, 2, 10, [{"method": "GET", "path": "/"}], 1.0, 3.0, None,
                "empty").data == "empty"
    with pytest.raises(ValidationError, match="data='everything' is not one of latest, fresh, empty"):
        plan("a", EXAMPLES / "stroop", 5, 2, 10, [{"method": "GET", "path": "/"}], 1.0, 3.0, None, "everything")


def test_a_psynet_experiment_walks_its_timeline_unless_given_a_flow_and_its_copy_recruits_nobody():
    for folder in ("psynet-static", "dallinger-psynet-hello"):
        p = plan("a", EXAMPLES / folder, 5, 2, 10, None, 0.7, 3.0, None)
        assert p.flow is flows.psynet and p.flow_name == "psynet" and p.think == 0.7
        assert p.settings["config"]["recruiter"] == "hotair" and p.settings["config"]["mode"] == "sandbox"
    given = plan("a", EXAMPLES / "psynet-static", 5, 2, 10, [{"method": "GET", "path": "/ad"}], 1.0, 3.0, None)
    assert given.flow_name != "psynet" and given.settings["config"]["recruiter"] == "hotair"
    assert plan("a", EXAMPLES / "dallinger-hello", 5, 2, 10, None, 1.0, 3.0, None).flow_name == "dallinger"
    p = plan("a", EXAMPLES / "dallinger-hello", 5, 2, 10, None, 1.0, 3.0, {"config": {"recruiter": "prolific"}})
    assert p.flow.name == "dallinger" and p.settings["config"]["recruiter"] == "hotair"  # the copy recruits nobody


def test_a_live_recruiting_app_is_refused_unless_forced(tmp_path):
    from labdeploy.rehearsal.rehearse import RehearsalRefused, refuse_live_recruiter

    exp = EXAMPLES / "dallinger-hello"
    refuse_live_recruiter("a", exp, {}, False)  # sandbox, hotair
    with pytest.raises(RehearsalRefused, match="recruits real participants"):
        refuse_live_recruiter("a", exp, {"mode": "live", "recruiter": "prolific"}, False)
    refuse_live_recruiter("a", exp, {"mode": "live", "recruiter": "prolific"}, True)


def test_host_usage_is_read_from_proc():
    out = ("@@cpu\ncpu  100 0 50 800 50 0 0 0 0 0\n@@meminfo\nMemTotal: 2000 kB\nMemAvailable: 500 kB\n"
           "@@cores\n2\n@@end\n")
    assert hostfacts.read_usage(out) == {"busy": 150, "total": 1000, "mem_total": 2048000, "mem_available": 512000,
                                         "cores": 2}
    assert hostfacts.read_usage("")["busy"] is None


# ------------------------------------------------------------------ the generator, on loopback

class TinyServer(LocalHTTP):
    """An HTTP/1.1 server on 127.0.0.1 in a thread: /ok answers, /slow waits, /boom fails,
    /json answers {"id": n}; it counts requests and notes the Host header."""

    def __init__(self) -> None:
        self.requests: list = []
        super().__init__()

    async def respond(self, method, target, headers, body, conn) -> tuple[int, bytes]:
        self.requests.append((time.time(), target, headers.get("host")))
        if target.startswith("/slow"):
            await asyncio.sleep(30)
        elif target.startswith("/boom"):
            return 500, b"broken"
        elif target.startswith("/json"):
            return 200, b'{"id": %d}' % len(self.requests)
        return 200, b"ok"


@pytest.fixture
def tiny():
    server = TinyServer()
    yield server
    server.close()


def test_the_generator_walks_a_flow_with_saved_values_through_one_target(tiny):
    target = Target("127.0.0.1", tiny.port, "study.localhost")
    flow = Flow([{"method": "POST", "path": "/json", "json": {"w": "{worker_id}"}, "save": {"pid": "id"}},
                 {"method": "GET", "path": "/ok/{pid}"}, {"method": "GET", "path": "/boom"}], think=0.01)
    run = LoadRun(target, flow, [2, 4], 0.6)
    with run:
        run.join(30)
    hits = run.hits
    assert not run.stopped and run.finished and list(run.schedule["participants"]) == [2, 4]
    assert set(hits["route"]) == {"POST /json", "GET /ok/{pid}", "GET /boom"}
    assert (hits.loc[hits["route"] == "GET /boom", "status"] == 500).all()
    assert not hits.loc[hits["route"] == "GET /boom", "ok"].any() and hits.loc[hits["route"] != "GET /boom", "ok"].all()
    assert {h for _, _, h in tiny.requests} == {"study.localhost"}
    assert any(p.startswith("/ok/") and p[4:].isdigit() for _, p, _ in tiny.requests)
    assert set(hits["participants"]) == {2, 4}
    lat = analysis.latency(hits, run.schedule)
    assert list(lat.index) == [2, 4] and (lat["error_rate"] > 0.2).all()


def test_stop_ends_all_load_at_once_even_mid_request(tiny):
    target = Target("127.0.0.1", tiny.port, "x.localhost")
    run = LoadRun(target, [{"method": "GET", "path": "/ok"}, {"method": "GET", "path": "/slow"}], [5], 600,
                  think=0.01, timeout=120)
    stop = Stop()
    run.start()
    stop.attach(run)
    while len(tiny.requests) < 10:
        time.sleep(0.05)
    stop.set()
    stopped_at = time.time()
    assert run.join(20), "the load did not end"
    assert run.stopped and run.finished
    time.sleep(0.3)
    assert all(t <= stopped_at for t, _, _ in tiny.requests)  # nothing sent after the stop
    assert (run.hits["time"] <= pd.Timestamp(stopped_at, unit="s", tz="UTC")).all()


def test_a_flow_function_and_its_failures_are_errors_of_a_round_not_of_the_run(tiny):
    async def visit(bot):
        answer = await bot.get("/json")
        if answer.json()["id"] % 2:
            raise RuntimeError("the page did not say what I expected")
        await bot.post("/ok", data={"w": bot.worker_id})

    run = LoadRun(Target("127.0.0.1", tiny.port, "x.localhost"), visit, [3], 0.8, think=0.01)
    with run:
        run.join(30)
    hits = run.hits
    assert (hits["route"] == "flow").any() and (hits["route"] == "POST /ok").any()
    assert hits["bot"].nunique() == 3


def test_bounded_in_requests(tiny):
    run = LoadRun(Target("127.0.0.1", tiny.port, "x.localhost"), [{"method": "GET", "path": "/ok"}], [4], 600,
                  think=0, max_requests=50)
    with run:
        run.join(30)
    assert run.full and run.finished  # ended by the bound, not by the clock
    assert 50 <= len(run.hits) <= 54  # requests in flight at the bound may still land


def test_no_answer_is_an_error_with_status_0():
    run = LoadRun(Target("127.0.0.1", 9, "x.localhost"), [{"method": "GET", "path": "/"}], [1], 0.5, think=0.05)
    with run:
        run.join(30)
    hits = run.hits
    assert len(hits) and (hits["status"] == 0).all() and not hits["ok"].any()


# ------------------------------------------------------------------ the analysis

def _schedule(levels, seconds=10.0, t0=1_000_000.0):
    rows = [(n, t0 + i * seconds, t0 + (i + 1) * seconds) for i, n in enumerate(levels)]
    df = pd.DataFrame(rows, columns=["participants", "start", "end"])
    for c in ("start", "end"):
        df[c] = pd.to_datetime(df[c], unit="s", utc=True)
    return df


def _measured(levels, p95s, errors, t0=1_000_000.0):
    hits, usage, ctr, conns = [], [], [], []
    for i, (n, p95, err) in enumerate(zip(levels, p95s, errors)):
        for j in range(100):
            hits.append((t0 + i * 10 + 5 + j * 0.01, p95 * (j + 1) / 96, 200 if j >= err else 500, j >= err,
                         "GET /", "", n, j % n))
        for s in (6.0, 8.0):
            t = pd.Timestamp(t0 + i * 10 + s, unit="s", tz="UTC")
            usage.append({"time": t, "server_cpu_cores": 0.2 + 0.05 * n, "server_mem_bytes": 1e9 + 1e6 * n})
            ctr.append({"time": t, "service": "web", "cpu_cores": 0.01 * n, "mem_bytes": 1e8 + 2e6 * n})
            ctr.append({"time": t, "service": "worker", "cpu_cores": 0.002 * n, "mem_bytes": 5e7})
            conns.append({"time": t, "connections": 1 + 0.5 * n})
    t = pd.Timestamp(t0 - 2, unit="s", tz="UTC")  # the idle baseline
    usage.append({"time": t, "server_cpu_cores": 0.2, "server_mem_bytes": 1e9})
    ctr.append({"time": t, "service": "web", "cpu_cores": 0.0, "mem_bytes": 1e8})
    ctr.append({"time": t, "service": "worker", "cpu_cores": 0.0, "mem_bytes": 5e7})
    conns.append({"time": t, "connections": 1})
    hits_df = pd.DataFrame(hits, columns=load.HIT_COLUMNS)
    hits_df["time"] = pd.to_datetime(hits_df["time"], unit="s", utc=True)
    return hits_df, pd.DataFrame(usage), pd.DataFrame(ctr), pd.DataFrame(conns)


def test_latency_resources_and_costs_per_participant():
    levels = [5, 10, 20]
    hits, usage, ctr, conns = _measured(levels, [0.2, 0.4, 0.8], [0, 0, 0])
    schedule = _schedule(levels)
    lat = analysis.latency(hits, schedule)
    assert list(lat.index) == levels and list(lat.columns) == analysis.LATENCY_COLUMNS
    assert lat.loc[5, "rps"] == pytest.approx(10.0) and (lat["error_rate"] == 0).all()
    res = analysis.resources(usage, ctr, conns, schedule)
    assert list(res.index) == [0, *levels]
    cost = analysis.costs(res)
    assert cost.loc["app_cpu_cores", "per_participant"] == pytest.approx(0.012)
    assert cost.loc["app_mem_bytes", "per_participant"] == pytest.approx(2e6)
    assert cost.loc["connections", "per_participant"] == pytest.approx(0.5)
    assert cost.loc["connections", "r2"] == pytest.approx(1.0)


def test_the_recommendation_measured_when_a_step_failed_projected_when_all_held():
    levels = [5, 10, 20]
    hits, usage, ctr, conns = _measured(levels, [0.2, 0.5, 2.5], [0, 0, 10])
    schedule = _schedule(levels)
    lat, res = analysis.latency(hits, schedule), analysis.resources(usage, ctr, conns, schedule)
    facts = analysis.ServerFacts(cores=2, mem_total_bytes=4e9, max_connections=100, role_limit=50)
    rec = analysis.recommend(lat, res, analysis.costs(res), facts)
    assert (rec.participants, rec.held_measured, rec.measured_max, rec.limited_by) == (10, 10, 20, "latency")
    first, rest = rec.sentence.split(". ", 1)  # the sentence, whole, then what it rests on
    assert first == (f"This experiment on this server holds about 10 simultaneous participants at p95 under 1 s; "
                     f"set web workers to {rec.web_workers}, worker processes to {rec.worker_processes}, "
                     f"the database connection limit to {rec.connection_limit}")
    assert rest.startswith("Measured up to 20 at once: p95 ")
    assert rest.endswith("GB per simultaneous experiment of PsyNet's rule of thumb.")
    assert "20 at once did not hold" in rec.sentence and "5 GB" in rec.sentence
    assert rec.web_workers >= 2 and rec.worker_processes >= 1 and rec.connection_limit >= rec.web_workers

    hits, usage, ctr, conns = _measured(levels, [0.2, 0.3, 0.4], [0, 0, 0])
    lat, res = analysis.latency(hits, schedule), analysis.resources(usage, ctr, conns, schedule)
    rec = analysis.recommend(lat, res, analysis.costs(res), facts)
    # CPU: (0.8 * 2 - 0.2) / 0.012 = 116; connections: (0.8 * 50 - 1) / 0.5 = 78 -> connections first
    assert (rec.participants, rec.projected, rec.limited_by) == (78, 78, "connections")
    assert "Projected from the measured cost per participant, until connections runs short" in rec.sentence
    assert rec.connection_limit >= 1.5 * (1 + 0.5 * 78) - 1


def test_nothing_held_says_so():
    hits, usage, ctr, conns = _measured([5], [3.0], [50])
    schedule = _schedule([5])
    lat = analysis.latency(hits, schedule)
    rec = analysis.recommend(lat, pd.DataFrame(), analysis.costs(pd.DataFrame()), analysis.ServerFacts(2, 4e9))
    assert rec.participants == 0 and "did not hold even 5" in rec.sentence
    empty = analysis.recommend(analysis.latency(hits.iloc[:0], schedule), pd.DataFrame(), analysis.costs(pd.DataFrame()),
                               analysis.ServerFacts(2, 4e9))
    assert "measured nothing" in empty.sentence


def test_the_result_documents_every_column_of_its_dataframes():
    import importlib

    from labdeploy.rehearsal import copydata

    doc = importlib.import_module("labdeploy.rehearsal.rehearse").Rehearsal.__doc__
    names_ = (analysis.LATENCY_COLUMNS + analysis.RESOURCE_COLUMNS + load.HIT_COLUMNS
              + ["schedule", "start", "end", "server_cpu_cores", "service", "cpu_cores", "mem_bytes",
                 "base", "per_participant", "r2", "points", "unit", "web_workers", "worker_processes",
                 "connection_limit", "sentence"])
    assert [n for n in names_ if n not in doc] == []
    assert list(copydata.CopyData().tables.columns) == ["table", "rows"] and "table, rows" in doc
    assert list(analysis.costs(pd.DataFrame()).columns) == ["base", "per_participant", "r2", "points", "unit"]
