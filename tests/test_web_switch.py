"""Updates participants never notice (issue 18): the new web container is checked beside the
running one and Caddy moves to it only then. Simulated participants loop through the example
experiment through Caddy during each operation; not one of their requests may fail."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from labdeploy.app import deploy
from labdeploy.server import caddy, compose, layout, stack, webswitch
from labdeploy.progress import LogLine
from deploy_support import deploy_kwargs, example_deployed
from participant_load import Participants

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"
APP = "t-sw-app"
TITLE = "Colour naming study"


def base(testbed) -> str:
    return f"http://{testbed['http']['host']}:{testbed['http']['port']}"


def served_title(testbed) -> str:
    import requests

    text = requests.get(base(testbed) + "/", headers={"Host": f"{APP}.localhost"}, timeout=15).text
    return text.split("<title>", 1)[1].split("</title>", 1)[0] if "<title>" in text else text[:200]


def variant(tmp_path, name: str, title: str = TITLE, procfile: str = "", launch_breaks: bool = False) -> Path:
    exp = tmp_path / name
    shutil.copytree(EXAMPLE, exp)
    tpl = exp / "stroop" / "templates" / "index.html"
    tpl.write_text(tpl.read_text().replace(TITLE, title))
    if procfile:
        (exp / "Procfile").write_text(procfile)
    if launch_breaks:
        src = exp / "stroop" / "app.py"
        src.write_text(src.read_text().replace("        db.create_tables()\n",
                                               "        raise RuntimeError('launch broke on purpose')\n", 1))
    return exp


def webs(remote) -> list:
    return webswitch.web_containers(remote, APP)


@pytest.fixture(scope="module")
def live(testbed, session_remote):
    with example_deployed(session_remote, testbed, APP) as remote:
        yield remote


def under_load(testbed, operation):
    """Run `operation()` while 30 participants loop through the app; (its result or error,
    the requests during it, the requests at rest before it)."""
    with Participants(base(testbed), APP, n=30, think=0.5) as load:
        time.sleep(3)
        t0 = time.monotonic()
        try:
            outcome = operation()
        except Exception as exc:  # noqa: BLE001 - returned for the test to judge
            outcome = exc
        t1 = time.monotonic()
        time.sleep(1)
    return outcome, load.window(t0, t1), load.window(0, t0)


def test_an_update_under_load_fails_no_request_and_leaves_one_web_behind_the_alias(live, testbed, tmp_path):
    before = webs(live)
    result, during, rest = under_load(testbed, lambda: deploy.update(variant(tmp_path, "v2", TITLE + " v2"), APP, live,
                                                                     **deploy_kwargs(testbed)))
    assert isinstance(result, deploy.DeployResult), result
    print(f"\nupdate under load: {during.describe()}; at rest {rest.describe()}")
    assert len(during.hits) > 20 and during.failed == [], during.failed[:5]
    assert served_title(testbed) == TITLE + " v2"
    after = webs(live)
    assert len(after) == 1 and after[0].id not in {c.id for c in before}
    site = live.get_bytes(layout.caddy_site(APP)).decode()
    assert caddy.site_upstream(site) == layout.web_alias(APP)  # a `compose up` by hand still reaches Caddy
    # The seed's debugging commands see the app's processes as before.
    ps = compose.run_app(live, APP, ["ps"]).stdout
    assert after[0].name in ps and "worker" in ps
    doc = yaml.safe_load(live.get_bytes(layout.app_compose(APP)))
    assert doc["services"]["web"]["environment"]["LABDEPLOY_VERSION"] == result.version


@pytest.mark.parametrize("fault", ["crash at start", "launch answers 500"])
def test_a_failed_update_under_load_costs_participants_nothing(live, testbed, tmp_path, fault):
    serving = webs(live)
    title = served_title(testbed)
    if fault == "crash at start":
        broken = variant(tmp_path, "crash", TITLE + " crash", procfile=(
            "web: python -c 'import sys; print(\"crashes on purpose\"); sys.exit(3)'\n"
            "worker: python -m stroop.worker\nclock: python -m stroop.clock\n"))
        call = lambda: deploy.update(broken, APP, live, start_timeout=60, **deploy_kwargs(testbed))  # noqa: E731
    else:
        broken = variant(tmp_path, "bad-launch", TITLE + " bad launch", launch_breaks=True)
        call = lambda: deploy.update(broken, APP, live, launch=True, launch_attempts=2,  # noqa: E731
                                     **deploy_kwargs(testbed))
    err, during, _rest = under_load(testbed, call)
    assert isinstance(err, deploy.DeployFailed), err
    print(f"\n{fault} under load: {during.describe()}")
    assert err.failed_step == "start" and "kept serving" in err.message
    assert ("crashes on purpose" if fault == "crash at start" else "launch broke on purpose") in err.logs
    assert len(during.hits) > 20 and during.failed == [], during.failed[:5]
    assert [c.id for c in webs(live)] == [c.id for c in serving]  # the running container was never touched
    assert served_title(testbed) == title
    assert caddy.site_upstream(live.get_bytes(layout.caddy_site(APP)).decode()) == layout.web_alias(APP)


def test_a_refused_caddy_reload_at_the_switch_keeps_the_old_upstream(live, testbed, tmp_path):
    serving, title = webs(live), served_title(testbed)
    broken_site = layout.caddy_site("zz-t-sw-broken")  # another app's site file, broken

    def break_caddy(event) -> None:
        # Caddy will refuse the next configuration: the one that would switch to the new container.
        if isinstance(event, LogLine) and event.source == "switch" and "started beside" in event.line:
            live.put_bytes(broken_site, "this is { not a caddy file\n")

    try:
        with pytest.raises(deploy.DeployFailed) as info:
            deploy.update(variant(tmp_path, "v3", TITLE + " v3"), APP, live, reporter=break_caddy,
                          **deploy_kwargs(testbed))
        assert "Caddy refused" in info.value.message
        assert [c.id for c in webs(live)] == [c.id for c in serving]
        assert served_title(testbed) == title
    finally:
        live.remove(broken_site)
        stack.reload_caddy(live)
    assert caddy.site_upstream(live.get_bytes(layout.caddy_site(APP)).decode()) == layout.web_alias(APP)


def test_ssh_dropped_in_the_middle_of_the_switch_leaves_one_healthy_version_and_the_rerun_completes(
        live, testbed, tmp_path):
    from net_support import relayed_remote

    relay, far = relayed_remote(testbed, tmp_path)
    far.connect()
    v4 = variant(tmp_path, "v4", TITLE + " v4")
    serving = webs(live)

    def cut_at_the_switch(event) -> None:
        # The link goes for good right after the new container started: nothing can be cleaned up.
        if isinstance(event, LogLine) and event.source == "switch" and "started beside" in event.line:
            relay.close()

    def drop_then_rerun():
        with pytest.raises(deploy.DeployFailed):
            deploy.update(v4, APP, far, reporter=cut_at_the_switch, **deploy_kwargs(testbed))
        left = webs(live)  # the new one is left beside the old, which Caddy still names
        assert len(left) == 2 and serving[0].id in {c.id for c in left}
        assert caddy.site_upstream(live.get_bytes(layout.caddy_site(APP)).decode()) == serving[0].name
        assert served_title(testbed) != TITLE + " v4"  # the old version serves, alone
        return deploy.update(v4, APP, live, **deploy_kwargs(testbed))

    try:
        result, during, _rest = under_load(testbed, drop_then_rerun)
    finally:
        far.close()
        relay.close()
    assert isinstance(result, deploy.DeployResult), result
    assert during.failed == [], during.failed[:5]
    assert served_title(testbed) == TITLE + " v4"
    assert len(webs(live)) == 1


def test_a_restart_of_web_under_load_fails_no_request(live, testbed):
    from labdeploy import monitor

    before = webs(live)
    df, during, rest = under_load(testbed, lambda: monitor.restart(APP, live, ["web", "worker"]))
    assert not isinstance(df, Exception), df
    print(f"\nrestart under load: {during.describe()}; at rest {rest.describe()}")
    assert len(during.hits) > 20 and during.failed == [], during.failed[:5]
    after = webs(live)
    assert len(after) == 1 and after[0].id != before[0].id  # a fresh web process took over
    assert set(df["service"]) >= {"web", "worker"} and (df["state"] == "running").all()


def test_an_update_can_wait_until_no_participant_is_working(live, testbed, tmp_path):
    from labdeploy.watch import participants
    from labdeploy.server import psql

    unfinished = "select count(*) from participants where not finished"
    db = "app_" + APP.replace("-", "_")
    psql.run_sql(live, "UPDATE participants SET finished = TRUE;\n", database=db)
    participants.set_working_query(live, APP, unfinished)
    psql.run_sql(live, "INSERT INTO participants (worker_id) VALUES ('still-here');\n", database=db)
    pid = int(psql.query_df(live, "SELECT max(id) AS id FROM participants WHERE worker_id = 'still-here'",
                            database=db)["id"][0])
    with pytest.raises(deploy.DeployFailed) as info:  # one participant keeps working past the bound
        deploy.update(EXAMPLE, APP, live, wait_idle=True, idle_timeout=3, **deploy_kwargs(testbed))
    assert info.value.failed_step == "start" and "working" in info.value.message
    assert served_title(testbed).startswith(TITLE)  # nothing was replaced
    timer = threading.Timer(4, lambda: psql.run_sql(
        live, f"UPDATE participants SET finished = TRUE WHERE id = {pid};\n", database=db))
    timer.start()
    t0 = time.monotonic()
    result = deploy.update(EXAMPLE, APP, live, wait_idle=True, idle_timeout=120, **deploy_kwargs(testbed))
    timer.join()
    assert time.monotonic() - t0 >= 4 and result.version  # it waited for the participant to finish
    # The stored query outlives the update (deploy.json is rewritten with it).
    assert participants.working(live, APP) == 0
    assert "not finished" in json_state(live)["working_query"]


def json_state(remote) -> dict:
    import json

    return json.loads(remote.get_bytes(layout.app_state(APP)))
