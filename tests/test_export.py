"""Export against the testbed's real PostgreSQL, over real SSH.

The app here is a database, role and secrets.env made the way deploy makes them (so every
column type can be covered without deploying); test_export_e2e.py exports the deployed
example experiment answered through its web page.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
import zipfile

import pandas as pd
import pytest

from labdeploy import errors
from labdeploy.app import appcompose
from labdeploy.server import database, layout, psql
from labdeploy import export
from labdeploy.errors import RemoteError, ValidationError
from labdeploy.progress import Collector, Progress
from labdeploy.remote import Remote
from net_support import relayed_remote

APP = f"t-exp-{secrets.token_hex(3)}"
BIG_ROWS = 200_000

SCHEMA = """
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE TABLE participant (
    id serial PRIMARY KEY, worker_id text NOT NULL, assignment_id varchar(64), unique_id text,
    ip_address inet, user_agent text, creation_time timestamp NOT NULL DEFAULT '2024-05-06 07:08:09.5',
    end_time timestamptz, finished boolean NOT NULL DEFAULT false, passed boolean, base_pay double precision,
    bonus numeric(6,2), trials smallint, big bigint, status mood, details jsonb, raw json, day date,
    blob bytea, tags text[], uid uuid);
CREATE TABLE responses (id serial PRIMARY KEY, participant_id int NOT NULL REFERENCES participant(id),
    answer text NOT NULL, rt_ms double precision NOT NULL, correct boolean NOT NULL,
    rt_s double precision GENERATED ALWAYS AS (rt_ms / 1000) STORED,
    created_at timestamptz NOT NULL DEFAULT now(), extra jsonb);
CREATE TABLE empty_table (id int, note text, doubled int GENERATED ALWAYS AS (id * 2) STORED);
CREATE TABLE big (id bigserial PRIMARY KEY, pair int NOT NULL, payload text NOT NULL);
CREATE TABLE big_mirror (id bigserial PRIMARY KEY, pair int NOT NULL);
CREATE TABLE events (at date NOT NULL, what text, n int GENERATED ALWAYS AS (length(what)) STORED)
    PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO events (at, what) VALUES ('2024-03-01', 'a'), ('2025-03-01', 'bb'), ('2025-04-01', NULL);
