"""The per-app pooler's pure builders (labdeploy.pooler) and how the compose file, the
database URL and the connection view use them. No server needed."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from labdeploy.app import appcompose
from labdeploy.server import pooler
from labdeploy.server import database, stack
from labdeploy.cli import remedies as cli_remedies
from labdeploy.watch import pgactivity
from labdeploy.errors import CommandFailed, ValidationError

PASSWORD = "Zx9-abc_DEF012345678901234567890"  # database.random_password()'s alphabet


def doc(**kw):
    kw.setdefault("processes", ("web", "worker", "clock"))
    return appcompose.app_compose_document("hello", "reg.example.org/lab/hello:abc", version="v1", **kw)


def test_pool_size_leaves_headroom_within_the_role_limit():
    assert pooler.pool_size(database.DEFAULT_CONNECTION_LIMIT) == 16
    for limit in (2, 3, 5, 10, 20, 50, 100, 1000):
        size = pooler.pool_size(limit)
        assert 1 <= size < limit and limit - size <= 10
    with pytest.raises(ValidationError):
        pooler.pool_size(1)


def test_ini_pools_transactions_for_the_apps_own_database_without_a_secret():
    ini = pooler.ini("hello", 20)
    lines = set(ini.splitlines())
    assert "app_hello = host=postgresql port=5432 dbname=app_hello application_name=pgbouncer" in lines
    for line in ("pool_mode = transaction", "default_pool_size = 16", "max_db_connections = 16",
                 "max_user_connections = 16", "reserve_pool_size = 0", "max_client_conn = 4000",
                 "auth_type = scram-sha-256", f"auth_file = {pooler.CONFIG_DIR}/userlist.txt",
                 "listen_port = 6432", "unix_socket_dir =", "client_idle_timeout = 0"):
        assert line in lines, line
    assert not [line for line in ini.splitlines() if line != line.rstrip()]  # no trailing blanks
    assert "password" not in ini.lower()


def run_start_script(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    """The real start script under a real sh, with the tmpfs replaced by a folder and a
    stand-in `pgbouncer` that reports what it found."""
    conf = tmp_path / "conf"
    conf.mkdir(mode=0o777)
    conf.chmod(0o777)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "pgbouncer"
    fake.write_text('#!/bin/sh\nprintf "args=%s\\n" "$*"; env | grep -c LABDEPLOY_POOLER_PASSWORD || true\n'
                    'stat -c "%a %n" "$(dirname "$1")"/*\n')
    fake.chmod(0o755)
    script = pooler.start_script("hello", 20).replace(pooler.CONFIG_DIR, str(conf))
    return subprocess.run(["sh", "-c", script, "labdeploy-pooler"], capture_output=True, text=True,
                          env={"PATH": f"{bindir}:/usr/bin:/bin", **env}, umask=0o022)


def test_start_script_writes_a_private_config_and_execs_pgbouncer(tmp_path):
    res = run_start_script(tmp_path, {pooler.PASSWORD_VAR: PASSWORD})
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0] == f"args={tmp_path}/conf/pgbouncer.ini"
    assert out[1] == "0"  # the password left the environment before pgbouncer started
    assert sorted(out[2:]) == [f"600 {tmp_path}/conf/pgbouncer.ini", f"600 {tmp_path}/conf/userlist.txt"]
    assert (tmp_path / "conf" / "userlist.txt").read_text() == f'"app_hello" "{PASSWORD}"\n'
    assert (tmp_path / "conf" / "pgbouncer.ini").read_text() == \
        pooler.ini("hello", 20).replace(pooler.CONFIG_DIR, str(tmp_path / "conf"))
    assert PASSWORD not in pooler.start_script("hello", 20)


@pytest.mark.parametrize("value", ["", 'a"b', "pw with space", "x$(id)"])
def test_start_script_refuses_a_missing_or_odd_password(tmp_path, value):
    res = run_start_script(tmp_path, {pooler.PASSWORD_VAR: value} if value else {})
    assert res.returncode == 78 and "pooler.env" in res.stderr
    assert not (tmp_path / "conf" / "userlist.txt").exists()


def test_env_file_holds_only_the_password_and_refuses_what_it_cant_hold():
    assert pooler.env_file(PASSWORD) == f"{pooler.PASSWORD_VAR}={PASSWORD}\n"
    for bad in ("", "short", 'quote"d', "new\nline", "dollar$sign"):
        with pytest.raises(ValidationError):
            pooler.env_file(bad)


def test_compose_document_with_the_pooler():
    d = doc(pooler_image="ghcr.io/cloudnative-pg/pgbouncer:1.25.2", connection_limit=20)
    text = appcompose.app_compose_yaml(d)
    assert yaml.safe_load(text) == d
    s = d["services"]
    pgb = s["pgbouncer"]
    assert pgb["image"] == "ghcr.io/cloudnative-pg/pgbouncer:1.25.2"
    assert pgb["env_file"] == [pooler.ENV_FILE] and "environment" not in pgb
    aliases = {"aliases": ["hello-pgbouncer"]}
    assert pgb["networks"] == {"default": aliases, "dallinger": aliases}
    assert pgb["labels"] == {"labdeploy.app": "hello", "labdeploy.service": "pgbouncer"}  # no version: updates keep it
    assert pgb["read_only"] is True and pgb["tmpfs"] == [f"{pooler.CONFIG_DIR}:mode=1777,size=1m"]
    assert pgb["stop_signal"] == "SIGINT"
    # Compose turns `$$` into `$`: the container runs exactly the start script.
    assert pgb["entrypoint"][:2] == ["sh", "-c"]
    assert pgb["entrypoint"][2].replace("$$", "$") == pooler.start_script("hello", 20)
    for name in ("web", "worker", "clock"):
        svc = s[name]
        assert svc["depends_on"]["pgbouncer"] == {"condition": "service_started"}
        assert svc["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert pooler.python_volume() in svc["volumes"]
        script = svc["command"][2].replace("$$", "$")
        assert script == pooler.process_command(appcompose.DALLINGER_COMMANDS[name])
        assert script.startswith(f"PYTHONPATH={pooler.PYTHON_MOUNT}${{PYTHONPATH:+:$PYTHONPATH}} exec ")
    assert s["web"]["labels"][pooler.LABEL] == "on"
    assert "&id" not in text and "*id" not in text  # readable: no YAML anchors
    assert pooler.in_compose(text) == {"enabled": True, "image": "ghcr.io/cloudnative-pg/pgbouncer:1.25.2"}


def test_compose_document_without_the_pooler_is_as_before_and_records_the_choice():
    d = doc()
    assert "pgbouncer" not in d["services"]
    assert d["services"]["web"]["labels"][pooler.LABEL] == "off"
    assert d["services"]["web"]["command"] == ["sh", "-c", "exec dallinger_heroku_web"]
    assert all(len(d["services"][n]["volumes"]) == 1 for n in ("web", "worker", "clock"))
    assert "pgbouncer" not in d["services"]["web"]["depends_on"]
    assert pooler.in_compose(appcompose.app_compose_yaml(d)) == {"enabled": False, "image": None}


def test_every_app_reaches_its_own_pooler_by_a_name_of_its_own():
    a, b = doc(pooler_image="x/pgb:1"), appcompose.app_compose_document("other", "x/o:1", version="v",
                                                                    pooler_image="x/pgb:1")
    alias_a = a["services"]["pgbouncer"]["networks"]["dallinger"]["aliases"]
    alias_b = b["services"]["pgbouncer"]["networks"]["dallinger"]["aliases"]
    assert alias_a == ["hello-pgbouncer"] and alias_b == ["other-pgbouncer"]
    assert database.database_url("hello", PASSWORD, pooler=True) == \
        f"postgresql://app_hello:{PASSWORD}@hello-pgbouncer:6432/app_hello"
    assert database.database_url("hello", PASSWORD) == f"postgresql://app_hello:{PASSWORD}@postgresql:5432/app_hello"
    with pytest.raises(ValidationError):
        doc(pooler_image="bad image name")


def test_the_choice_given_then_the_apps_then_by_kind():
    assert pooler.choose(None, None, dallinger_app=True) == (True, "default")
    assert pooler.choose(None, None, dallinger_app=False) == (False, "default")
    assert pooler.choose(None, False, dallinger_app=True) == (False, "app")
    assert pooler.choose(None, True, dallinger_app=False) == (True, "app")
    assert pooler.choose(False, True, dallinger_app=True) == (False, "given")
    assert pooler.choose(True, None, dallinger_app=False) == (True, "given")
    old = yaml.safe_dump({"services": {"web": {"labels": {"labdeploy.app": "hello"}}}})
    assert pooler.in_compose(old) == {"enabled": None, "image": None}  # written before the pooler existed
    for broken in (None, "", "[", "services: 3", "- a"):
        assert pooler.in_compose(broken) == {"enabled": None, "image": None}


def test_processes_started_before_a_replaced_pooler_are_stale():
    out = ("web 2026-11-30T09:56:45.123456789Z\npgbouncer 2026-11-30T09:56:50.706000001Z\n"
           "worker 2026-11-30T09:56:50.706000002Z\nredis 2026-11-30T09:00:00Z\nclock garbage\n")
    assert pooler.stale_processes(out, ("web", "worker", "clock")) == ["web"]
    assert pooler.stale_processes("web 2026-11-30T09:56:45Z\n", ("web",)) == []  # no pooler: nothing to do
    assert pooler.started_argv("hello")[-1] == "label=labdeploy.app=hello"


def test_an_image_the_server_cant_get_is_named_with_the_setting_to_change():
    exc = CommandFailed("compose failed", stderr="Pulling pgbouncer (ghcr.io/cloudnative-pg/pgbouncer:1.25.2)...\n"
                                               "ERROR: Get \"https://ghcr.io/v2/\": dial tcp: lookup ghcr.io: "
                                               "no such host")
    err = pooler.image_failure(exc, {"value": "ghcr.io/cloudnative-pg/pgbouncer:1.25.2", "from": "default"})
    assert err is not None and "ghcr.io/cloudnative-pg/pgbouncer:1.25.2" in err.message
    assert "labdeploy's default" in err.message and "pgbouncer_image" in err.hint and "pooler=False" in err.hint
    assert "--pgbouncer-image" in cli_remedies.hint(err) and "--no-pooler" in cli_remedies.hint(err)  # CLI words
    other = CommandFailed("compose failed", stderr="ERROR: for web  Cannot start service web: oops")
    assert pooler.image_failure(other, {"value": "ghcr.io/cloudnative-pg/pgbouncer:1.25.2", "from": "server"}) is None


def test_the_stack_setting():
    assert stack.StackSettings().pgbouncer_image == ""
    assert stack.StackSettings.for_images({"pgbouncer": "lab/pgb:1"}).pgbouncer_image == "lab/pgb:1"
    stack.StackSettings(pgbouncer_image="registry.example.org/pgbouncer:1.25").validate()
    with pytest.raises(ValidationError):
        stack.StackSettings(pgbouncer_image="pgbouncer; rm -rf /").validate()
    assert stack.StackSettings.from_dict({"pgbouncer_image": "x/y:1", "unknown": 1}).pgbouncer_image == "x/y:1"


def test_the_sitecustomize_compiles():
    compile(pooler.SITECUSTOMIZE, "sitecustomize.py", "exec")


T0, T1 = "2026-11-28 07:00:00+00", "2026-11-28 07:00:01+00"
SNAP = f"""labdeploy-section:activity
pid,user,database,client_address,application_name,backend_start,state,state_change,query_start,wait_event_type,query
{chr(10).join(f"{10 + i},app_pooled,app_pooled,10.213.0.9,pgbouncer,{T0},idle,{T1},{T1},,COMMIT" for i in range(16))}
40,app_direct,app_direct,10.213.0.7,,{T0},active,{T1},{T1},,select 1
41,app_direct,app_direct,10.213.0.7,,{T0},idle,{T1},{T1},,select 1
labdeploy-section:settings
now,max_connections,reserved
2026-11-28 07:00:10+00,100,3
labdeploy-section:roles
role,role_limit
app_pooled,20
app_direct,2
labdeploy-section:databases
database
postgres
app_pooled
app_direct
"""


def test_the_connection_view_with_a_pooler():
    snap = pgactivity.parse_snapshot(SNAP)
    summ = snap.summary().set_index("app")
    assert list(snap.summary().columns) == pgactivity.SUMMARY_COLUMNS
    assert summ.loc["pooled", "via_pooler"] == 16 and summ.loc["pooled", "connections"] == 16
    assert summ.loc["direct", "via_pooler"] == 0
    by_app = {w.apps: w for w in snap.warnings(0.8) if w.kind == "app"}
    pooled, direct = by_app[("pooled",)], by_app[("direct",)]
    assert "all through its pooler (at most 16 at a time)" in pooled.message and "wait" in pooled.message
    assert "Nothing needs restarting" in pooled.hint and "--connection-limit" in pooled.hint
    assert "at its limit" in direct.message
    assert "`labdeploy restart --app direct`" in direct.hint and "monitor.restart('direct', server)" in direct.hint


def test_the_start_script_file_modes_do_not_depend_on_the_callers_umask(tmp_path):
    # The script sets umask 077 itself: run it from a permissive umask.
    old = os.umask(0)
    try:
        res = run_start_script(tmp_path, {pooler.PASSWORD_VAR: PASSWORD})
    finally:
        os.umask(old)
    assert res.returncode == 0, res.stderr
    mode = stat.S_IMODE((tmp_path / "conf" / "userlist.txt").stat().st_mode)
    assert mode == 0o600


def test_the_backup_services_connections_are_counted_apart_from_the_apps():
    import pandas as pd

    from labdeploy.server import layout

    act = pd.DataFrame({"pid": [1, 2, 3, 4], "user": ["app_a", "app_a", "dallinger", "dallinger"],
                        "database": ["app_a"] * 4,
                        "application_name": ["pgbouncer", "pgbouncer", layout.BACKUP_APPLICATION_NAME,
                                             layout.BACKUP_APPLICATION_NAME],
                        "state": ["idle", "active", "active", "idle in transaction"]})
    snap = pgactivity.Snapshot(time=pd.Timestamp.now(tz="UTC"), activity=act, max_connections=100, reserved=3,
                               roles=pd.DataFrame({"role": ["app_a"], "role_limit": [2]}), databases=["app_a"])
    row = snap.summary().set_index("database").loc["app_a"]
    assert (row["connections"], row["via_pooler"], row["maintenance"], row["pct_of_role_limit"]) == (4, 2, 2, 100.0)
    mine = [w for w in pgactivity.connection_warnings(snap, 0.8) if w.kind == "app"]
    assert mine and "uses 2 of its 2" in mine[0].message and mine[0].used == 2  # the app's own two, not the backup's
