"""SQL on the server's shared PostgreSQL, through `docker exec` (no port, no password).

The SQL travels on stdin, never on the command line. psql runs inside the container over its
local socket as the superuser `dallinger` (trusted there), with ON_ERROR_STOP so a failing
statement makes the whole call fail.

These are labdeploy's own tools, for SQL that labdeploy writes: `run_sql` runs a whole psql
script (several statements, backslash commands) as the superuser, so it must never be given
text from a user. `query_df` takes one plain SELECT and refuses anything else before sending
it. A researcher's own SQL goes through `labdeploy.export.query` (the app's read-only role).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Optional

import pandas as pd

from ..commands import postgres
from ..errors import CommandFailed, LabdeployError, Remedy, ValidationError

_DB_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class SQLError(LabdeployError):
    """PostgreSQL rejected the SQL, or is not reachable."""

    code = "sql.failed"


def database_name(name: str) -> str:
    if not isinstance(name, str) or not _DB_RE.fullmatch(name):
        raise ValidationError(f"The database name {name!r} is not valid.",
                              "Use 'dallinger' or an app's database (app_ and the app's name with '_' for '-').",
                              code="invalid.database_name")
    return name


def psql_argv(database: str = "dallinger", *extra: str) -> list[str]:
    """The command that runs psql inside the PostgreSQL container, reading SQL from stdin."""
    return postgres.psql(database_name(database), *extra)


def _fail(exc: CommandFailed, database: str) -> SQLError:
    err = (exc.stderr or exc.stdout or "").strip()
    low = err.lower()
    if "no such container" in low or "is not running" in low:
        return SQLError("The shared PostgreSQL container is not running on the server.",
                        code="stack.postgres.not_running", remedy=Remedy("stack.prepare"))
    if "does not exist" in low and f'database "{database}"' in err:
        return SQLError(f"The database {database!r} does not exist on the server.",
                        "Check the app name; the app may have been destroyed or never deployed.",
                        code="sql.database.unknown")
    if "permission denied" in low and "docker" in low:
        return SQLError("This login may not use Docker on the server.",
                        "Add the user to the server's docker group (`sudo usermod -aG docker USER`).",
                        code="server.docker.permission")
    return SQLError(f"PostgreSQL reported an error:\n{err[-2000:]}", "Check the SQL statement.", code="sql.failed")


def run_sql(remote, sql: str, database: str = "dallinger", *, timeout: Optional[float] = 300) -> str:
    """Run a psql script of labdeploy's own (one or more statements, psql's backslash commands)
    as the superuser and return psql's plain output. Never pass text a user typed."""
    argv = psql_argv(database)
    try:
        return remote.run(argv, stdin=sql.encode(), timeout=timeout).stdout
    except CommandFailed as exc:
        raise _fail(exc, database) from exc


# PostgreSQL types (as \gdesc names them) -> how the DataFrame column is converted.
_INT_TYPES = {"smallint", "integer", "bigint", "oid"}
_FLOAT_TYPES = {"real", "double precision", "numeric"}


def _convert(df: pd.DataFrame, types: dict) -> pd.DataFrame:
    for col, typ in types.items():
        if col not in df.columns:
            continue
        base = typ.split("(")[0].strip()
        if base in _INT_TYPES:
            df[col] = pd.array(df[col], dtype="Int64")
        elif base in _FLOAT_TYPES:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        elif base == "boolean":
            df[col] = pd.array(df[col], dtype="boolean")
        elif base.startswith("timestamp"):
            df[col] = pd.to_datetime(df[col], utc="with time zone" in typ, format="ISO8601")
    return df


def single_select(sql: str) -> str:
    """The statement query_df may send: one statement, no psql backslash command. psql would
    run a `\\` command itself (`\\!` starts a shell in the container) and splits statements at
    ';', so both are refused outright (also inside quotes: these are labdeploy's own queries,
    and a rule without exceptions can't be fooled by quoting)."""
    if not isinstance(sql, str):
        raise ValidationError("The query is not text.", "Give a SELECT statement as a string.", code="invalid.query")
    query = sql.strip().rstrip(";").strip()
    if not query:
        raise ValidationError("The query is empty.", "Give a SELECT statement.", code="invalid.query")
    for char, what in (("\\", "a backslash (psql would run it as a command)"),
                       (";", "a ';' between statements"), ("\0", "a NUL character")):
        if char in query:
            raise ValidationError(f"The query holds {what}; query_df runs exactly one plain statement.",
                                  code="invalid.query.statements",
                                  remedy=Remedy("query.one_select"))
    return query


def query_df(remote, sql: str, database: str = "dallinger", *, timeout: Optional[float] = 300) -> pd.DataFrame:
    """Run one SELECT (or WITH ... SELECT) as the superuser, in a read-only transaction, and
    return its rows as a DataFrame. Refused before anything is sent unless it is one statement
    without backslash commands (see single_select).

    Rows come back as JSON (types kept, NULL kept apart from ''), column names and types from
    psql's \\gdesc, so an empty result still has its columns.
    """
    query = single_select(sql)
    separator = f"__labdeploy_rows_follow_{secrets.token_hex(8)}__"
    script = (
        "\\set QUIET on\n\\pset pager off\n\\pset format unaligned\n\\pset tuples_only on\n\\pset fieldsep '\\t'\n"
        # Whatever the statement calls, it can't write: the transaction is read-only and rolled back.
        "BEGIN TRANSACTION READ ONLY;\n"
        f"{query}\n\\gdesc\n"
        f"\\echo {separator}\n"
        f"SELECT row_to_json(labdeploy_q) FROM (\n{query}\n) AS labdeploy_q;\n"
        "ROLLBACK;\n"
    )
    out = run_sql(remote, script, database, timeout=timeout)
    head, sep, body = out.partition(separator + "\n")
    if not sep:
        raise SQLError("psql's answer could not be read.", "Check that the statement is a single SELECT.",
                       code="sql.answer_unreadable")
    types: dict[str, str] = {}
    columns: list[str] = []
    for line in head.splitlines():
        if "\t" in line:
            name, typ = line.split("\t", 1)
            columns.append(name)
            types[name] = typ
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        # Rows travel as JSON objects, where a repeated name would silently keep one value.
        raise ValidationError(f"The query returns several columns named {', '.join(dupes)}.",
                              "Give each column its own name with AS, e.g. `select a.id as a_id, b.id as b_id`.",
                              code="invalid.query.duplicate_columns")
    rows = [json.loads(line) for line in body.splitlines() if line.strip()]
    df = pd.DataFrame.from_records(rows, columns=columns) if rows else pd.DataFrame({c: [] for c in columns})
    return _convert(df, types)
