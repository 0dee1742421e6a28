"""Experiment data from the server straight into DataFrames, verified, and onto disk.

* `export(app, server)`: every table of the app's database as DataFrames, streamed with
  `COPY ... TO STDOUT` through `docker exec` over the existing SSH connection (no temporary
  file on the server, no port opened) and parsed while it arrives. One REPEATABLE READ
  transaction covers every table, so the tables are consistent with each other and each
  table's rows are checked against `count(*)` from the same snapshot.
* `save_archive` / `load_export`: Dallinger-compatible zip (and Parquet), see archive.py.
* `query(app, server, sql, params)`: one ad-hoc SQL statement, in a read-only transaction, as
  the app's read-only role (`<db>__ro`), through an SSH tunnel.
* `download_files` / `download_logs`: the app's persistent files and its container logs.
* Files written locally hold participant data: 0600, in folders made 0700 (localfiles).
* `last_export_time` / `check_destroy`: destroy refuses to drop a database whose data has
  no fresh local export.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import pandas as pd

from .data import anonymise as anon
from .data import archive, copystream, pgtypes
from .commands import files, postgres
from .server import layout, psql
from . import localfiles, names
from .ssh import pool
from .data.archive import ExportData, load_export, write_archive, write_parquet  # noqa: F401 (public API)
from .errors import CommandFailed, LabdeployError, Remedy, UnknownApp, ValidationError
from .redaction import redact
from .progress import LogLine, Progress, Reporter, WarningEvent, null_reporter, step

MODES = ("regular", "anonymous", "both")
PROGRESS_EVERY = 0.2  # seconds between progress events while streaming


class ExportVerificationError(LabdeployError):
    """What arrived does not match what the database holds."""

    code = "export.incomplete"


class ExportRequired(LabdeployError):
    """Destroy refused: the app's data has no fresh local export."""

    code = "export.required"


def _remote(server):
    """A connected Remote for a Remote, a Server or a registered server's name (a connection
    opened here is closed when the public function that asked for it returns)."""
    return pool.connect(server)


def _server_key(remote) -> str:
    return f"{remote.host}:{remote.port}"


# ---------------------------------------------------------------------------- apps and tables


@pool.closes_what_it_opens
def list_app_databases(server) -> list[str]:
    """App names that have a database on the server (from `app_<name>` databases)."""
    remote = _remote(server)
    out = psql.run_sql(remote, "\\pset tuples_only on\n\\pset format unaligned\n"
                       "SELECT datname FROM pg_database WHERE datname LIKE 'app\\_%' ORDER BY 1;\n")
    return [line[4:].replace("_", "-") for line in out.split() if line.startswith("app_")]


def _unknown_app(remote, app: str) -> UnknownApp:
    try:
        known = list_app_databases(remote)
    except LabdeployError:
        known = []
    listing = ", ".join(known) if known else "none"
    return UnknownApp(f"There is no app {app!r} on {remote.host}: it has no database "
                      f"{names.db_identifier(app)!r}. Apps with a database there: {listing}.",
                      "Check the app name (and the server); an app that was destroyed has no data left.",
                      code="app.unknown")


@pool.closes_what_it_opens
def table_counts(app: str, server) -> pd.DataFrame:
    """Every table of the app with its exact row count (one consistent snapshot)."""
    remote = _remote(server)
    db = names.db_identifier(app)
    sql = ("\\pset tuples_only on\n\\pset format unaligned\nBEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
           # Names as JSON strings: a table's name may hold a tab or a newline.
           "SELECT format('SELECT %L || chr(9) || count(*) FROM %I.%I', to_json(tl.label)::text, tl.nspname, "
           f"tl.relname) FROM ({copystream.CATALOG_SQL}) tl ORDER BY tl.label\n\\gexec\nCOMMIT;\n")
    try:
        out = psql.run_sql(remote, sql, db)
    except psql.SQLError as exc:
        if "does not exist" in exc.message:
            raise _unknown_app(remote, app) from exc
        raise
    rows = [line.rsplit("\t", 1) for line in out.splitlines() if "\t" in line]
    return pd.DataFrame({"table": [json.loads(r[0]) for r in rows], "rows": [int(r[1]) for r in rows]},
                        columns=["table", "rows"])


# ---------------------------------------------------------------------------- the stream


@dataclass
class _Parse:
    pipe: copystream.ChunkPipe
    thread: threading.Thread
    result: dict = field(default_factory=dict)