INSERT INTO participant (worker_id, assignment_id, unique_id, ip_address, user_agent, end_time, finished, passed,
    base_pay, bonus, trials, big, status, details, raw, day, blob, tags, uid) VALUES
 ('W-ALICE', 'A1', 'W-ALICE:A1', '192.0.2.7', 'Mozilla/5.0', '2024-05-06 10:00:00.123456+02', true, true,
  1.25, 0.50, 3, 9007199254740993, 'calm', '{"lang": "fr", "nested": {"a": [1, 2.5, null]}}', '[1, "x"]',
  '2024-05-06', '\\x00ff10', '{a,"b c"}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
 ('W-BOB', NULL, NULL, NULL, NULL, NULL, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 ('W-ÉMILIE', '', '', NULL, E'multi\\nline "quoted", comma', NULL, false, false, -0.0, 0, -1, -1, 'busy',
  '{"emoji": "🙂", "text": "line1\\nline2"}', 'null', NULL, '\\x', '{}', NULL);
INSERT INTO responses (participant_id, answer, rt_ms, correct, extra) VALUES
 (1, 'red', 512.25, true, '{"key": "r"}'), (1, E'日本語\\n二行目', 733.5, false, NULL), (3, '', 0.1, true, '[]');
INSERT INTO big (pair, payload) SELECT g, repeat('x', 40) || g FROM generate_series(1, %d) g;
INSERT INTO big_mirror (pair) SELECT g FROM generate_series(1, %d) g;
""" % (BIG_ROWS, BIG_ROWS)


def make_app(remote, app: str, schema: str) -> str:
    """A database, role and 0600 secrets.env as deploy makes them; returns the password."""
    password = database.random_password()
    psql.run_sql(remote, database.provision_sql(app, database.scram_verifier(password)))
    remote.makedirs(layout.app_dir(app))
    remote.put_bytes(layout.app_secrets(app), appcompose.secrets_env(
        {"DATABASE_URL": database.database_url(app, password)}), mode=0o600)
    ident = database.names.db_identifier(app)
    psql.run_sql(remote, f"SET ROLE {ident};\n" + schema, ident)
    return password


def drop_app(remote, app: str) -> None:
    psql.run_sql(remote, database.drop_sql(app))
    remote.run(["rm", "-rf", "--", layout.app_dir(app), layout.app_data(app)])


@pytest.fixture(scope="module")
def app(session_remote):
    make_app(session_remote, APP, SCHEMA)
    yield APP
    drop_app(session_remote, APP)


@pytest.fixture(scope="module")
def exported(app, session_remote):
    return export.export(app, session_remote, mode="both")


def test_every_table_with_types_nulls_unicode_and_newlines(exported):
    data = exported
    assert list(data) == ["big", "big_mirror", "empty_table", "events", "participant", "responses"]  # all
    # A partitioned table comes whole (its partitions are not listed apart).
    events = data["events"].sort_values("at")
    assert events["what"].iloc[:2].tolist() == ["a", "bb"] and pd.isna(events["what"].iloc[2])
    assert len(data["events"]) == 3 and list(data["events"].columns) == ["at", "what"]
    assert str(data["participant"]["id"].dtype) == "int32"
    p = data["participant"].set_index("id")
    assert p["finished"].dtype == bool and str(p["passed"].dtype) == "boolean"
    assert pd.isna(p.loc[2, "passed"]) and p.loc[3, "passed"] == False  # noqa: E712 - NULL vs false
    assert str(p["trials"].dtype) == "Int16" and str(p["big"].dtype) == "Int64"
    assert p.loc[1, "big"] == 9007199254740993 and pd.isna(p.loc[2, "big"])
    assert p["base_pay"].dtype == "float64" and p.loc[1, "bonus"] == 0.5 and pd.isna(p.loc[2, "base_pay"])
    assert str(p["end_time"].dt.tz) == "UTC"
    assert p.loc[1, "end_time"] == pd.Timestamp("2024-05-06 08:00:00.123456", tz="UTC")
    assert p["creation_time"].dt.tz is None and p.loc[1, "creation_time"] == pd.Timestamp("2024-05-06 07:08:09.5")
    assert p.loc[1, "details"] == {"lang": "fr", "nested": {"a": [1, 2.5, None]}}
    assert p.loc[3, "details"] == {"emoji": "🙂", "text": "line1\nline2"}
    assert p.loc[2, "details"] is None and p.loc[1, "raw"] == [1, "x"]
    assert p.loc[1, "blob"] == b"\x00\xff\x10" and p.loc[3, "blob"] == b"" and p.loc[2, "blob"] is None
    assert p.loc[3, "worker_id"] == "W-ÉMILIE" and p.loc[3, "user_agent"] == 'multi\nline "quoted", comma'
    assert p.loc[3, "assignment_id"] == "" and pd.isna(p.loc[2, "assignment_id"])  # '' is not NULL
    assert p.loc[1, "status"] == "calm" and p.loc[1, "ip_address"] == "192.0.2.7"
    assert p.loc[1, "tags"] == '{a,"b c"}' and p.loc[1, "day"] == pd.Timestamp("2024-05-06")
    r = data["responses"]
    assert r["answer"].tolist() == ["red", "日本語\n二行目", ""] and r["extra"][1] is None
    # COPY leaves generated columns out, so the catalog must too
    assert len(data["empty_table"]) == 0 and list(data["empty_table"].columns) == ["id", "note"]
    assert len(data["big"]) == BIG_ROWS and data["big"]["payload"].iloc[-1].endswith(str(BIG_ROWS))
    assert data.counts == {t: len(f) for t, f in data.items()}
    assert data.snapshot.count(":") == 2 and data.exported_at.tzinfo is not None


def test_anonymous_version_in_the_same_call(exported):
    anon = exported.anonymous
    assert anon.anonymised and anon.anonymised_columns["participant"] == [
        "worker_id", "assignment_id", "unique_id", "ip_address", "user_agent"]
    p, a = exported["participant"], anon["participant"]
    assert not set(a["worker_id"]) & set(p["worker_id"])
    assert a["ip_address"].isna().all() and a["user_agent"].isna().all()
    pd.testing.assert_frame_equal(a.drop(columns=anon.anonymised_columns["participant"]),
                                  p.drop(columns=anon.anonymised_columns["participant"]))
    assert anon["big"] is exported["big"]  # untouched tables are shared, not copied


def test_archive_round_trip_both_versions(exported, tmp_path, home):
    paths = export.save_archives(exported, exported.anonymous, tmp_path, parquet=True)
    regular, anonymous = paths
    assert regular.name.startswith(f"{APP}-") and regular.name.endswith("-data.zip")
    assert anonymous.name.endswith("-anonymous-data.zip")
    back = export.load_export(regular)
    assert list(back) == list(exported)
    for table in exported:
        pd.testing.assert_frame_equal(back[table], exported[table], obj=table)
    anon_back = export.load_export(anonymous)
    assert anon_back.anonymised and "W-ALICE" not in zipfile.ZipFile(anonymous).read("data/participant.csv").decode()
    assert "W-ALICE" in zipfile.ZipFile(regular).read("data/participant.csv").decode()
    pq = export.load_export(regular.with_name(regular.name[:-4] + "-parquet"))
    pd.testing.assert_frame_equal(pq["participant"], exported["participant"])
    assert export.last_export_time(APP) == exported.exported_at  # only the regular one counts


def test_zip_made_the_dallinger_way_loads(app, session_remote, tmp_path):
    # What `dallinger export` does: COPY <table> TO STDOUT WITH CSV HEADER per table, zipped
    # with experiment_id.md.
    path = tmp_path / f"{app}-data.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for table in ("participant", "responses"):
            out = session_remote.run(psql.psql_argv(database.names.db_identifier(app)),
                                     stdin=f"COPY {table} TO STDOUT WITH CSV HEADER".encode()).stdout_bytes
            zf.writestr(f"data/{table}.csv", out)
        zf.writestr("experiment_id.md", app)
    data = export.load_export(path)
    assert data.app == app and len(data["participant"]) == 3 and len(data["responses"]) == 3
    assert data["responses"]["answer"][1] == "日本語\n二行目"
    assert data["participant"]["passed"].isna()[1] and data["participant"]["worker_id"][2] == "W-ÉMILIE"


def test_some_tables_and_progress(app, session_remote):
    events = Collector()
    data = export.export(app, session_remote, tables=["responses", "big"], reporter=events)
    assert list(data) == ["big", "responses"]
    rows = [e for e in events.of(Progress) if e.unit == "rows" and e.item.startswith("big")]
    assert rows[-1].done == rows[-1].total == BIG_ROWS
    assert set(events.steps()) >= {"Read the tables", "Check row counts"}
    with pytest.raises(ValidationError) as err:
        export.export(app, session_remote, tables=["nope"])
    assert "no table 'nope'" in err.value.message and err.value.hint


def test_unknown_app(session_remote):
    with pytest.raises(export.UnknownApp) as err:
        export.export("t-exp-does-not-exist", session_remote)
    assert "t-exp-does-not-exist" in err.value.message and err.value.hint
    with pytest.raises(ValidationError):
        export.export("Bad Name; rm -rf", session_remote)


def test_table_counts(app, session_remote):
    counts = export.table_counts(app, session_remote).set_index("table")["rows"].to_dict()
    assert counts == {"big": BIG_ROWS, "big_mirror": BIG_ROWS, "empty_table": 0, "events": 3, "participant": 3,
                      "responses": 3}


def test_consistent_under_concurrent_writes(app, session_remote):
    # Each writer transaction adds one row to big and one to big_mirror. Exported separately
    # (without one snapshot) the two tables would differ by the rows committed in between.
    ident = database.names.db_identifier(app)
    writes = "".join(f"BEGIN; INSERT INTO big (pair, payload) VALUES ({-i}, 'w'); "
                     f"INSERT INTO big_mirror (pair) VALUES ({-i}); COMMIT; SELECT pg_sleep(0.002);\n"
                     for i in range(1, 1500))
    writer = threading.Thread(target=psql.run_sql, args=(session_remote, writes, ident), daemon=True)
    writer.start()
    try:
        seen = []
        while writer.is_alive() and len(seen) < 3:
            data = export.export(app, session_remote, tables=["big", "big_mirror"])
            assert len(data["big"]) == len(data["big_mirror"])
            assert set(data["big"]["pair"]) == set(data["big_mirror"]["pair"])
            seen.append(len(data["big"]))
    finally:
        writer.join(120)
    assert seen and max(seen) > BIG_ROWS, seen  # the exports really ran while rows were being written
    psql.run_sql(session_remote, "DELETE FROM big WHERE pair < 0; DELETE FROM big_mirror WHERE pair < 0;", ident)


def test_ssh_dropped_mid_export_leaves_no_archive_and_rerun_works(app, testbed, tmp_path, home):
    relay, remote = relayed_remote(testbed, tmp_path)
    out = tmp_path / "exports"

    def drop_when_streaming(event) -> None:
        if isinstance(event, Progress) and event.item.startswith("big,"):
            relay.cut()

    try:
        with pytest.raises(RemoteError) as err:
            export.export(app, remote, save_to=out, reporter=drop_when_streaming, timeout=120)
        assert "dropped" in err.value.message
        assert err.value.hint
        assert not out.exists() or list(out.iterdir()) == []  # nothing under any name, final or temporary
        assert export.last_export_time(app) is None
    finally:
        relay.close()
        remote.close()
    s = testbed["ssh"]
    (tmp_path / "kh2").write_text(s["known_hosts_line"] + "\n")
    with Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=tmp_path / "kh2",
                use_agent=False) as again:
        data = export.export(app, again, save_to=out)
    assert [p.name for p in out.iterdir()] == [os.path.basename(data.paths[0])]
    assert len(export.load_export(data.paths[0])["big"]) == BIG_ROWS


@pytest.fixture
def full_disk(tmp_path):
    """A real 64 KB filesystem (tmpfs), so writing the archive runs out of space for real."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; tests/test_archive_unit.py covers disk-full with RLIMIT_FSIZE")
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_locally(app, session_remote, full_disk, home):
    with pytest.raises(errors.DiskFull) as err:
        export.export(app, session_remote, tables=["big"], save_to=full_disk)
    assert "disk is full" in err.value.message and "Free some space" in err.value.hint
    assert list(full_disk.iterdir()) == []  # nothing half-written, not even the temp file
    assert export.last_export_time(app) is None


def test_query_read_only_as_the_apps_read_only_role(app, session_remote):
    df = export.query(app, session_remote, "SELECT id, worker_id, details FROM participant WHERE id <= :n ORDER BY id",
                      {"n": 2})
    assert df["worker_id"].tolist() == ["W-ALICE", "W-BOB"] and df["details"][0]["lang"] == "fr"
    who = export.query(app, session_remote, "SELECT current_user AS u, current_setting('transaction_read_only') AS ro")
    assert who["u"][0] == database.reader_role(app) and who["ro"][0] == "on"  # the app's read-only role
    with pytest.raises(ValidationError) as err:
        export.query(app, session_remote, "DELETE FROM participant")
    assert "read-only" in err.value.hint
    assert len(export.query(app, session_remote, "SELECT count(*) AS n FROM participant")) == 1
    with pytest.raises(psql.SQLError):
        export.query(app, session_remote, "SELECT * FROM no_such_table")
    with pytest.raises(export.UnknownApp):
        export.query("t-exp-does-not-exist", session_remote, "SELECT 1")
    secrets_text = session_remote.run(["stat", "-c", "%a", layout.app_secrets(app)]).stdout.strip()
    assert secrets_text == "600"


def test_download_files(app, session_remote, tmp_path):
    root = layout.app_data(app)
    session_remote.makedirs(f"{root}/assets/sub")
    session_remote.put_bytes(f"{root}/assets/logo.txt", b"logo")
    session_remote.put_bytes(f"{root}/assets/sub/big.bin", os.urandom(300_000))
    events = Collector()
    files = export.download_files(app, session_remote, tmp_path / "files", reporter=events)
    assert sorted(p.relative_to(tmp_path / "files").as_posix() for p in files) == ["assets/logo.txt",
                                                                                   "assets/sub/big.bin"]
    assert (tmp_path / "files/assets/sub/big.bin").read_bytes() == session_remote.get_bytes(f"{root}/assets/sub/big.bin")
    last = events.of(Progress)[-1]
    assert last.done == last.total == 300_004
    with pytest.raises(export.UnknownApp):
        export.download_files("t-exp-does-not-exist", session_remote, tmp_path / "x")


def test_destroy_check_needs_a_fresh_export(session_remote, tmp_path, home):
    app = f"t-exp-d{secrets.token_hex(2)}"
    make_app(session_remote, app, "CREATE TABLE t (id serial PRIMARY KEY, v text);"
                                  "INSERT INTO t (v) VALUES ('a'), ('b');")
    ident = database.names.db_identifier(app)
    try:
        with pytest.raises(export.ExportRequired) as err:
            export.check_destroy(app, session_remote)
        assert "no saved export" in err.value.message and err.value.hint
        export.export(app, session_remote, save_to=tmp_path)
        assert export.check_destroy(app, session_remote)["app"] == app
        psql.run_sql(session_remote, "UPDATE t SET v = 'changed' WHERE id = 1;", ident)
        with pytest.raises(export.ExportRequired) as err:
            export.check_destroy(app, session_remote)
        assert "t (1 rows written" in err.value.message
        export.export(app, session_remote, save_to=tmp_path)
        export.check_destroy(app, session_remote)
        psql.run_sql(session_remote, "DELETE FROM t WHERE id = 2;", ident)
        with pytest.raises(export.ExportRequired):  # a delete leaves no row behind: the count tells
            export.check_destroy(app, session_remote)
        assert export.check_destroy(app, session_remote, override=True) is None
        export.export(app, session_remote, save_to=tmp_path)
        for p in tmp_path.glob(f"{app}-*-data.zip"):
            p.unlink()  # the archives are gone: no export "exists locally" any more
        with pytest.raises(export.ExportRequired):
            export.check_destroy(app, session_remote)
    finally:
        drop_app(session_remote, app)
    assert export.check_destroy(app, session_remote) is None  # no database left: nothing to lose


def test_panel_anonymous_only_and_errors_shown(app, session_remote, tmp_path, home):
    from labdeploy.widgets.export import ExportPanel

    panel = ExportPanel(session_remote, app=app, folder=str(tmp_path / "out"))
    deadline = time.monotonic() + 60
    while not (panel.app_picker.value == app and panel.tables.options):
        assert time.monotonic() < deadline, "the panel did not list the app's tables"
        time.sleep(0.1)
    assert ("participant (3 rows)", "participant") in panel.tables.options
    panel.tables.value = ("participant", "responses")
    panel.mode.value = "anonymous"
    panel.export_button.click()
    panel.last_task.join(120)
    assert "labdeploy-error" not in panel.message.value, panel.message.value
    assert list(panel.data) == ["participant", "responses"] and panel.data.anonymised
    assert "W-ALICE" not in set(panel.data["participant"]["worker_id"])
    assert [p.endswith("-anonymous-data.zip") for p in panel.paths] == [True]
    assert "data-table='participant' data-rows='3'" in panel.summary.value
    assert [panel.steps.state(s) for s in ("Read the tables", "Check row counts", "Anonymise",
                                           "Write the archive")] == ["done"] * 4
    assert "worker_id" in panel.previews.children[0].value and panel.previews.get_title(0) == "participant"
    (tmp_path / "a-file").write_text("x")
    panel.folder.value = str(tmp_path / "a-file")  # not a folder: the error is shown with its hint
    panel.export_button.click()
    panel.last_task.join(120)
    assert "labdeploy-error" in panel.message.value and "What to do" in panel.message.value
    assert "bug" not in panel.message.value and "a-file" in panel.message.value, panel.message.value
    assert not panel.export_button.disabled  # usable again after the error
    panel.destroy_button.click()  # not confirmed: refused before anything runs
    panel.last_task.join(60)
    assert "confirmation" in panel.message.value and export.database_exists(app, session_remote)


def test_a_registered_server_name_works_and_its_connection_is_closed(app, testbed, home, monkeypatch):
    from labdeploy.ssh import servers

    s = testbed["ssh"]
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "known_hosts").write_text(s["known_hosts_line"] + "\n")
    servers.add("tb", s["host"], s["user"], s["port"], s["key"])
    opened = []
    real_connect = Remote.connect

    def spy(self):
        opened.append(self)
        return real_connect(self)

    monkeypatch.setattr(Remote, "connect", spy)
    assert export.table_counts(app, "tb").set_index("table")["rows"]["participant"] == 3
    assert opened and not any(r.connected for r in opened)  # opened for the call, closed after it
    assert export.last_export_time(app, "tb") is None
