"""End to end against the testbed: deploy the example, use it through Caddy, update it, see a
failed update roll back with the data kept, list apps, destroy with and without data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

from labdeploy.app import appdata, apps, deploy, history
from labdeploy.server import layout, locks, psql
from labdeploy.app.appcompose import parse_env
from labdeploy.progress import Collector
from deploy_support import deploy_kwargs, destroy_if_deployed, prepare_local_stack

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"
APP = "t-dep-e2e"
DESTROY_APP = "t-dep-gone"


def through_caddy(testbed, app: str, path: str = "/", method: str = "GET", **kw) -> requests.Response:
    """What a participant's browser gets once DNS points <app>.localhost at the server."""
    return requests.request(method, f"http://{testbed['http']['host']}:{testbed['http']['port']}{path}",
                            headers={"Host": f"{app}.localhost"}, timeout=15, **kw)


def answer_all_trials(testbed, app: str) -> int:
    p = through_caddy(testbed, app, "/api/participants", "POST", json={"worker_id": "tester"}).json()
    for t in p["trials"]:
        r = through_caddy(testbed, app, f"/api/participants/{p['id']}/responses", "POST",
                          json={**t, "answer": t["ink"], "rt_ms": 432.1})
        assert r.status_code == 200, r.text
    assert through_caddy(testbed, app, f"/api/participants/{p['id']}/finish", "POST").json()["accuracy"] == 1.0
    return len(p["trials"])


def count(remote, app: str, table: str) -> int:
    df = psql.query_df(remote, f"SELECT count(*) AS n FROM {table}", database=f"app_{app.replace('-', '_')}")
    return int(df["n"][0])


def redis_cli(remote, *args: str) -> str:
    from labdeploy.server import compose

    return compose.run_compose(remote, layout.app_dir(APP), ["exec", "-T", "redis", "redis-cli", *args]).stdout.strip()


@pytest.fixture(scope="module")
def deployed(testbed, session_remote):
    prepare_local_stack(session_remote, testbed)
    destroy_if_deployed(session_remote, APP)
    argvs: list = []
    real_run = session_remote.run

    def spy(argv, **kw):  # records every remote command line, then runs it for real
        argvs.append(list(argv))
        return real_run(argv, **kw)

    session_remote.run = spy
    events = Collector()
    try:
        result = deploy.deploy(EXAMPLE, APP, session_remote, reporter=events, **deploy_kwargs(testbed))
    finally:
        del session_remote.run
    yield {"result": result, "events": events, "argvs": argvs}
    destroy_if_deployed(session_remote, APP)


def test_deploy_reports_eight_steps_and_returns_url_and_masked_dashboard(deployed):
    result, events = deployed["result"], deployed["events"]
    assert events.steps() == list(deploy.STEPS)
    assert result.url == f"http://{APP}.localhost/"
    assert result.dashboard_url == result.url + "dashboard"
    assert "••" in repr(result) and result.dashboard_password.reveal() not in repr(result)
    assert result.dashboard_password.reveal() not in result.summary()
    assert result.ssh["connections"] == 0  # everything over the one connection already open


def test_participant_answers_through_caddy_are_stored(deployed, testbed, session_remote):
    page = through_caddy(testbed, APP)
    assert page.status_code == 200 and "Colour naming study" in page.text
    assert through_caddy(testbed, APP, "/assets/stimuli.json").json()["trials"] == 8  # uploaded assets
    before = count(session_remote, APP, "responses")
    n = answer_all_trials(testbed, APP)
    assert count(session_remote, APP, "responses") == before + n
    dash = through_caddy(testbed, APP, "/dashboard",
                         auth=("admin", deployed["result"].dashboard_password.reveal()))
    assert dash.status_code == 200


def test_secrets_stay_off_command_lines_and_out_of_the_compose_file(deployed, session_remote):
    secrets = parse_env(session_remote.get_bytes(layout.app_secrets(APP)).decode())
    db_password = secrets["DATABASE_URL"].split(":")[2].split("@")[0]
    for argv in deployed["argvs"]:
        line = " ".join(map(str, argv))
        assert db_password not in line and secrets["dashboard_password"] not in line
    mode = session_remote.run(["stat", "-c", "%a", layout.app_secrets(APP)]).stdout.strip()
    assert mode == "600"
    compose_text = session_remote.get_bytes(layout.app_compose(APP)).decode()
    assert db_password not in compose_text and secrets["dashboard_password"] not in compose_text