class _Stream:
    """One export's stream: each table is parsed into a DataFrame in a thread of its own while
    its rows arrive; progress goes to the reporter a few times a second."""

    def __init__(self, app: str, tables: Optional[Sequence[str]], reporter: Reporter,
                 source: Optional[tuple] = None) -> None:
        self.app, self.tables, self.reporter = app, tables, reporter
        # (database, container): the app's own PostgreSQL (a Swarm app's); else the shared one's app_<name>
        self.database, self.container = source or (names.db_identifier(app), layout.POSTGRES_CONTAINER)
        self.parses: dict[str, _Parse] = {}
        self.columns: dict[str, list] = {}
        self.last = 0.0
        self.splitter = copystream.Splitter(copystream.new_nonce(), self.start, self.end, self.on_data,
                                            on_catalog=self.on_catalog)

    def on_catalog(self, catalog: list) -> None:
        # Before any data arrives: a wrong table name stops the stream at once.
        for entry in catalog:
            self.columns[entry["table"]] = pgtypes.columns_from_catalog(entry["columns"])
        if self.tables is not None:
            got = {entry["table"] for entry in catalog}
            missing = [t for t in self.tables if t not in got]
            if missing:
                raise ValidationError(f"The app {self.app!r} has no table {', '.join(map(repr, missing))}.",
                                      code="invalid.export.table", remedy=Remedy("export.tables", app=self.app))

    def start(self, name: str, count: int) -> copystream.ChunkPipe:
        pipe, holder = copystream.ChunkPipe(), {}
        cols = self.columns.get(name, [])

        def work() -> None:
            try:
                holder["frame"] = pgtypes.read_csv_stream(pipe, cols)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                holder["error"] = exc
            finally:
                pipe.reader_done()

        thread = threading.Thread(target=work, name=f"labdeploy-parse-{name}", daemon=True)
        self.parses[name] = _Parse(pipe, thread, holder)
        thread.start()
        self.reporter(Progress("Read the tables", 0, count, unit="rows", item=name))
        return pipe

    def end(self, name: str) -> None:
        self.parses[name].pipe.close_writer()
        t = self.splitter.tables[name]
        self.reporter(Progress("Read the tables", t.count, t.count, unit="rows",
                               item=f"{name}, {t.bytes / 1e6:.1f} MB"))

    def on_data(self, t: copystream.TableStream, n: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            self.reporter(Progress("Read the tables", t.rows_estimate(), t.count, unit="rows",
                                   item=f"{t.name}, {t.bytes / 1e6:.1f} MB"))

    def run(self, remote, timeout: Optional[float]) -> None:
        db = self.database
        script = copystream.build_script(self.splitter.nonce, self.tables)
        failure: Optional[BaseException] = None
        try:
            remote.run(postgres.psql(psql.database_name(db), container=self.container), stdin=script.encode(),
                       on_stdout=self.splitter.feed, timeout=timeout)
        except CommandFailed as exc:
            failure = exc
            if f'database "{db}" does not exist' in (exc.stderr or ""):
                raise _unknown_app(remote, self.app) from exc
            raise psql._fail(exc, db) from exc
        except BaseException as exc:
            failure = exc
            raise
        finally:  # every parser ends, with the failure when there was one
            for p in self.parses.values():
                if failure is not None:
                    p.pipe.close_writer(failure)
                else:
                    p.pipe.close_writer()
            for p in self.parses.values():
                p.thread.join()

    def frames(self) -> dict:
        out = {}
        for name, p in self.parses.items():
            if "error" in p.result:
                err = p.result["error"]
                if isinstance(err, LabdeployError):
                    raise err
                raise ExportVerificationError(f"Table {name} could not be read: {err}",
                                              "Run the export again; if it repeats, report it.") from err
            out[name] = p.result["frame"]
        return out


def _stream_tables(remote, app: str, tables: Optional[Sequence[str]], reporter: Reporter,
                   timeout: Optional[float], source: Optional[tuple] = None) -> tuple[copystream.Splitter, dict]:
    stream = _Stream(app, tables, reporter, source)
    stream.run(remote, timeout)
    return stream.splitter, stream.frames()


def _verify(splitter: copystream.Splitter, frames: dict) -> None:
    if splitter.catalog is None or not splitter.done:
        raise ExportVerificationError("The export stream ended before it was complete.",
                                      "Run the export again; nothing was saved.")
    expected = [e["table"] for e in splitter.catalog]
    missing = [t for t in expected if t not in splitter.tables or not splitter.tables[t].ended]
    if missing:
        raise ExportVerificationError(f"Tables {', '.join(missing)} did not arrive.",
                                      "Run the export again; nothing was saved.")
    wrong = [f"{t}: {len(frames[t])} rows read, {splitter.tables[t].count} in the database"
             for t in expected if len(frames[t]) != splitter.tables[t].count]
    if wrong:
        raise ExportVerificationError("Row counts do not match the database: " + "; ".join(wrong) + ".",
                                      "Run the export again; if it repeats, report it with this message.")


# ---------------------------------------------------------------------------- export


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise ValidationError(f"Unknown export mode {mode!r}.", f"Use one of {', '.join(MODES)}.",
                              code="invalid.export.mode")
    return mode


@pool.closes_what_it_opens
def export(app: str, server, tables: Optional[Sequence[str]] = None, *, mode: str = "regular",
           save_to: Union[str, os.PathLike, None] = None, parquet: bool = False,
           rules: Optional[anon.Rules] = None, reporter: Optional[Reporter] = None,
           timeout: Optional[float] = None) -> ExportData:
    """Export the app's tables (all of them unless `tables` names some) as DataFrames.

    mode "regular" returns the data as stored; "anonymous" returns it with the participant
    columns in `rules` replaced (the default rules cover Dallinger's and the example's
    participant tables); "both" returns the regular data with `.anonymous` holding the other.
    With `save_to` (a folder), each version is also saved as `<app>-<time>-data.zip`
    (`-anonymous-data.zip`), and as Parquet folders with `parquet=True`; `.paths` lists them.
    """
    tables, save_to = check_input(app, tables, mode, rules, save_to)
    return export_from(_remote(server), app, tables, mode=mode, save_to=save_to, parquet=parquet, rules=rules,
                       reporter=reporter or null_reporter, timeout=timeout)


def check_input(app: str, tables: Optional[Sequence[str]], mode: str, rules: Optional[anon.Rules],
                save_to) -> tuple[Optional[list], Optional[Path]]:
    """An export's input refused before anything connects; (tables, save_to) as checked."""
    names.app_name(app)
    _mode(mode)
    if tables is not None:
        tables = [copystream.table_name(t) for t in tables]
    if rules is not None:
        rules.validate()
    if save_to is not None:
        save_to = archive.ensure_folder(save_to)  # before the download, not after it
    return tables, save_to


def export_from(remote, app: str, tables: Optional[Sequence[str]], *, mode: str, save_to, parquet: bool,
                rules: Optional[anon.Rules], reporter: Reporter, timeout: Optional[float],
                source: Optional[tuple] = None) -> ExportData:
    """`export` once its input is checked: from the shared PostgreSQL's app database, or from
    `source` = (database, container), an app's own PostgreSQL (labdeploy.app.swarm's)."""
    report = reporter
    with step(report, "Read the tables", f"{app} on {remote.host}"):
        t0 = time.monotonic()
        splitter, frames = _stream_tables(remote, app, tables, report, timeout, source)
        elapsed = time.monotonic() - t0
    with step(report, "Check row counts"):
        _verify(splitter, frames)
    order = [e["table"] for e in splitter.catalog]
    columns = {e["table"]: pgtypes.columns_from_catalog(e["columns"]) for e in splitter.catalog}
    total = sum(t.bytes for t in splitter.tables.values())
    report(LogLine(f"{len(order)} tables, {sum(len(f) for f in frames.values())} rows, "
                   f"{total / 1e6:.1f} MB in {elapsed:.1f} s", "export"))
    data = ExportData({t: frames[t] for t in order}, app=app, server=_server_key(remote),
                      database=source[0] if source else names.db_identifier(app), snapshot=splitter.snapshot,
                      exported_at=datetime.fromtimestamp(splitter.started_epoch, timezone.utc),
                      columns=columns, counts={t: splitter.tables[t].count for t in order}, bytes=total)
    anonymous = None
    if mode in ("anonymous", "both"):
        with step(report, "Anonymise"):
            anon_frames, changed = anon.anonymise(data, rules)
            anonymous = data.derive(anon_frames, anonymised=True, anonymised_columns=changed)
            if not changed:
                report(WarningEvent("No identifying columns were found to anonymise.",
                                "Pass rules=labdeploy.data.anonymise.rules(columns=[...], tables=(...)) naming "
                                "the participant table and its identifying columns."))
    if save_to is not None:
        save_archives(data if mode != "anonymous" else None, anonymous, save_to, parquet=parquet,
                      remote=remote, reporter=report)
        if anonymous is not None and mode == "both":
            data.paths.extend(anonymous.paths)
    if mode == "anonymous":
        return anonymous
    data.anonymous = anonymous
    return data


def save_archive(data: ExportData, path: Union[str, os.PathLike], *, parquet: bool = False,
                 overwrite: bool = False, reporter: Optional[Reporter] = None) -> Path:
    """Save one export as a Dallinger-compatible zip at `path` (and Parquet next to it:
    `<name>-parquet/`). Written atomically; an existing file is replaced only with overwrite=True.
    A regular (not anonymised) export is recorded so `destroy` can check it is fresh."""
    report = reporter or null_reporter
    path = Path(path).expanduser().absolute()
    with step(report, "Write the archive", path.name):
        write_archive(data, path, overwrite=overwrite, reporter=report)
        data.paths.append(str(path))
    if parquet:
        folder = path.with_name(path.name[:-len(".zip")] + "-parquet")
        with step(report, "Write Parquet", folder.name):
            write_parquet(data, folder, overwrite=overwrite, reporter=report)
            data.paths.append(str(folder))
    if not data.anonymised and data.app and data.server and data.snapshot and data.exported_at:
        _record(data, path)
    return path


def save_archives(data: Optional[ExportData], anonymous: Optional[ExportData], folder, *, parquet: bool = False,
                  remote=None, reporter: Optional[Reporter] = None) -> list[Path]:
    """Save the regular and/or anonymised export into `folder` under time-stamped names."""
    folder = Path(folder).expanduser().absolute()
    out = []
    for item, suffix in ((data, "data"), (anonymous, "anonymous-data")):
        if item is None:
            continue
        stamp = archive.now_stamp(item.exported_at)
        path, n = folder / f"{item.app}-{stamp}-{suffix}.zip", 1
        while path.exists():  # never replace an earlier export
            n += 1
            path = folder / f"{item.app}-{stamp}-{n}-{suffix}.zip"
        out.append(save_archive(item, path, parquet=parquet, reporter=reporter))
    return out


# ---------------------------------------------------------------------------- export records


def _records_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("labdeploy")) / "exports.jsonl"


