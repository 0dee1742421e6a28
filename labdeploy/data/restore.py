"""Restoring an app's database from a backup on the server, a pulled dump, or an export zip
(labdeploy's or Dallinger's format).

The safe way is the default: into a name that holds nothing yet, side by side with the app.
Into a name that holds an app or data, only with `confirm=True`: the new data is loaded and
its row counts checked *before* anything of the app is touched; then the app is stopped, a
fresh backup of its current data is taken (kind "pre-restore"), the databases are swapped
and the app is started again. A failure at any point leaves the app's data as it was.

A dump is restored into `<db>__restoring` (a new database) and renamed into place. An export
zip holds tables but no schema, so it is loaded into the app's own tables (which the app
creates when it starts) in one transaction, foreign-key triggers paused while the tables load
(as a data-only pg_restore does), sequences moved past the largest ids: all of it or none.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import pandas as pd

from .. import names
from ..commands import backups as commands, files
from ..errors import LabdeployError, Remedy, ValidationError
from ..progress import LogLine, Reporter, WarningEvent, null_reporter, step
from ..server import compose, layout, psql
from ..ssh import pool
from . import archive, backups, encryption

SCRATCH_SUFFIX = "__restoring"
REPLACED_SUFFIX = "__replaced"


class RestoreNeedsConfirmation(LabdeployError):
    """Restoring into a name that already holds an app or data."""

    code = "confirmation.required.restore"


@dataclass
class RestoreResult:
    app: str  # the app whose database now holds the restored data
    source: str
    counts: pd.DataFrame  # table, expected, restored, ok
    replaced: bool = False  # an existing database was replaced (after a pre-restore backup)
    pre_restore_backup: Optional[str] = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.counts["ok"].all()) if len(self.counts) else True


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _counts_frame(expected: Optional[dict], restored: dict) -> pd.DataFrame:
    tables = sorted(set(restored) | set(expected or {}))
    rows = []
    for t in tables:
        want = (expected or {}).get(t)
        got = restored.get(t)
        rows.append({"table": t, "expected": want, "restored": got, "ok": want is None or want == got})
    return pd.DataFrame(rows, columns=["table", "expected", "restored", "ok"])


# ---------------------------------------------------------------------------- what to restore

@dataclass
class _Source:
    kind: str  # "server", "dump", "zip"
    label: str
    expected: Optional[dict] = None  # table -> rows
    server_file: Optional[str] = None  # in the backup container (/backups/...)
    local: Optional[Path] = None
    sha256: Optional[str] = None
    zip_tables: Optional[dict] = None  # table -> CSV member name


def _server_source(remote, app: str, backup_id: str) -> _Source:
    manifests = backups._manifests(remote, app)
    if not manifests:
        raise ValidationError(f"The server has no backups of {app!r}.",
                              "Take one with backup.now, or give a pulled .dump file or an export zip.",
                              code="invalid.restore.backup")
    chosen = manifests[-1] if backup_id == "latest" else next((m for m in manifests if m["id"] == backup_id), None)
    if chosen is None:
        raise ValidationError(f"The server has no backup {backup_id} of {app!r}.",
                              "The list of backups shows their ids; 'latest' takes the newest.", code="invalid.restore.backup")
    return _Source("server", f"backup {chosen['id']} of {app}", chosen.get("rows"),
                   server_file=commands.container_path(app, chosen["dump"]), sha256=chosen.get("sha256"))


def _zip_source(path: Path) -> _Source:
    try:
        with zipfile.ZipFile(path) as z:
            members = [n for n in z.namelist() if n.startswith("data/") and n.endswith(".csv")]
            meta = {}
            if archive.META_NAME in z.namelist():
                meta = json.loads(z.read(archive.META_NAME))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ValidationError(f"{path} is not a readable export zip: {exc}",
                              "Give a zip made by labdeploy's or Dallinger's export.", code="invalid.restore.zip") from None
    if not members:
        raise ValidationError(f"{path} holds no tables (no data/*.csv).",
                              "Give a zip made by labdeploy's or Dallinger's export.", code="invalid.restore.zip")
    files = (meta.get("files") or {}) if isinstance(meta, dict) else {}
    by_file = {f"data/{stem}.csv": table for table, stem in files.items()}
    tables = {}
    for member in members:
        table = by_file.get(member) or archive.table_from_stem(member[len("data/"):-len(".csv")])
        names_ok = isinstance(table, str) and table and "\x00" not in table and len(table) <= 63
        if not names_ok:
            raise ValidationError(f"{path} holds a table name labdeploy will not load: {table!r}.",
                                  code="invalid.restore.zip")
        tables[table] = member
    counts = meta.get("counts") if isinstance(meta, dict) else None
    return _Source("zip", f"export {path.name}", counts if isinstance(counts, dict) else None, local=path,
                   zip_tables=tables)


def resolve_source(remote, app: str, source: Union[str, Path]) -> _Source:
    """A backup id ("latest" or 20261130T140000Z) of `app` on the server, or a local file: a
    pulled .dump (checked against the manifest beside it), or an export .zip."""
    if isinstance(source, str) and (source == "latest" or backups.BACKUP_ID.fullmatch(source)):
        return _server_source(remote, app, source)
    return local_source(source)


def check_source(source: Union[str, Path]) -> Optional[_Source]:
    """Refuse a source that can't be restored, without connecting: None for a backup on the
    server ("latest" or an id), else the local file's _Source."""
    if isinstance(source, str) and (source == "latest" or backups.BACKUP_ID.fullmatch(source)):
        return None
    return local_source(source)