def test_app_has_its_own_role_with_a_connection_limit(deployed, session_remote):
    df = psql.query_df(session_remote, "SELECT rolconnlimit, rolsuper FROM pg_roles WHERE rolname = 'app_t_dep_e2e'")
    assert int(df["rolconnlimit"][0]) == 20 and not bool(df["rolsuper"][0])
    # the app's processes really use that role
    df = psql.query_df(session_remote, "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = 'app_t_dep_e2e'")
    assert set(df["usename"]) <= {"app_t_dep_e2e"}


def test_seed_debugging_commands_still_work(deployed, session_remote):
    from labdeploy.server import compose

    out = compose.run_compose(session_remote, layout.app_dir(APP), ["ps"]).stdout
    for svc in ("web", "worker", "clock", "redis"):
        assert f"{APP}_{svc}_1" in out or f"{APP}-{svc}-1" in out


def test_apps_table_lists_the_app(deployed, session_remote):
    df = apps.apps(session_remote)
    row = df[df["app"] == APP].iloc[0]
    assert row["state"] == "running" and row["running"] == "4/4"
    assert row["version"] == deployed["result"].version and row["url"] == deployed["result"].url
    assert not row["locked"]


def test_update_keeps_data_then_failed_update_rolls_back(deployed, testbed, session_remote, tmp_path):
    answer_all_trials(testbed, APP)
    responses = count(session_remote, APP, "responses")
    redis_cli(session_remote, "set", "kept", "yes")

    changed = tmp_path / "v2"
    shutil.copytree(EXAMPLE, changed)
    tpl = changed / "stroop" / "templates" / "index.html"
    tpl.write_text(tpl.read_text().replace("Colour naming study", "Colour naming study v2"))
    v2 = deploy.update(changed, APP, session_remote, **deploy_kwargs(testbed))
    assert v2.version != deployed["result"].version
    assert "Colour naming study v2" in through_caddy(testbed, APP).text
    assert count(session_remote, APP, "responses") == responses
    assert redis_cli(session_remote, "get", "kept") == "yes"
    assert v2.dashboard_password == deployed["result"].dashboard_password  # same secrets kept

    broken = tmp_path / "v3"
    shutil.copytree(changed, broken)
    (broken / "Procfile").write_text("web: python -c 'import sys; print(\"v3 crashes on purpose\"); sys.exit(3)'\n"
                                     "worker: python -m stroop.worker\nclock: python -m stroop.clock\n")
    secrets_before = session_remote.get_bytes(layout.app_secrets(APP))
    with pytest.raises(deploy.DeployFailed) as info:
        deploy.update(broken, APP, session_remote, start_timeout=60, secrets={"new_key": "v3-only"},
                      **deploy_kwargs(testbed))
    err = info.value
    assert err.failed_step == "start" and err.rolled_back
    assert "v3 crashes on purpose" in err.logs and "previous version" in err.message
    assert "Colour naming study v2" in through_caddy(testbed, APP).text  # v2 serves again
    assert count(session_remote, APP, "responses") == responses
    assert redis_cli(session_remote, "get", "kept") == "yes"
    assert session_remote.get_bytes(layout.app_secrets(APP)) == secrets_before  # v3's secret taken back
    assert locks.read_lock(session_remote, APP) is None
    h = history.history(session_remote, APP)
    assert list(h["outcome"])[-3:] == ["success", "success", "rolled back"]
    assert list(h["operation"])[-2:] == ["update", "update"]
    state = apps.apps(session_remote).set_index("app").loc[APP]
    assert state["version"] == v2.version and state["state"] == "running"