def _record(data: ExportData, path: Path) -> None:
    """Remember a saved export (one JSON line, appended in one write)."""
    rec = {"app": data.app, "server": data.server, "database": data.database, "snapshot": data.snapshot,
           "exported_at": data.exported_at.isoformat() if data.exported_at else None,
           "counts": {t: int(len(f)) for t, f in data.items()}, "path": str(path),
           "size": path.stat().st_size, "saved_at": datetime.now(timezone.utc).isoformat()}
    f = _records_file()
    localfiles.make_private_dirs(f.parent)
    with localfiles.open_private(f, exclusive=False, append=True) as out:  # 0600: names paths and counts
        os.write(out.fileno(), (json.dumps(rec) + "\n").encode())  # one write: lines never interleave


def exports(app: Optional[str] = None, server=None) -> list[dict]:
    """Saved (regular) exports whose archive still exists, newest first."""
    f = _records_file()
    if not f.exists():
        return []
    key = None
    if server is not None:  # host and port only: no connection needed
        from .ssh.servers import resolve

        key = _server_key(resolve(server))
    out = []
    for line in f.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn line from a crash: skip it
        if app is not None and rec.get("app") != app:
            continue
        if key is not None and rec.get("server") != key:
            continue
        p = Path(rec.get("path", ""))
        if p.is_file() and p.stat().st_size == rec.get("size"):
            rec["exported_at"] = datetime.fromisoformat(rec["exported_at"])
            out.append(rec)
    return sorted(out, key=lambda r: r["exported_at"], reverse=True)


