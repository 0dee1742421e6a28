"""Each app's own PgBouncer on the testbed (issue 15.3): a Dallinger app deployed before the
pooler existed gets it on update with its data kept; the password stays private; 200
participants at once through Caddy get 0 errors while the app stays within its role's
limit; the choice can be turned off and is remembered.

Measured on the testbed while building this (2 cores, examples/dallinger-psynet-hello, role
limit 20): without the pooler 60 visits gave 10 of 110 requests HTTP 500 ("too many
connections for role"); with PgBouncer alone, 200 visits gave 20 HTTP 502 (psycopg2 blocks a
whole gevent worker while its transaction waits for a pooled connection, so gunicorn killed
the workers); with PgBouncer and cooperative waits, 0 errors at 16 connections.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from labdeploy.app import deploy
from labdeploy.server import pooler
from labdeploy.server import layout, psql
from labdeploy.watch import monitor
from labdeploy import names
from labdeploy.app.appcompose import parse_env
from deploy_support import destroy_if_deployed, prepare_local_stack
from load_support import Visit, dallinger_visit, drive


REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "dallinger-hello"
APP = "t-pool-e2e"
ROLE = names.db_identifier(APP)


def compose_of(remote) -> dict:
    return yaml.safe_load(remote.get_bytes(layout.app_compose(APP)))


def secrets_of(remote) -> dict:
    return parse_env(remote.get_bytes(layout.app_secrets(APP)).decode())


def pooler_container(remote) -> str:
    return remote.run(["docker", "ps", "-q", "--filter", f"label=labdeploy.app={APP}",
                       "--filter", "label=labdeploy.service=pgbouncer"]).stdout.split()[0]


def one_visit(testbed, i: int) -> list:
    v = Visit(testbed, APP)
    dallinger_visit(v, i)
    return [a[1] for a in v.answers]


@pytest.fixture(scope="module")
def old_app(testbed, session_remote, tmp_path_factory):
    """The example as an older labdeploy left it: no pooler, a compose file that records no
    choice, one participant's data."""
    if "pgbouncer" not in testbed["images"]:
        pytest.fail("The testbed has no PgBouncer image; run `sudo scripts/testbed up`.", pytrace=False)
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        prepare_local_stack(session_remote, testbed)
        destroy_if_deployed(session_remote, APP)
        first = deploy.deploy(EXAMPLE, APP, session_remote, pooler=False,
                              build_args={"BASE_IMAGE": testbed["images"]["dallinger"]},
                              redis_image=testbed["images"]["redis"], start_timeout=180)
        doc = compose_of(session_remote)
        del doc["services"]["web"]["labels"][pooler.LABEL]  # what labdeploy wrote before the pooler
        session_remote.put_bytes(layout.app_compose(APP), yaml.safe_dump(doc, sort_keys=False), mode=0o644)
        assert one_visit(testbed, 1000) == [200] * 6
        yield {"first": first, "home": home}
        destroy_if_deployed(session_remote, APP)


@pytest.fixture(scope="module")
def updated(old_app, session_remote):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(old_app["home"]))
        return deploy.update(EXAMPLE, APP, session_remote, start_timeout=180)


def test_an_app_from_before_the_pooler_gets_it_on_update_with_its_data(old_app, updated, session_remote, testbed):
    assert old_app["first"].remembered["pooler"] == {"value": False, "from": "given"}
    assert updated.remembered["pooler"] == {"value": True, "from": "default"}  # a Dallinger app
    assert updated.remembered["pgbouncer_image"]["from"] == "server"  # the testbed's, from the stack settings
    doc = compose_of(session_remote)
    assert doc["services"]["pgbouncer"]["image"] == updated.remembered["pgbouncer_image"]["value"]
    assert doc["services"]["web"]["labels"][pooler.LABEL] == "on"
    url = secrets_of(session_remote)["DATABASE_URL"]
    assert url.split("@", 1)[1] == f"{APP}-pgbouncer:6432/{ROLE}"
    # The data is kept, the experiment keeps its id, and the app serves through its pooler.
    rows = psql.query_df(session_remote, "SELECT worker_id FROM participant", database=ROLE)
    assert rows["worker_id"].tolist() == ["LW1000"]
    assert updated.experiment_id == old_app["first"].experiment_id
    assert one_visit(testbed, 1001) == [200] * 6
    mine = monitor.pg_activity(session_remote)
    mine = mine[mine["user"] == ROLE]
    assert len(mine) >= 1 and set(mine["application_name"]) == {"pgbouncer"}