def test_destroy_keeps_data_unless_asked(testbed, session_remote):
    prepare_local_stack(session_remote, testbed)
    destroy_if_deployed(session_remote, DESTROY_APP)
    try:
        deploy.deploy(EXAMPLE, DESTROY_APP, session_remote, **deploy_kwargs(testbed))
        answer_all_trials(testbed, DESTROY_APP)
        with pytest.raises(apps.ConfirmationRequired):
            apps.destroy(DESTROY_APP, session_remote)
        assert through_caddy(testbed, DESTROY_APP).status_code == 200  # nothing happened

        kept = apps.destroy(DESTROY_APP, session_remote, confirm=True)
        assert "database" in kept.kept and "redis volume" in kept.kept and "images" in kept.removed
        assert session_remote.run(["docker", "images", "-q", "--filter", f"label=labdeploy.app={DESTROY_APP}"]
                                  ).stdout.strip() == ""
        assert not session_remote.exists(layout.app_dir(DESTROY_APP))
        assert not session_remote.exists(layout.caddy_site(DESTROY_APP))
        assert session_remote.run(["docker", "ps", "-aq", "--filter", f"label=labdeploy.app={DESTROY_APP}"]
                                  ).stdout.strip() == ""
        assert "Colour naming study" not in through_caddy(testbed, DESTROY_APP).text  # Caddy: no such site
        assert count(session_remote, DESTROY_APP, "responses") == 8  # the data survived

        # Deployed again under the same name, it stops and says what is kept; nothing changes.
        with pytest.raises(appdata.DataKept) as info:
            deploy.deploy(EXAMPLE, DESTROY_APP, session_remote, **deploy_kwargs(testbed))
        assert "responses 8" in info.value.message and "reuse" in info.value.hint
        assert int(info.value.tables.set_index("table").loc["responses", "rows"]) == 8
        assert not session_remote.exists(layout.app_dir(DESTROY_APP))
        # Asked to reuse it, it finds its data.
        again = deploy.deploy(EXAMPLE, DESTROY_APP, session_remote, existing_data="reuse", **deploy_kwargs(testbed))
        assert again.data == "reused" and count(session_remote, DESTROY_APP, "responses") == 8

        # export_check=False: the export-before-destroy rule has its own tests (test_export*.py)
        gone = apps.destroy(DESTROY_APP, session_remote, confirm=True, remove_data=True, export_check=False)
        assert "database and role" in gone.removed
        assert all(k.startswith("backups in ~/") for k in gone.kept)  # only backups outlive it, if one ran
        roles = psql.query_df(session_remote, "SELECT count(*) AS n FROM pg_roles WHERE rolname = 'app_t_dep_gone'")
        assert int(roles["n"][0]) == 0
        assert session_remote.run(["docker", "volume", "ls", "-q", "--filter",
                                   f"label=com.docker.compose.project={DESTROY_APP}"]).stdout.strip() == ""
        assert not session_remote.exists(layout.app_data(DESTROY_APP))
        if gone.kept:  # the backup service backed the new app up meanwhile: its backups keep the name
            last = apps.destroy(DESTROY_APP, session_remote, confirm=True, remove_data=True, remove_backups=True,
                                export_check=False)
            assert "backups" in last.removed and not last.kept
        with pytest.raises(deploy.UnknownApp):
            apps.destroy(DESTROY_APP, session_remote, confirm=True)
    finally:
        destroy_if_deployed(session_remote, DESTROY_APP)


def test_replacing_kept_data_needs_a_fresh_export_then_starts_empty(testbed, session_remote, home, tmp_path):
    from labdeploy import export

    app = "t-dep-replace"
    prepare_local_stack(session_remote, testbed)
    destroy_if_deployed(session_remote, app)
    try:
        deploy.deploy(EXAMPLE, app, session_remote, **deploy_kwargs(testbed))
        answer_all_trials(testbed, app)
        apps.destroy(app, session_remote, confirm=True)
        with pytest.raises(export.ExportRequired):
            deploy.deploy(EXAMPLE, app, session_remote, existing_data="replace", **deploy_kwargs(testbed))
        assert count(session_remote, app, "responses") == 8 and not session_remote.exists(layout.app_dir(app))
        export.export(app, session_remote, save_to=tmp_path / "exports")
        fresh = deploy.deploy(EXAMPLE, app, session_remote, existing_data="replace", **deploy_kwargs(testbed))
        assert fresh.data == "replaced"
        assert count(session_remote, app, "responses") == 0
    finally:
        destroy_if_deployed(session_remote, app)