def local_source(source: Union[str, Path]) -> _Source:
    """A file on this computer: a pulled .dump (with its manifest beside it, when there) or an
    export .zip. Refused (ValidationError) when it is neither."""
    path = Path(source).expanduser()
    if path.suffix == ".zip":
        if not path.is_file():
            raise ValidationError(f"There is no file {path}.", "Give the path of an export zip.",
                                  code="invalid.restore.file")
        return _zip_source(path)
    if not (path.name.endswith(".dump") or path.name.endswith(".dump" + encryption.SUFFIX)):
        raise ValidationError(f"{path.name} is neither a backup (.dump, .dump.age) nor an export (.zip).",
                              "Give a pulled .dump file, an export .zip, 'latest' or a backup id.",
                              code="invalid.restore.source")
    local = backups.LocalBackup.open(path)
    expected = local.manifest.get("rows") if local.manifest else None
    return _Source("dump", f"dump {path.name}", expected if isinstance(expected, dict) else None, local=path,
                   sha256=(local.manifest or {}).get("sha256"))


# ---------------------------------------------------------------------------- helpers on the server

def _database_exists(remote, ident: str) -> bool:
    out = psql.run_sql(remote, "\\pset tuples_only on\n\\pset format unaligned\n"
                       f"SELECT count(*) FROM pg_database WHERE datname = {_literal(ident)};\n")
    return out.strip().endswith("1")


def _ensure_role(remote, ident: str) -> None:
    # A role for a name that has no app yet: deploy gives it a password and LOGIN later.
    psql.run_sql(remote, f"SELECT 'CREATE ROLE {ident} NOLOGIN' WHERE NOT EXISTS "
                         f"(SELECT FROM pg_roles WHERE rolname = {_literal(ident)})\\gexec\n")


def _drop(remote, database: str) -> None:
    psql.run_sql(remote, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {_literal(database)};\n"
                         f"DROP DATABASE IF EXISTS {database};\n")


def _swap_sql(ident: str, exists: bool) -> str:
    scratch, replaced = ident + SCRATCH_SUFFIX, ident + REPLACED_SUFFIX
    lines = [f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN "
             f"({_literal(ident)}, {_literal(scratch)});"]
    if exists:
        lines.append(f"ALTER DATABASE {ident} RENAME TO {replaced};")
    lines.append(f"ALTER DATABASE {scratch} RENAME TO {ident};")
    lines.append(f"REVOKE ALL ON DATABASE {ident} FROM PUBLIC;")
    lines.append(f"GRANT ALL ON DATABASE {ident} TO {ident};")
    if exists:
        lines.append(f"DROP DATABASE {replaced};")
    return "\n".join(lines) + "\n"


def _app_running(remote, app: str) -> bool:
    return remote.exists(layout.app_compose(app))


# ---------------------------------------------------------------------------- loading