def test_the_pooler_keeps_the_password_private(updated, session_remote):
    password = secrets_of(session_remote)["DATABASE_URL"].split(":")[2].split("@")[0]
    compose_text = session_remote.get_bytes(layout.app_compose(APP)).decode()
    assert password not in compose_text
    env_path = f"{layout.app_dir(APP)}/{pooler.ENV_FILE}"
    assert session_remote.run(["stat", "-c", "%a", env_path]).stdout.strip() == "600"
    assert parse_env(session_remote.get_bytes(env_path).decode()) == {pooler.PASSWORD_VAR: password}
    # In the container: a non-root user, the files in a tmpfs only it can read, no password on
    # any command line, none left in the running process's environment.
    cid = pooler_container(session_remote)
    probe = (f"id -u; grep ' {pooler.CONFIG_DIR} ' /proc/mounts | cut -d' ' -f3; "
             f"stat -c '%a %u %n' {pooler.CONFIG_DIR}/*; cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; "
             "tr '\\0' '\\n' < /proc/1/environ | cut -d= -f1")
    out = session_remote.run(["docker", "exec", cid, "sh", "-c", probe]).stdout
    lines = out.splitlines()
    uid = lines[0]
    assert uid != "0"
    assert lines[1] == "tmpfs"
    assert sorted(lines[2:4]) == [f"600 {uid} {pooler.CONFIG_DIR}/pgbouncer.ini",
                                  f"600 {uid} {pooler.CONFIG_DIR}/userlist.txt"]
    assert password not in out and "pgbouncer.ini" in lines[4]
    assert pooler.PASSWORD_VAR not in lines[5:]
    inspect = session_remote.run(["docker", "inspect", "-f", "{{json .Config.Entrypoint}} {{json .Config.Cmd}}",
                                  cid]).stdout
    assert "pgbouncer" in inspect and password not in inspect


def test_200_participants_at_once_through_caddy_with_0_errors(updated, session_remote, testbed):
    result = drive(testbed, session_remote, APP, dallinger_visit, n=200)
    print(f"\ndallinger-hello through its pooler: {result.describe()}")
    assert result.errors == [], result.errors[:5]
    assert {status for (_, status) in result.statuses} == {200}, result.statuses
    assert len(result.answers) == 200 * 6
    assert result.samples >= 3
    # The pooler's budget holds: never more than its pool, within the role's limit and the server's.
    assert result.pooled_only
    assert 1 <= result.peak_app <= pooler.pool_size(result.role_limit) < result.role_limit
    assert result.peak_total < result.max_connections
    logs = monitor.logs(APP, session_remote, "web", tail="all")
    assert not logs["line"].str.contains("too many connections", case=False).any()


def test_the_pooler_can_be_turned_off_and_that_choice_is_kept(old_app, updated, session_remote, testbed):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(old_app["home"]))
        off = deploy.update(EXAMPLE, APP, session_remote, pooler=False, start_timeout=180)
        again = deploy.update(EXAMPLE, APP, session_remote, start_timeout=180)
    assert off.remembered["pooler"] == {"value": False, "from": "given"}
    assert again.remembered["pooler"] == {"value": False, "from": "app"}
    doc = compose_of(session_remote)
    assert "pgbouncer" not in doc["services"] and doc["services"]["web"]["labels"][pooler.LABEL] == "off"
    assert secrets_of(session_remote)["DATABASE_URL"].split("@", 1)[1] == f"postgresql:5432/{ROLE}"
    running = session_remote.run(["docker", "ps", "--filter", f"label=labdeploy.app={APP}", "--format",
                                  '{{.Label "labdeploy.service"}}']).stdout.split()
    assert "pgbouncer" not in running
    assert one_visit(testbed, 1002) == [200] * 6
    rows = psql.query_df(session_remote, "SELECT count(*) AS n FROM participant", database=ROLE)
    assert int(rows["n"][0]) == 1 + 1 + 200 + 1  # nothing lost: each visit before, during and after the load