def last_export_time(app: str, server=None) -> Optional[datetime]:
    """When the newest saved export of the app (that still exists on disk) was taken, or None."""
    recs = exports(names.app_name(app), server)
    return recs[0]["exported_at"] if recs else None


def _snapshot_parts(snapshot: str) -> tuple[int, list[int]]:
    xmin, xmax, xip = snapshot.split(":")
    return int(xmax) % 2**32, [int(x) % 2**32 for x in xip.split(",") if x]


@pool.closes_what_it_opens
def changes_since(app: str, server, record: Mapping[str, Any]) -> pd.DataFrame:
    """Per table: rows now, rows in the export, rows written (inserted/updated) since the export's
    snapshot. Exact: a row version whose xmin the export's snapshot could not see is a write."""
    remote = _remote(server)
    db = names.db_identifier(app)
    xmax, xip = _snapshot_parts(record["snapshot"])
    newer = (f"(xmin::text::bigint >= 3 AND ((xmin::text::bigint - {xmax}) % 4294967296 + 4294967296) "
             f"% 4294967296 < 2147483648)")
    if xip:
        newer = f"({newer} OR xmin::text::bigint IN ({', '.join(str(x) for x in xip)}))"
    sql = ("\\pset tuples_only on\n\\pset format unaligned\nBEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
           "SELECT format('SELECT %L || chr(9) || count(*) || chr(9) || count(*) FILTER (WHERE "
           + newer.replace("'", "''").replace("%", "%%") + ") FROM %I.%I', to_json(tl.label)::text, tl.nspname, "
           "tl.relname) "
           f"FROM ({copystream.CATALOG_SQL}) tl ORDER BY tl.label\n\\gexec\nCOMMIT;\n")
    out = psql.run_sql(remote, sql, db)
    counts = record.get("counts", {})
    rows = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            table = json.loads(parts[0])
            rows.append({"table": table, "rows": int(parts[1]), "exported_rows": counts.get(table),
                         "written_since": int(parts[2])})
    for t, n in counts.items():
        if t not in {r["table"] for r in rows}:
            rows.append({"table": t, "rows": 0, "exported_rows": n, "written_since": 0})
    frame = pd.DataFrame(rows, columns=["table", "rows", "exported_rows", "written_since"])
    frame["changed"] = (frame["written_since"] > 0) | (frame["rows"] != frame["exported_rows"].fillna(0))
    return frame