def _load_dump(remote, into: str, source: _Source, report: Reporter, keys: Optional[dict] = None) -> dict:
    """The dump into a new database <db>__restoring; returns its row counts. An encrypted copy
    is opened with `keys` (identity= or passphrase=) into a 0600 file beside it first."""
    if source.kind == "dump" and source.local.name.endswith(encryption.SUFFIX):
        plain = source.local.with_name(f".{uuid.uuid4().hex[:12]}.labdeploy-plain")
        try:
            encryption.decrypt(source.local, plain, **(keys or {}))
            return _load_dump(remote, into, replace(source, local=plain), report)
        finally:
            plain.unlink(missing_ok=True)
    ident = names.db_identifier(into)
    upload = None
    file_in_container = source.server_file
    if source.kind == "dump":
        if source.sha256:
            import hashlib

            digest = hashlib.sha256()
            with open(source.local, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != source.sha256:
                raise backups.BackupFailed(f"{source.local} does not match the checksum its manifest records.",
                                           "The file is damaged: pull it again, or use another backup.")
        remote.makedirs(layout.app_backups(into), 0o700)
        name = f".incoming-{uuid.uuid4().hex[:12]}.dump"
        upload = f"{layout.app_backups(into)}/{name}"
        with step(report, "Upload the dump", f"{source.local.stat().st_size} bytes"):
            remote.put_file(source.local, upload, mode=0o600)
        file_in_container = commands.container_path(into, name)
    try:
        _drop(remote, ident + SCRATCH_SUFFIX)  # what an interrupted restore left
        with step(report, "Restore into a new database", f"{ident}{SCRATCH_SUFFIX}"):
            text = backups.run_in_service(remote, commands.restore(file_in_container, ident + SCRATCH_SUFFIX, ident),
                                          f"Restoring {source.label}")
    finally:
        if upload:
            remote.run(files.remove(upload), check=False)
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def _csv_header(data: bytes) -> list[str]:
    first = next(csv.reader(io.StringIO(data.decode("utf-8", "replace").split("\n", 1)[0] + "\n")), [])
    return first


def _zip_script(source: _Source, table_columns: dict, replace: bool) -> tuple[bytes, dict]:
    """A psql script loading every table of the zip in one transaction; and the rows per table."""
    parts = [b"\\set ON_ERROR_STOP on\nBEGIN;\nSET session_replication_role = replica;\n"]
    expected = {}
    with zipfile.ZipFile(source.local) as z:
        tables = source.zip_tables
        if replace:
            parts.append(("TRUNCATE " + ", ".join(_ident(t) for t in sorted(tables)) + ";\n").encode())
        for table, member in sorted(tables.items()):
            data = z.read(member)
            header = _csv_header(data)
            unknown = [c for c in header if c not in table_columns[table]]
            if unknown:
                raise ValidationError(f"The zip's {table} has columns the app's table lacks: {', '.join(unknown)}.",
                                      "Restore it into an app of the same experiment (same version).",
                                      code="restore.columns")
            rows = sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8", "replace")))) - 1
            expected[table] = max(rows, 0)
            columns = ", ".join(_ident(c) for c in header)
            parts.append(f"COPY {_ident(table)} ({columns}) FROM STDIN WITH (FORMAT csv, HEADER true);\n".encode())
            parts.append(data if data.endswith(b"\n") else data + b"\n")
            parts.append(b"\\.\n")
    parts.append(b"SET session_replication_role = origin;\n")
    # Sequences past the largest ids, so the app's next row does not collide with a loaded one.
    parts.append(b"SELECT format('SELECT setval(%L, greatest(coalesce((SELECT max(%I) FROM %I.%I), 0), 1), "
                 b"(SELECT max(%I) FROM %I.%I) IS NOT NULL)', s.seq, a.attname, n.nspname, c.relname, a.attname, "
                 b"n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                 b"JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
                 b"CROSS JOIN LATERAL (SELECT pg_get_serial_sequence(quote_ident(n.nspname) || '.' || "
                 b"quote_ident(c.relname), a.attname) AS seq) s "
                 b"WHERE c.relkind = 'r' AND n.nspname = 'public' AND s.seq IS NOT NULL\\gexec\n")
    parts.append(b"COMMIT;\n")
    return b"".join(parts), expected


def _table_columns(remote, ident: str) -> dict:
    df = psql.query_df(remote, "SELECT table_name AS t, column_name AS c FROM information_schema.columns "
                               "WHERE table_schema = 'public'", database=ident)
    out: dict = {}
    for row in df.itertuples():
        out.setdefault(row.t, set()).add(row.c)
    return out


def _table_counts(remote, ident: str) -> dict:
    text = backups.run_in_service(remote, commands.counts(ident), "Counting rows")
    try:
        return json.loads(text)
    except ValueError:
        return {}


def load_zip(remote, app: str, source: _Source, *, replace: bool, report: Reporter) -> dict:
    """The zip's tables into the app's own tables (they must exist: the app made them when it
    started), in one transaction. Returns the row counts of the loaded tables."""
    ident = names.db_identifier(app)
    columns = _table_columns(remote, ident)
    missing = sorted(t for t in source.zip_tables if t not in columns)
    if missing:
        raise ValidationError(f"The app's database has no table {', '.join(missing)} (the zip has).",
                              "Load an export of the same experiment; its tables appear when the app starts.",
                              code="restore.tables")
    script, expected = _zip_script(source, columns, replace)
    if not replace:
        counts = _table_counts(remote, ident)
        full = sorted(t for t in source.zip_tables if counts.get(t))
        if full:
            raise RestoreNeedsConfirmation(f"The app's tables {', '.join(full)} already hold rows.",
                                           "Restore with confirmation to replace them.",
                                           remedy=Remedy("restore.confirm", app=app))
    with step(report, "Load the export", f"{len(source.zip_tables)} tables in one transaction"):
        psql.run_sql(remote, script.decode("utf-8", "surrogateescape"), database=ident, timeout=3600)
    counts = _table_counts(remote, ident)
    source.expected = source.expected or expected
    return {t: counts.get(t) for t in source.zip_tables}


# ---------------------------------------------------------------------------- restore

def _check_into(app: str, into: Optional[str]) -> str:
    if into is None:
        return names.app_name(f"{app}-restore"[:names.APP_MAX])
    return names.app_name(into)


@pool.closes_what_it_opens
def restore(app: str, server, source: Union[str, Path] = "latest", *, into: Optional[str] = None,
            confirm: bool = False, identity: Union[str, Path, None] = None, passphrase: Optional[str] = None,
            reporter: Optional[Reporter] = None) -> RestoreResult:
    """Restore `app`'s data from `source` ("latest", a backup id on the server, a pulled .dump
    (or an encrypted .dump.age, opened with the private key file `identity` or `passphrase`)
    or an export .zip) into the app `into` (default `<app>-restore`: side by side). Into a
    name that holds an app or data: only with confirm=True (stop, pre-restore backup, swap,
    start). Row counts are checked against the manifest or the zip and reported."""
    app, into = names.app_name(app), _check_into(app, into)
    report = reporter or null_reporter
    started = time.monotonic()
    local = check_source(source)  # a bad file is refused before connecting
    if local is not None and local.local.name.endswith(encryption.SUFFIX) and identity is None and passphrase is None:
        raise ValidationError(f"{local.local.name} is encrypted: nothing was given to open it.",
                              "Give the private key file that matches the public key it was encrypted to, or "
                              "its passphrase.", code="invalid.encryption.identity")
    remote = pool.connect(server)
    source_ = local or resolve_source(remote, app, source)
    ident = names.db_identifier(into)
    deployed = _app_running(remote, into)
    exists = deployed or _database_exists(remote, ident)
    if exists and not confirm:
        raise RestoreNeedsConfirmation(
            f"{into!r} already holds {'an app' if deployed else 'data'} on {remote.host}; nothing was changed.",
            "Restore side by side into a new name, or confirm to replace its data (a backup of it is taken first).",
            remedy=Remedy("restore.confirm", app=into))
    if source_.kind == "zip":
        return _restore_zip(remote, app, into, source_, deployed, exists, report, started)
    _ensure_role(remote, ident)
    keys = {k: v for k, v in (("identity", identity), ("passphrase", passphrase)) if v is not None}
    restored = _load_dump(remote, into, source_, report, keys)
    counts = _counts_frame(source_.expected, restored)
    if not counts["ok"].all():
        _drop(remote, ident + SCRATCH_SUFFIX)
        bad = counts[~counts["ok"]]
        raise backups.BackupFailed(f"The restored row counts differ from {source_.label}'s: "
                                   + ", ".join(f"{r.table} {r.restored} (expected {r.expected})" for r in bad.itertuples())
                                   + ". Nothing was replaced.", "Try another backup; run a drill on this one.")
    result = RestoreResult(into, source_.label, counts, replaced=exists)
    try:
        if deployed:
            with step(report, "Stop the app", "so nothing writes while its data is replaced"):
                compose.run_app(remote, into, ["stop"], reporter=report, timeout=300)
        if exists:
            result.pre_restore_backup = backups.now(into, remote, reporter=report, kind="pre-restore")["id"]
        with step(report, "Swap the databases", f"{ident}{SCRATCH_SUFFIX} becomes {ident}"):
            psql.run_sql(remote, _swap_sql(ident, exists))
    except BaseException:
        _drop(remote, ident + SCRATCH_SUFFIX)
        if deployed:
            compose.run_app(remote, into, ["start"], reporter=report, timeout=300, check=False)
        raise
    if deployed:
        with step(report, "Start the app"):
            compose.run_app(remote, into, ["start"], reporter=report, timeout=300)
    result.seconds = time.monotonic() - started
    report(LogLine(f"restored {source_.label} into {into}: {int(counts['restored'].fillna(0).sum())} rows", "restore"))
    return result


def _restore_zip(remote, app, into, source_, deployed, exists, report, started) -> RestoreResult:
    if not deployed:
        raise ValidationError(f"An export zip loads into an app's own tables, and {into!r} is not deployed.",
                              "Deploy the experiment under that name first (or pass the zip as the deploy's "
                              "archive), then restore.", code="invalid.restore.zip_needs_app")
    result = RestoreResult(into, source_.label, pd.DataFrame(), replaced=exists)
    with step(report, "Stop the app", "so nothing writes while its data is replaced"):
        compose.run_app(remote, into, ["stop"], reporter=report, timeout=300)
    try:
        result.pre_restore_backup = backups.now(into, remote, reporter=report, kind="pre-restore")["id"]
        restored = load_zip(remote, into, source_, replace=True, report=report)
    finally:
        compose.run_app(remote, into, ["start"], reporter=report, timeout=300, check=False)
    result.counts = _counts_frame(source_.expected, restored)
    result.seconds = time.monotonic() - started
    if not result.ok:
        report(WarningEvent("Some restored row counts differ from the export's.", "See the result's counts."))
    return result


def load_archive(remote, app: str, path: Union[str, Path], processes, report: Reporter) -> pd.DataFrame:
    """A new app's data from an archive, as Dallinger's `--archive` does (deploy's archive step):
    a dump in place of its new, empty database (before launch); an export zip into the tables
    the app made when it launched, replacing what launch wrote there. Its processes are stopped
    meanwhile. Returns the row counts, checked against the archive's."""
    source = local_source(path)
    if source.kind == "zip":
        compose.run_app(remote, app, ["stop", *processes], reporter=report, timeout=300)
        try:
            restored = load_zip(remote, app, source, replace=True, report=report)
        finally:
            compose.run_app(remote, app, ["start", *processes], reporter=report, timeout=300)
    else:
        ident = names.db_identifier(app)
        restored = _load_dump(remote, app, source, report)
        compose.run_app(remote, app, ["stop", *processes], reporter=report, timeout=300)
        try:
            psql.run_sql(remote, _swap_sql(ident, True))
        finally:
            compose.run_app(remote, app, ["start", *processes], reporter=report, timeout=300)
    counts = _counts_frame(source.expected, restored)
    if not counts["ok"].all():
        bad = counts[~counts["ok"]]
        raise backups.BackupFailed("The loaded row counts differ from the archive's: " + ", ".join(
            f"{r.table} {r.restored} (expected {r.expected})" for r in bad.itertuples()) + ".",
            "Check the archive (load it with export.load_export) and deploy again under a new name.")
    report(LogLine(f"loaded {source.label}: {int(counts['restored'].fillna(0).sum())} rows", "archive"))
    return counts