def test_an_app_that_writes_by_itself_is_destroyed_with_a_final_export(testbed, session_remote, home, tmp_path):
    from labdeploy import export
    from labdeploy.data.archive import load_export

    app = "t-dep-busy"
    prepare_local_stack(session_remote, testbed)
    destroy_if_deployed(session_remote, app)
    try:  # its clock has the worker write a row every 0.3 s, as PsyNet's status rows do every minute
        deploy.deploy(EXAMPLE, app, session_remote, config={"CLOCK_INTERVAL": "0.3"}, **deploy_kwargs(testbed))
        export.export(app, session_remote, save_to=tmp_path / "early")
        import time
        time.sleep(1.5)
        with pytest.raises(export.ExportRequired):
            apps.destroy(app, session_remote, confirm=True, remove_data=True)
        # Refused, and everything as it was: serving, running, routed.
        assert through_caddy(testbed, app).status_code == 200
        assert "running" == apps.apps(session_remote).set_index("app").loc[app, "state"]
        gone = apps.destroy(app, session_remote, confirm=True, remove_data=True, final_export=tmp_path / "final")
        assert "database and role" in gone.removed and len(gone.exported) == 1
        saved = load_export(gone.exported[0])
        assert len(saved["jobs"]) > 0  # the rows the app wrote by itself are in the final export
        assert not session_remote.exists(layout.app_dir(app))
    finally:
        destroy_if_deployed(session_remote, app)


def test_secrets_persist_across_updates_until_unset(deployed, testbed, session_remote, monkeypatch):
    deploy.update(EXAMPLE, APP, session_remote, secrets={"HX_API_TOKEN": "tok-persist-1234"},
                  **deploy_kwargs(testbed))
    # An update that does not name it keeps it; the result lists the names, never values.
    kept = deploy.update(EXAMPLE, APP, session_remote, **deploy_kwargs(testbed))
    assert "HX_API_TOKEN" in kept.secret_names and "DATABASE_URL" in kept.secret_names
    assert "tok-persist-1234" not in repr(kept)
    assert parse_env(session_remote.get_bytes(layout.app_secrets(APP)).decode())["HX_API_TOKEN"] == "tok-persist-1234"
    # A config key whose name says secret goes to the 0600 file, never the 0644 compose file.
    deploy.update(EXAMPLE, APP, session_remote, config={"smtp_password": "cfg-secret-5678", "plain_key": "shown"},
                  **deploy_kwargs(testbed))
    compose_text = session_remote.get_bytes(layout.app_compose(APP)).decode()
    assert "cfg-secret-5678" not in compose_text and "plain_key: shown" in compose_text
    secrets = parse_env(session_remote.get_bytes(layout.app_secrets(APP)).decode())
    assert secrets["smtp_password"] == "cfg-secret-5678"
    gone = deploy.update(EXAMPLE, APP, session_remote, unset_secrets=["HX_API_TOKEN", "smtp_password"],
                         **deploy_kwargs(testbed))
    assert "HX_API_TOKEN" not in gone.secret_names
    secrets = parse_env(session_remote.get_bytes(layout.app_secrets(APP)).decode())
    assert "HX_API_TOKEN" not in secrets and "smtp_password" not in secrets and "DATABASE_URL" in secrets


def test_an_update_remembers_the_redis_and_base_images_and_the_experiment_id(deployed, testbed, session_remote):
    first = deploy.update(EXAMPLE, APP, session_remote, **deploy_kwargs(testbed))
    again = deploy.update(EXAMPLE, APP, session_remote, health_path="/health")  # no images given this time
    assert again.remembered["redis_image"] == {"value": testbed["images"]["redis"], "from": "app"}
    assert again.remembered["base_image"] == {"value": testbed["images"]["python"], "from": "app"}
    assert again.version == first.version  # the same build arguments, so the same image


def test_tunnel_opens_the_app_on_localhost(deployed, session_remote):
    with apps.open_tunnel(session_remote, APP) as tunnel:
        assert tunnel.url.startswith(f"http://{APP}.localhost:")
        # requests doesn't resolve *.localhost itself (browsers do): connect to 127.0.0.1
        # and send the same Host header a browser would.
        r = requests.get(f"http://127.0.0.1:{tunnel.local_port}/",
                         headers={"Host": f"{APP}.localhost:{tunnel.local_port}"}, timeout=15)
        assert r.status_code == 200 and "Colour naming study" in r.text