@pool.closes_what_it_opens
def database_exists(app: str, server) -> bool:
    from .server import database

    out = psql.run_sql(_remote(server), "\\pset tuples_only on\n" + database.exists_sql(app))
    return out.strip() not in ("", "0")


@pool.closes_what_it_opens
def check_destroy(app: str, server, *, override: bool = False,
                  reporter: Optional[Reporter] = None) -> Optional[dict]:
    """Raise ExportRequired unless the app's database is safe to drop: it does not exist, or a
    saved export has every row it holds now (nothing written since). `override=True` skips the
    check (the caller asked explicitly to lose the data). Returns the export record relied on."""
    report = reporter or null_reporter
    names.app_name(app)
    if override:
        report(WarningEvent(f"Destroying {app} without checking for a fresh export (explicit override).", ""))
        return None
    remote = _remote(server)
    if not database_exists(app, remote):
        return None
    recs = exports(app, remote)
    if not recs:
        raise ExportRequired(
            f"{app} still has its database on {remote.host}, and there is no saved export of it on this "
            "computer. Destroying now would lose the data.", remedy=Remedy("export.before_destroy", app=app))
    newest = recs[0]
    changes = changes_since(app, remote, newest)
    changed = changes[changes["changed"]]
    if len(changed):
        detail = ", ".join(f"{r.table} ({r.written_since} rows written, {r.rows} now vs {r.exported_rows} "
                           f"exported)" for r in changed.itertuples())
        raise ExportRequired(
            f"{app} was written to after its newest export ({newest['exported_at']:%Y-%m-%d %H:%M:%S} UTC, "
            f"{newest['path']}): {detail}. Destroying now would lose those rows.",
            code="export.stale", remedy=Remedy("export.again_before_destroy", app=app))
    report(LogLine(f"fresh export found: {newest['path']}", "export"))
    return newest


@pool.closes_what_it_opens
def stop_app(app: str, server, *, reporter: Optional[Reporter] = None) -> bool:
    """Stop the app's processes (containers kept) so nothing writes while a final export is
    taken before destroy. Returns False when the app has no compose project (data only)."""
    from .server import compose

    report = reporter or null_reporter
    remote = _remote(server)
    if not remote.exists(layout.app_compose(names.app_name(app))):
        return False
    with step(report, "Stop the app", "so nothing is written after the final export"):
        compose.run_compose(remote, layout.app_dir(app), ["stop"], timeout=300)
    return True


# ---------------------------------------------------------------------------- ad-hoc SQL


def _app_credentials(remote, app: str) -> tuple[str, str, str]:
    """(role, password, database) from the app's secrets.env, read over SFTP into memory only."""
    from .server.database import parse_database_url

    path = layout.app_secrets(app)
    try:
        text = remote.get_bytes(path).decode()
    except FileNotFoundError:
        raise UnknownApp(f"{app!r} has no {path} on {remote.host}, so it is not deployed there.",
                         "Check the app name and the server.", code="app.unknown") from None
    except PermissionError:
        raise LabdeployError(f"{path} on {remote.host} may not be read by {remote.user}.",
                             "Use the login that deployed the app.", code="app.secrets.unreadable") from None
    url = None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "DATABASE_URL":
            url = value.strip().strip('"').strip("'")
    if not url:
        raise LabdeployError(f"{path} on {remote.host} has no DATABASE_URL.",
                             "Redeploy the app so its secrets file is written again.", code="app.secrets.incomplete")
    parts = parse_database_url(url)
    if not parts["user"] or not parts["password"]:
        raise LabdeployError(f"The DATABASE_URL in {path} has no user or password.", "Redeploy the app.",
                             code="app.secrets.incomplete")
    return parts["user"], parts["password"], parts["database"] or names.db_identifier(app)


