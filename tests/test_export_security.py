"""Issue 14, "data out", against the testbed's real PostgreSQL and sshd: query() only reads,
psql.query_df runs one plain statement, hostile table and file names stay inside their
folder, and what is written locally is private (0600 files, 0700 folders)."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from labdeploy.app import appcompose
from labdeploy.server import database, layout, psql, stack
from labdeploy import export
from labdeploy.errors import ValidationError
from labdeploy.progress import Collector, StepStarted, WarningEvent

# One server: what is checked is SQL, SSH and local files, the same on both engines: proved on the
# current one.
pytestmark = pytest.mark.servers("trixie")

APP = f"t-sec-{secrets.token_hex(3)}"
IDENT = database.names.db_identifier(APP)


def make_app(remote, app: str, schema: str) -> str:
    """A database, role and 0600 secrets.env as deploy makes them (tables made as the app's role)."""
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


def superuser_count(remote, sql: str, db: str = IDENT) -> int:
    return int(psql.run_sql(remote, "\\set QUIET on\n\\pset tuples_only on\n\\pset format unaligned\n" + sql, db).strip())


@pytest.fixture(scope="module")
def app(session_remote, testbed):
    stack.prepare(session_remote, stack.StackSettings.for_images(testbed["images"], domain="localhost"))
    drop_app(session_remote, APP)
    password = make_app(session_remote, APP, """
        CREATE TABLE participant (id serial PRIMARY KEY, worker_id text NOT NULL, at timestamptz);
        INSERT INTO participant (worker_id, at) VALUES ('W-1', '2024-01-02 03:04:05+02'), ('W-2', NULL),
                                                       ('W-3', now());
        CREATE TABLE victim (id int);
        INSERT INTO victim VALUES (1);
    """)
    yield password
    drop_app(session_remote, APP)


# ---------------------------------------------------------------------------- item 3: query() only reads


HOSTILE_QUERIES = [
    "select 1 as x; commit; delete from participant where id = 1; select 1 as x",
    "select 1 as x; commit; drop table victim; select 1 as x",
    "select 1 as x; commit; set session characteristics as transaction read write; "
    "delete from participant where id = 1; select 1 as x",
]


@pytest.mark.parametrize("sql", HOSTILE_QUERIES)
def test_query_runs_one_statement_and_nothing_after_a_commit(app, session_remote, sql):
    with pytest.raises(ValidationError) as err:
        export.query(APP, session_remote, sql)
    assert "one" in err.value.message and err.value.hint
    assert superuser_count(session_remote, "SELECT count(*) FROM participant WHERE id = 1;") == 1
    assert superuser_count(session_remote, "SELECT count(*) FROM victim;") == 1  # the table is still there


def test_query_reads_as_a_role_that_can_only_read(app, session_remote):
    who = export.query(APP, session_remote, "SELECT current_user AS u, current_setting('transaction_read_only') AS ro")
    assert who["u"][0] == database.reader_role(APP) and who["ro"][0] == "on"
    ro = database.reader_role(APP)
    checks = ("SELECT count(*) FROM pg_roles WHERE rolname = '{ro}' AND NOT rolsuper AND NOT rolcreaterole "
              "AND NOT rolcreatedb AND NOT rolbypassrls;\n"
              "SELECT count(*) FROM (VALUES ('participant'), ('victim')) t(n) WHERE has_table_privilege('{ro}', n, "
              "'SELECT') AND NOT has_table_privilege('{ro}', n, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, "
              "TRIGGER');\n"
              "SELECT count(*) FROM pg_roles r WHERE r.rolname = '{ro}' AND pg_has_role('{ro}', '{app}', 'USAGE');\n"
              "SELECT count(*) FROM pg_namespace WHERE nspname = 'public' AND has_schema_privilege('{ro}', oid, "
              "'CREATE');\n").format(ro=ro, app=IDENT)
    out = psql.run_sql(session_remote, "\\set QUIET on\n\\pset tuples_only on\n\\pset format unaligned\n" + checks, IDENT).split()
    assert out == ["1", "2", "0", "0"]
    # A single statement that ends the read-only transaction, then one that writes: both refused
    # or harmless, and the role itself could not have written anyway.
    with pytest.raises(ValidationError):
        export.query(APP, session_remote, "DELETE FROM participant")
    with pytest.raises(ValidationError):
        export.query(APP, session_remote, "commit")
    assert superuser_count(session_remote, "SELECT count(*) FROM participant;") == 3


def test_query_sees_tables_the_app_creates_later_and_binds_parameters(app, session_remote):
    psql.run_sql(session_remote, f"SET ROLE {IDENT};\nCREATE SCHEMA IF NOT EXISTS later;\n"
                                 "CREATE TABLE later.made_after (id int, note text);\n"
                                 "INSERT INTO later.made_after VALUES (1, '100%'), (2, 'x');", IDENT)
    df = export.query(APP, session_remote, "SELECT id, note, note LIKE '%\\%' AS pct FROM later.made_after "
                                           "WHERE id >= :n ORDER BY id", {"n": 1})
    assert df["note"].tolist() == ["100%", "x"] and df["pct"].tolist() == [True, False]
    p = export.query(APP, session_remote, "SELECT id, worker_id, at FROM participant ORDER BY id")
    assert str(p["at"].dt.tz) == "UTC" and p["at"][0] == pd.Timestamp("2024-01-02 01:04:05", tz="UTC")
    assert pd.isna(p["at"][1])
    empty = export.query(APP, session_remote, "SELECT id, worker_id FROM participant WHERE false")
    assert list(empty.columns) == ["id", "worker_id"] and len(empty) == 0
    with pytest.raises(ValidationError) as err:  # refused before anything is sent
        export.query(APP, None, "SELECT * FROM participant WHERE id = :id")
    assert ":id" in err.value.message


def test_destroy_removes_the_read_only_role_too(session_remote):
    app = f"t-sec-d{secrets.token_hex(2)}"
    make_app(session_remote, app, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    try:
        assert export.query(app, session_remote, "SELECT count(*) AS n FROM t")["n"][0] == 1
    finally:
        drop_app(session_remote, app)
    assert superuser_count(session_remote, f"SELECT count(*) FROM pg_roles WHERE rolname IN "
                                           f"('{database.reader_role(app)}', '{database.names.db_identifier(app)}');",
                           "dallinger") == 0


# ---------------------------------------------------------------------------- item 3: psql.query_df


def container_has(remote, path: str) -> bool:
    return remote.run(["docker", "exec", layout.POSTGRES_CONTAINER, "test", "-e", path], check=False).exit_status == 0


@pytest.mark.parametrize("sql", [
    "select 1 as x; drop table victim; select 1 as x",
    "select 1 as x) AS labdeploy_q; drop table victim; select * from (select 1 as x",
    "select 1 as x \\! touch /tmp/{marker}",
    "\\! touch /tmp/{marker}",
    "select 1 as x \\g \\! touch /tmp/{marker}",
])
def test_query_df_refuses_several_statements_and_backslash_commands_before_sending(app, session_remote, sql):
    marker = f"labdeploy-sec-{secrets.token_hex(4)}"
    before = session_remote.stats["commands"]
    with pytest.raises(ValidationError) as err:
        psql.query_df(session_remote, sql.format(marker=marker), IDENT)
    assert err.value.hint and session_remote.stats["commands"] == before  # nothing was sent
    assert superuser_count(session_remote, "SELECT count(*) FROM victim;") == 1
    assert not container_has(session_remote, f"/tmp/{marker}")


def test_query_df_still_answers_labdeploys_own_queries(app, session_remote):
    assert psql.query_df(session_remote, database.exists_sql(APP))["count"][0] == 1  # apps.py's check
    tables = set(psql.query_df(session_remote, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                               database=IDENT)["tablename"])
    assert {"participant", "victim"} <= tables
    # A statement that would write finds a read-only transaction.
    with pytest.raises(psql.SQLError) as err:
        psql.query_df(session_remote, "SELECT nextval('participant_id_seq') AS n", IDENT)
    assert "read-only" in err.value.message


# ---------------------------------------------------------------------------- item 4: hostile table names


@pytest.fixture
def outside():
    """A short folder of its own (absolute table names must fit in 63 bytes) that nothing may
    be written into."""
    d = Path(tempfile.mkdtemp(prefix="ldsec", dir="/tmp"))
    (d / "elsewhere").mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def hostile_names(outside: Path) -> list[str]:
    return ["../../../../elsewhere/rel", "/elsewhere/abs", f"{outside}/elsewhere/abs", "Participant",
            "participant", "PARTICIPANT", "ünïcödé 表", "e\u0301", "\u00e9", "x" * 63, "tab\there",
            "new\nline", "nul", "CON", ".hidden", "..", ".", "trailing.", "a%41", "~tilde", "back\\slash",
            "quo'te\"d", "\x01ctl\x7f", "labdeploy", "experiment_id"]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def all_files(root: Path) -> set:
    return {p for p in root.rglob("*")}


def test_hostile_table_names_stay_inside_the_folder_and_round_trip(session_remote, outside, tmp_path, home):
    app = f"t-sec-n{secrets.token_hex(2)}"
    names_ = hostile_names(outside)
    schema = "".join(f"CREATE TABLE {quote_ident(n)} (id int, name text);\n"
                     f"INSERT INTO {quote_ident(n)} VALUES ({i}, {psql_literal(n)});\n" for i, n in enumerate(names_))
    schema += ('CREATE SCHEMA "../s";\nCREATE TABLE "../s"."../t" (id int);\nINSERT INTO "../s"."../t" VALUES (7);\n'
               f'CREATE SCHEMA {quote_ident("y" * 63)};\nCREATE TABLE {quote_ident("y" * 63)}.{quote_ident("Z" * 63)} '
               "(id int);\n")
    make_app(session_remote, app, schema)
    save = tmp_path / "save"
    deep = save / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (save / "a" / "b" / "c" / "elsewhere").mkdir()  # where "../../../../elsewhere" led from the Parquet folder
    allowed = {deep / "out", *[p for p in (deep / "out").parents if save in p.parents],
               save / "a" / "b" / "c" / "elsewhere"}
    before_outside = all_files(outside)
    expected = set(names_) | {"../s.../t", f"{'y' * 63}.{'Z' * 63}"}
    try:
        data = export.export(app, session_remote, save_to=deep / "out", parquet=True)
        # Names with a tab or a newline are read back whole by the other catalog readers too.
        counts = export.table_counts(app, session_remote)
        assert dict(zip(counts["table"], counts["rows"])) == {**{n: 1 for n in names_}, "../s.../t": 1,
                                                              f"{'y' * 63}.{'Z' * 63}": 0}
        assert export.check_destroy(app, session_remote)["app"] == app  # nothing written since the export
    finally:
        drop_app(session_remote, app)
    assert set(data) == expected
    # Nothing outside the save folder: not next to it, not above it, not in /tmp/<outside>.
    assert all_files(outside) == before_outside
    assert [p for p in all_files(save) if p not in allowed and deep / "out" not in p.parents] == []
    assert not Path("/elsewhere").exists()
    zip_path = next(Path(p) for p in data.paths if p.endswith(".zip"))
    parquet = next(Path(p) for p in data.paths if p.endswith("-parquet"))
    with zipfile.ZipFile(zip_path) as zf:
        for member in zf.namelist():
            assert not member.startswith("/") and ".." not in member.split("/") and "\\" not in member, member
            assert member in ("labdeploy.json", "experiment_id.md") or member.startswith("data/"), member
        stems = [m[len("data/"):-len(".csv")] for m in zf.namelist() if m.startswith("data/")]
    assert len(stems) == len(expected) and len({s.lower() for s in stems}) == len(stems)
    for f in parquet.iterdir():
        assert f.parent == parquet and not f.is_symlink() and len(f.name.encode()) <= 200
    # load_export reads back exactly what was saved, from the zip and from the Parquet folder.
    for saved in (zip_path, parquet):
        back = export.load_export(saved)
        assert set(back) == expected, saved
        for table in names_:
            pd.testing.assert_frame_equal(back[table], data[table], obj=repr(table))
            assert back[table]["name"].tolist() == [table]
        assert export.load_export(saved, tables=["../s.../t"])["../s.../t"]["id"].tolist() == [7]


def psql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---------------------------------------------------------------------------- item 4 and 11: files


def test_download_files_never_follows_links_or_leaves_dest(app, session_remote, tmp_path):
    root = layout.app_data(APP)
    home_dir = session_remote.home
    session_remote.run(["sh", "-c", " && ".join([
        f"mkdir -p {root}/assets/sub {root}/z",
        f"printf logo > {root}/assets/logo.txt",
        f"printf dots > {root}/assets/..dots",
        f"printf twodots > {root}/assets/a..b",
        f"printf 'nl' > '{root}/assets/new\nline'",
        f"printf sub > {root}/assets/sub/inner.txt",
        f"printf decoy > {root}/z/secrets.env",
        f"ln -s {home_dir}/{layout.app_secrets(APP)} {root}/assets/secret-link",
        f"ln -s {home_dir}/{layout.app_dir(APP)} {root}/assets/dir-link",
        f"ln -s /etc/passwd {root}/assets/passwd-link",
        f"ln -s ../../../../elsewhere {root}/assets/up",
    ])])
    secret = session_remote.get_bytes(layout.app_secrets(APP))
    password = secret.split(b":")[2].split(b"@")[0]

    def swap(event) -> None:
        # After the listing, before any file travels: z becomes a link to the app's folder on
        # the server (which holds the real secrets.env), as an app could do at any moment.
        if isinstance(event, StepStarted) and event.step == "Download files":
            session_remote.run(["sh", "-c", f"rm -rf {root}/z && ln -s {home_dir}/{layout.app_dir(APP)} {root}/z"])

    events = Collector()

    def report(event) -> None:
        events(event)
        swap(event)

    old = os.umask(0o022)
    try:
        dest = tmp_path / "dl" / "files"
        written = export.download_files(APP, session_remote, dest, reporter=report)
    finally:
        os.umask(old)
    warned = sorted(w.message.split("'")[1] for w in events.of(WarningEvent))
    assert warned == ["assets/dir-link", "assets/passwd-link", "assets/secret-link", "assets/up", "z"]
    got = sorted(p.relative_to(dest).as_posix() for p in written)
    assert got == ["assets/..dots", "assets/a..b", "assets/logo.txt", "assets/new\nline", "assets/sub/inner.txt"]
    for p in all_files(tmp_path):
        assert dest in p.parents or p in (dest, dest.parent), p
        assert not p.is_symlink(), p
        if p.is_file():
            assert password not in p.read_bytes() and b"root:" not in p.read_bytes(), p
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        else:
            assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    assert (dest / "assets" / "new\nline").read_bytes() == b"nl"


def test_download_logs_is_private(app, session_remote, tmp_path, testbed):
    session_remote.put_bytes(layout.app_compose(APP), (
        f"services:\n  web:\n    image: {testbed['images']['base']}\n    command: ['true']\n").encode())
    old = os.umask(0o022)
    try:
        path = export.download_logs(APP, session_remote, tmp_path / "logs")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_export_files_are_private_under_a_permissive_umask(app, session_remote, tmp_path, home):
    old = os.umask(0o022)
    try:
        data = export.export(APP, session_remote, mode="both", save_to=tmp_path / "exports" / "new", parquet=True)
    finally:
        os.umask(old)
    made = [tmp_path / "exports", tmp_path / "exports" / "new"]
    records = export._records_file()
    for folder in made + [records.parent]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    files = [Path(p) for p in data.paths if p.endswith(".zip")] + [records]
    for folder in (Path(p) for p in data.paths if p.endswith("-parquet")):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        files += list(folder.iterdir())
    assert len(files) > 4
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
