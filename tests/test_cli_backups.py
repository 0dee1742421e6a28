"""`labdeploy backup`, `backups`, `backup pull|verify|schedule` and `restore` as a researcher
types them, against the testbed (a database without an app, so no image is built)."""

from __future__ import annotations

import stat

import pytest

from labdeploy.server import psql
from deploy_support import drop_data_only
from test_cli_support import CLI

APP = "t-cli-bk"
COPY = "t-cli-bk-restore"


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> CLI:
    return CLI(tmp_path_factory.mktemp("cli-bk-home"))


def _drop(remote) -> None:
    drop_data_only(remote, APP, COPY)


@pytest.fixture(scope="module")
def server(cli, testbed, session_remote):
    s, im = testbed["ssh"], testbed["images"]
    cli.ok("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"],
           "--trust-host-key", s["host_key_fingerprint"])
    cli.ok("servers", "prepare", "--postgres-image", im["postgres"], "--caddy-image", im["caddy"], "--domain", "localhost")
    _drop(session_remote)
    psql.run_sql(session_remote, "CREATE DATABASE app_t_cli_bk;\n")
    psql.run_sql(session_remote, "CREATE TABLE answers AS SELECT g AS id, 'w' || g AS worker "
                                 "FROM generate_series(1, 40) g;\n", database="app_t_cli_bk")
    yield session_remote
    _drop(session_remote)


def test_backup_list_pull_verify_and_restore_from_a_terminal(cli, server, tmp_path):
    made = cli.ok("backup", "--app", APP, "--json").json()
    assert made["rows"] == {"answers": 40} and made["kind"] == "manual"
    listed = cli.ok("backups", "--app", APP, "--json").json()
    assert [b["id"] for b in listed] == [made["id"]] and listed[0]["checksum_ok"] is True
    table = cli.ok("backups", "--app", APP)
    assert made["id"] in table.out and "checksum_ok" in table.out
    pulled = cli.ok("backup", "pull", "--app", APP, "--to", tmp_path / "copies", "--json").json()
    assert [p["pulled"] for p in pulled] == [True]
    assert stat.S_IMODE((tmp_path / "copies" / APP / f"{made['id']}.manual.dump").stat().st_mode) == 0o600
    again = cli.ok("backup", "pull", "--app", APP, "--to", tmp_path / "copies")
    assert "0 new backup(s)" in again.err + again.out
    assert "restores" in cli.ok("backup", "verify", "--app", APP).err
    restored = cli.ok("restore", "--app", APP, "--json").json()  # side by side
    assert restored["app"] == COPY and restored["counts"][0]["restored"] == 40
    refused = cli("restore", "--app", APP, "--into", COPY)  # holds data now; no terminal to ask
    assert refused.code == 4 and "Refusing without confirmation" in refused.err and "Traceback" not in refused.err
    dump = tmp_path / "copies" / APP / f"{made['id']}.manual.dump"
    replaced = cli.ok("restore", "--app", APP, "--from", dump, "--into", COPY, "--yes", "--json").json()
    assert replaced["replaced"] is True and replaced["pre_restore_backup"]


def test_bad_input_is_refused_before_anything_runs(cli, server, tmp_path):
    r = cli("backup", "pull", "--to", tmp_path)  # neither --app nor --all
    assert r.code == 2 and "--app NAME or --all" in r.err
    r = cli("backup", "schedule", "--app", APP, "--every", "3m")
    assert r.code == 2 and "out of range" in r.err and "Traceback" not in r.err
    r = cli("restore", "--app", APP, "--from", tmp_path / "notes.txt")
    assert r.code == 2 and "neither a backup" in r.err
    r = cli("backup", "verify", "--app", APP, "--id", "yesterday")
    assert r.code == 2 and "not a backup id" in r.err
    r = cli("destroy", "--app", APP, "--remove-backups", "--yes")
    assert r.code == 2 and "--remove-backups goes with --remove-data" in r.err
    r = cli("backup", "--app", "../etc")
    assert r.code == 2 and "Traceback" not in r.err