@pool.closes_what_it_opens
def postgres_address(server) -> str:
    """The shared PostgreSQL's IP address on the `dallinger` network, as the server sees it."""
    remote = _remote(server)
    try:
        out = remote.run(postgres.networks(layout.POSTGRES_CONTAINER), timeout=30).stdout
    except CommandFailed as exc:
        raise psql.SQLError("The shared PostgreSQL container is not running on the server.",
                            code="stack.postgres.not_running", remedy=Remedy("stack.prepare")) from exc
    address = postgres.address_on(out, layout.NETWORK)
    if not address:
        raise psql.SQLError("The shared PostgreSQL container has no address on the dallinger network.",
                            code="stack.postgres.no_address", remedy=Remedy("stack.prepare"))
    return address


def _bind(sql: str, params: Optional[Mapping[str, Any]]) -> tuple[str, dict]:
    """`:name` placeholders -> psycopg's %(name)s (and literal % doubled), checked before
    anything is sent: every placeholder needs a value."""
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

    if not isinstance(sql, str) or not sql.strip():
        raise ValidationError("The query is empty.", "Give a SELECT statement.", code="invalid.query")
    if "\0" in sql:
        raise ValidationError("The query holds a NUL character.", "Remove it; PostgreSQL does not accept it.",
                              code="invalid.query")
    compiled = sa.text(sql).compile(dialect=pg_dialect.dialect())
    given = dict(params or {})
    missing = [n for n in compiled.binds if n not in given]
    if missing:
        raise ValidationError(f"The query uses :{', :'.join(missing)} but no value was given for it.",
                              code="invalid.query.params",
                              remedy=Remedy("query.params", names=", ".join(f":{n}" for n in missing),
                                            given=", ".join(f"'{n}': ..." for n in missing)))
    return compiled.string, {n: given[n] for n in compiled.binds}


def _grant_reader(remote, app: str, password: str) -> str:
    """Make (or refresh) the app's read-only role through the superuser's psql; its password."""
    from .server import database

    ro_password = database.reader_password(app, password)
    sql = database.reader_sql(app, database.scram_verifier(ro_password))
    for attempt in (1, 2):
        try:
            psql.run_sql(remote, sql, names.db_identifier(app), timeout=60)
            break
        except psql.SQLError as exc:
            # Two queries at once may race to create the role or grant on the same table.
            if attempt == 2 or not ("already exists" in exc.message or "concurrently" in exc.message):
                raise
    return ro_password


_ONE_STATEMENT = "cannot insert multiple commands into a prepared statement"


@pool.closes_what_it_opens
def query(app: str, server, sql: str, params: Optional[Mapping[str, Any]] = None, *,
          timeout: float = 300) -> pd.DataFrame:
    """Run one SQL statement (a SELECT) on the app's data; rows as a DataFrame.

    It runs as the app's read-only role (`<db>__ro`: SELECT on the app's tables and nothing
    else, made by labdeploy through the superuser), in a READ ONLY transaction that is always
    rolled back, as one statement of PostgreSQL's extended protocol (which refuses several
    statements, so nothing can follow a COMMIT). Parameters are bound by the server (`:name`
    placeholders), never pasted into the SQL. The connection goes through an SSH tunnel to
    PostgreSQL as seen from the server.
    """
    import psycopg

    from .server import database

    names.app_name(app)
    text, values = _bind(sql, params)
    remote = _remote(server)
    _role, password, db = _app_credentials(remote, app)
    ro_password = _grant_reader(remote, app, password)
    host = postgres_address(remote)
    with remote.forward(host, 5432) as port:
        try:
            conn = psycopg.connect(host="127.0.0.1", port=port, dbname=db, user=database.reader_role(app),
                                   password=ro_password, connect_timeout=10, application_name="labdeploy-query",
                                   options=f"-c statement_timeout={int(timeout * 1000)} "
                                           "-c default_transaction_read_only=on -c TimeZone=UTC")
        except psycopg.Error as exc:
            raise psql.SQLError(f"Could not connect to the app's database: {_first_line(exc)}",
                                code="sql.connect_failed", remedy=Remedy("stack.postgres.check")) from None
        try:
            conn.read_only = True  # BEGIN READ ONLY before the statement
            with conn.cursor() as cur:
                # prepare=True: Parse/Bind/Execute (the extended protocol) even without parameters.
                cur.execute(text, values, prepare=True)
                if cur.description is None:
                    raise ValidationError("The statement returned no rows.",
                                          "Give a SELECT statement: a query only reads.", code="invalid.query.no_rows")
                columns = [d.name for d in cur.description]
                rows = cur.fetchall()
        except psycopg.Error as exc:
            msg = _first_line(exc)
            if _ONE_STATEMENT in msg:
                raise ValidationError("The query holds several statements; a query runs exactly one.",
                                      "Send one SELECT at a time (without ';' between statements).",
                                      code="invalid.query.statements") from None
            # 25006 read_only_sql_transaction, 42501 insufficient_privilege (any server language)
            if getattr(exc, "sqlstate", None) in ("25006", "42501") or "read-only transaction" in msg:
                raise ValidationError(f"The query tried to change data or read what it may not: {msg}",
                                      "A query only reads (as the app's read-only role); change data through "
                                      "the experiment itself.", code="invalid.query.writes") from None
            raise psql.SQLError(f"PostgreSQL reported an error: {msg}", "Check the SQL statement.", code="sql.failed") from None
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()  # never commit: whatever the statement did is undone
            conn.close()
    return _frame(rows, columns)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _frame(rows: list, columns: list) -> pd.DataFrame:
    """Rows as pandas.read_sql gives them: floats coerced, time-zone-aware columns in UTC."""
    frame = pd.DataFrame.from_records(rows, columns=columns, coerce_float=True) if rows else \
        pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.DatetimeTZDtype):
            frame[name] = frame[name].dt.tz_convert("UTC")
    return frame


# ---------------------------------------------------------------------------- files and logs


@pool.closes_what_it_opens
def download_files(app: str, server, dest: Union[str, os.PathLike], *,
                   reporter: Optional[Reporter] = None) -> list[Path]:
    """Copy the app's persistent files (~/dallinger-data/<app>) into `dest`, with progress.

    The files travel as one tar stream (symlinks as links, not followed, so a link to anything
    outside the app's folder is never read); only regular files are written, each under its
    name only when complete, mode 0600, in folders made 0700, and never outside `dest`."""
    report = reporter or null_reporter
    names.app_name(app)
    remote = _remote(server)
    root = layout.app_data(app)
    sizes = files.read_sizes(remote.run(files.sizes(root), timeout=60, check=False).stdout)
    if sizes is None:
        raise UnknownApp(f"{app!r} has no folder {root} on {remote.host}.",
                         "Check the app name; an app without assets has no files to download.", code="app.unknown")
    total = sum(sizes)
    dest = archive.ensure_folder(dest)
    pipe = copystream.ChunkPipe()
    holder: dict = {}

    def work() -> None:
        try:
            holder["result"] = _unpack_files(pipe, dest, report, total)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            holder["error"] = exc
        finally:
            pipe.reader_done()

    def feed(chunk: bytes) -> None:
        if "error" in holder:
            raise _Stop()  # stops the tar on the server too
        pipe.write(chunk)

    with step(report, "Download files", f"{len(sizes)} files"):
        thread = threading.Thread(target=work, name="labdeploy-unpack-files", daemon=True)
        thread.start()
        res = None
        try:
            # --hard-dereference: a file linked twice comes twice, not as a link to follow here.
            res = remote.run(files.tar(root), on_stdout=feed,
                             check=False, timeout=None)
        except _Stop:
            pass
        finally:
            pipe.close_writer(None if res is not None else ConnectionError("the download stopped"))
            thread.join()
        problems = _tar_problems(res.stderr if res is not None else "")
        if "error" in holder:
            err = holder["error"]
            if res is not None and res.exit_status not in (0, 1) and problems["fatal"]:
                raise LabdeployError(f"tar failed on {remote.host}: {problems['fatal'][-1]}",
                                     "Read the error above; it comes from the server.", code="download.failed") from err
            if isinstance(err, LabdeployError):
                raise err
            if isinstance(err, OSError) and not isinstance(err, (tarfile.TarError, ConnectionError)):
                raise archive._disk_error(err, dest) from err
            raise LabdeployError(f"The files of {app} could not be unpacked: {err}",
                                 "Run the download again; if it repeats, report it.", code="download.unpack_failed") from err
        if res.exit_status not in (0, 1, 2) or problems["fatal"]:
            detail = "; ".join(problems["fatal"][-3:]) or f"exit status {res.exit_status}"
            raise LabdeployError(f"Reading the files of {app} on {remote.host} failed: {detail}",
                                 "Read the error above; it comes from the server.", code="download.failed")
        for rel in problems["unreadable"]:
            report(WarningEvent(f"{rel} may not be read by {remote.user}; skipped.", ""))
        for rel in problems["changed"]:
            report(WarningEvent(f"{rel} changed while it was read; download again for a settled copy.", ""))
        written, skipped = holder["result"]
        for rel, why in skipped:
            report(WarningEvent(f"{rel!r} was not downloaded: {why}.", ""))
    return written


class _Stop(Exception):
    """Raised from the stream callback to stop the remote command."""


def _tar_problems(stderr: str) -> dict:
    """GNU tar's complaints, sorted: files it could not read (skipped, exit status 2), files
    that changed while read (exit status 1), and anything else (fatal)."""
    out: dict = {"unreadable": [], "changed": [], "fatal": []}
    for line in stderr.splitlines():
        text = line.removeprefix("tar: ")
        for suffix, kind in ((": Cannot open: Permission denied", "unreadable"),
                             (": Cannot savedir: Permission denied", "unreadable"),
                             (": file changed as we read it", "changed"),
                             (": File removed before we read it", "changed")):
            if text.endswith(suffix):
                out[kind].append(text[:-len(suffix)].removeprefix("./"))
                break
        else:
            if text.strip() and not text.startswith("Exiting with failure status due to previous errors"):
                out["fatal"].append(text.strip())
    return out


def _member_parts(name: str) -> Optional[list[str]]:
    """A tar member's path as parts inside the destination ([] for the folder itself), or None
    when it would leave it."""
    if not name or name.startswith("/") or "\0" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return parts


def _private_subdirs(dest: Path, parts: Sequence[str]) -> Optional[Path]:
    """dest/parts..., each missing folder made 0700; None if one of them is a link or a file (a
    link could lead outside dest)."""
    folder = dest
    for part in parts:
        folder = folder / part
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            return None
        if not folder.exists():
            localfiles.make_private_dirs(folder)
    return folder


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _unpack_files(stream, dest: Path, report: Reporter, total: int) -> tuple[list, list]:
    """Write the regular files of a tar stream into dest (see download_files). Returns (paths
    written, [(name, why skipped)])."""
    dest_real = os.path.realpath(dest)
    written: list = []
    skipped: list = []
    done = 0
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        for member in tf:
            parts = _member_parts(member.name)
            rel = "/".join(parts) if parts else member.name
            if parts is None:
                skipped.append((member.name, "its name leads outside the folder"))
                continue
            if not parts:
                if not member.isdir():
                    skipped.append((member.name, "it has no name of its own"))
                continue  # the folder itself: dest
            if member.isdir():
                if _private_subdirs(dest, parts) is None:
                    skipped.append((rel, "a link or a file is in its place here"))
                continue
            if not member.isreg():
                skipped.append((rel, "it is a link or a special file, not a regular file"))
                continue
            folder = _private_subdirs(dest, parts[:-1])
            if folder is None or not _within(os.path.realpath(folder), dest_real):
                skipped.append((rel, "a link or a file is in the way here"))
                continue
            target = folder / parts[-1]
            if target.is_dir() and not target.is_symlink():
                skipped.append((rel, "a folder of that name is in the way here"))
                continue
            src = tf.extractfile(member)
            tmp = localfiles.temp_name(target)
            try:
                with localfiles.open_private(tmp) as out:  # 0600: an app's files may hold participant data
                    got = 0
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                        got += len(chunk)
                        report(Progress("Download files", done + got, total, unit="bytes", item=rel))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)  # replaces a link at that name, never writes through it
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            done += member.size
            written.append(target)
            report(Progress("Download files", done, max(total, done), unit="bytes", item=rel))
    return written, skipped


@pool.closes_what_it_opens
def download_logs(app: str, server, dest: Union[str, os.PathLike], *, tail: Optional[int] = None,
                  reporter: Optional[Reporter] = None) -> Path:
    """Save the app's container logs (all services, with timestamps) as `dest/<app>-logs.txt`."""
    from .server import compose

    report = reporter or null_reporter
    remote = _remote(server)
    app_dir = layout.app_dir(app)
    if not remote.exists(layout.app_compose(app)):
        raise UnknownApp(f"{app!r} has no {layout.app_compose(app)} on {remote.host}.",
                         "Check the app name and the server.", code="app.unknown")
    dest = archive.ensure_folder(dest)
    target = dest / f"{app}-logs.txt"
    tmp = localfiles.temp_name(target)
    args = [*compose.compose_argv(remote), "logs", "--no-color", "--timestamps"]
    if tail:
        args += ["--tail", str(int(tail))]
    got = [0]
    partial = [b""]  # a line cut between two chunks is redacted whole
    with step(report, "Download logs"), localfiles.open_private(tmp) as f:  # 0600: logs name participants
        def chunk(data: bytes) -> None:
            lines = (partial[0] + data).split(b"\n")
            partial[0] = lines.pop()
            for line in lines:
                f.write(redact(line.decode("utf-8", "replace")).encode() + b"\n")
            got[0] += len(data)
            report(Progress("Download logs", got[0], None, unit="bytes", item=app))

        try:
            remote.run(args, cwd=app_dir, on_stdout=chunk, timeout=600)
            if partial[0]:
                f.write(redact(partial[0].decode("utf-8", "replace")).encode())
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, target)
    return target


__all__ = ["export", "save_archive", "save_archives", "load_export", "query", "last_export_time", "exports",
           "check_destroy", "changes_since", "stop_app", "table_counts", "download_files", "download_logs",
           "list_app_databases", "postgres_address", "ExportData", "UnknownApp", "ExportVerificationError",
           "ExportRequired"]
