"""How many participants are working right now, per app: what update, restart and destroy
look at before they touch a live study, and what `monitor.status(participants=True)` shows.

Dallinger and PsyNet keep every participant in their `participant` table, with
status 'working' while one takes part. Other apps name their own count: a `working_query`
(one SELECT returning one integer) kept in the app's deploy.json on the server. An app with
neither is unknown (None), never a guessed 0.

Every app is read in one psql run (one round trip, after one that reads the apps' deploy.json):
psql hops from database to database with `\\connect`, each read in a READ ONLY transaction
that is rolled back, with a statement timeout. A failed read gives None and the reason,
never an exception, so `status` keeps working while a database is sick.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import pandas as pd

from .. import names
from ..commands import apps as app_commands, postgres
from ..errors import LabdeployError, Remedy, UnknownApp, ValidationError
from ..progress import LogLine, Reporter, WarningEvent, null_reporter, step
from ..redaction import redact
from ..server import appstate, layout, psql
from ..ssh import pool

STATE_KEY = "working_query"  # in the app's deploy.json
QUERY_MAX_CHARS = 2000
STATEMENT_TIMEOUT_S = 10  # one app's read; a slow count must not hold up status
DEFAULT_IDLE_TIMEOUT = 600.0
DEFAULT_POLL = 5.0
SOURCE_TABLE, SOURCE_QUERY = "participant table", "working_query"


class ParticipantsWorking(LabdeployError):
    """Participants are taking part right now, so the operation was not started."""

    code = "participants.working"


class IdleTimeout(LabdeployError):
    """Participants were still working when the wait for none ran out."""

    code = "participants.wait_timeout"


@dataclass(frozen=True)
class Reading:
    """One app's answer: `working` participants (None: unknown), where it came from
    (SOURCE_TABLE, SOURCE_QUERY, or "" when the app has no way to tell) and, when unknown, why."""

    app: str
    working: Optional[int]
    source: str = ""
    reason: str = ""

    def describe(self) -> str:
        if self.working is not None:
            return f"{self.working} participant{'' if self.working == 1 else 's'} working in {self.app}"
        return f"working participants in {self.app} unknown: {self.reason}"


def check_query(sql) -> str:
    """A working_query as it may be stored and run: one read-only SELECT (or WITH ... SELECT),
    no ';', no backslash (psql would run it as a command), at most QUERY_MAX_CHARS."""
    if not isinstance(sql, str) or not sql.strip():
        raise ValidationError("The working_query is empty or not text.",
                              "Give one SELECT that returns the number of working participants as one integer.",
                              code="invalid.working_query")
    query = sql.strip()
    problems = [what for char, what in ((";", "a ';'"), ("\\", "a backslash"), ("\0", "a NUL character"))
                if char in query]
    if problems:
        raise ValidationError(f"The working_query holds {' and '.join(problems)}; it must be exactly one SELECT.",
                              "Leave out the ';' at the end and any second statement.", code="invalid.working_query")
    if query.split(None, 1)[0].lower() not in ("select", "with"):
        raise ValidationError("The working_query must be a SELECT (or WITH ... SELECT): it only reads.",
                              "Count the working participants with one SELECT that returns one integer.",
                              code="invalid.working_query")
    if len(query) > QUERY_MAX_CHARS:
        raise ValidationError(f"The working_query is longer than {QUERY_MAX_CHARS} characters.",
                              "Keep it to one short SELECT.", code="invalid.working_query")
    return query


def remembered_query(given: Optional[str], state: Optional[dict]) -> str:
    """What deploy.json keeps: the query given now ("" clears it), else the app's last one."""
    if given is not None:
        return check_query(given) if given.strip() else ""
    return str((state or {}).get(STATE_KEY) or "")


# ------------------------------------------------------------------ the psql script (pure)

def _literal(text: str) -> str:
    # The query travels as a string literal: an unbalanced quote or comment in it can't
    # reach the rest of the script, and psql interpolates no variables inside quotes.
    return "'" + text.replace("'", "''") + "'"


def _table_count(ident: str, mark: str) -> str:
    # Dallinger/PsyNet's table; in the app's own schema if it has one, else public.
    schema = ("SELECT n.nspname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
              "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'participant' "
              "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attname = 'status' AND NOT a.attisdropped "
              "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
              f"ORDER BY n.nspname = '{ident}' DESC, n.nspname = 'public' DESC, n.nspname LIMIT 1")
    return "\n".join([
        f"SELECT s IS NOT NULL AS ld_has, coalesce(s, '') AS ld_schema FROM ({schema}) AS found (s) \\gset",
        "\\if :ld_has",
        "SELECT 'count=' || count(*) FROM :\"ld_schema\".participant WHERE status = 'working';",
        "\\else",
        f"\\echo {mark} none",
        "\\endif",
    ])


def _query_count(ident: str, query: str) -> str:
    # query_to_xml runs the text as one query; the first column of the first row becomes the
    # count, cast to bigint in PostgreSQL so only digits (or an error) come back. As the app's
    # role with its search path: the query sees what the app sees.
    return "\n".join([
        f"SET LOCAL ROLE {ident};",
        f"SET LOCAL search_path = {ident}, public;",
        "SELECT 'count=' || coalesce(((xpath('/table/row[1]/*[1]/text()', "
        f"query_to_xml({_literal(query)}, true, false, '')))[1]::text)::bigint::text, 'null');",
    ])


def psql_script(plan: dict[str, str], token: str) -> str:
    """The psql script that reads every app of `plan` (app -> its working_query, "" for the
    participant table) from its own database. Markers carry `token`, which no query sees."""
    mark = f"@@{token}"
    lines = ["\\set QUIET on", "\\pset pager off", "\\pset format unaligned", "\\pset tuples_only on"]
    for app, query in plan.items():
        ident = names.db_identifier(app)
        body = _query_count(ident, query) if query else _table_count(ident, mark)
        lines += [
            f"\\echo {mark} app {app}",
            f"SELECT EXISTS (SELECT FROM pg_database WHERE datname = '{ident}' AND datallowconn) AS ld_db \\gset",
            "\\if :ld_db",
            f"\\connect {ident}",
            "BEGIN TRANSACTION READ ONLY;",
            f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT_S}s';",
            "SET LOCAL lock_timeout = '5s';",
            body,
            "\\if :ERROR",
            f"\\echo {mark} error :LAST_ERROR_MESSAGE",
            "\\endif",
            "ROLLBACK;",
            "\\else",
            f"\\echo {mark} nodb",
            "\\endif",
        ]
    return "\n".join(lines) + "\n"


def parse(stdout: str, stderr: str, plan: dict[str, str], token: str) -> dict[str, Reading]:
    """Each planned app's Reading from the script's output (pure)."""
    mark = f"@@{token} "
    found: dict[str, list[str]] = {}
    current: Optional[list[str]] = None
    for line in stdout.splitlines():
        if line.startswith(mark + "app "):
            current = found.setdefault(line[len(mark) + 4:].strip(), [])
        elif current is not None:
            current.append(line[len(mark) - 1:].strip() if line.startswith(mark) else line)
    # psql stops at a failed \connect: apps after it have no section; its own words say why.
    why = redact((stderr or "").strip().splitlines()[-1] if (stderr or "").strip() else "no answer from PostgreSQL")
    out = {}
    for app, query in plan.items():
        source = SOURCE_QUERY if query else SOURCE_TABLE
        out[app] = _judge(app, source, found.get(app), why)
    return out


def _judge(app: str, source: str, lines: Optional[list[str]], why: str) -> Reading:
    if lines is None:
        return Reading(app, None, source, f"not read ({why})")
    for i, line in enumerate(lines):
        if line.startswith("error"):  # everything after the marker is PostgreSQL's message
            text = " ".join([line[5:].strip(), *lines[i + 1:]]).strip()
            return Reading(app, None, source, f"reading failed: {redact(text)[:500]}")
    for line in lines:
        if line == "nodb":
            return Reading(app, None, source, "the app has no database on the server")
        if line == "none":
            return Reading(app, None, "", "no participant table and no working_query")
        if line == "count=null":
            return Reading(app, None, source, "the working_query returned no number")
        if line.startswith("count=") and line[6:].isdigit():
            return Reading(app, int(line[6:]), source)
    return Reading(app, None, source, "no answer from PostgreSQL")


# ------------------------------------------------------------------ reading

def plan_of(states: dict[str, dict], apps: Iterable[str]) -> tuple[dict[str, str], dict[str, Reading]]:
    """(app -> query to send, app -> Reading already known) from the apps' deploy.json (pure):
    a stored query that is no longer valid is not sent, and says so."""
    plan, known = {}, {}
    for app in apps:
        stored = (states.get(app) or {}).get(STATE_KEY) or ""
        try:
            plan[app] = check_query(stored) if stored else ""
        except ValidationError as exc:
            known[app] = Reading(app, None, SOURCE_QUERY, f"the stored working_query can't be used: {exc.message}")
    return plan, known


def _states(remote) -> dict[str, dict]:
    _stack, states, _locks = app_commands.read_listing(remote.run(app_commands.listing(), check=False, timeout=60).stdout)
    return {app: state for app, state in states.items() if names.is_app_name(app)}


def count(remote, plan: dict[str, str]) -> dict[str, Reading]:
    """Run the planned reads in one psql (see `psql_script`); a failure gives None for each app."""
    if not plan:
        return {}
    token = secrets.token_hex(8)
    argv = postgres.psql(psql.database_name("dallinger"), stop_on_error=False, app_name="labdeploy-participants")
    try:
        res = remote.run(argv, stdin=psql_script(plan, token).encode(), check=False,
                         timeout=60 + STATEMENT_TIMEOUT_S * len(plan))
    except LabdeployError as exc:
        return {app: Reading(app, None, SOURCE_QUERY if q else SOURCE_TABLE, f"not read ({exc.message})")
                for app, q in plan.items()}
    return parse(res.stdout, res.stderr, plan, token)


def read(remote, apps: Optional[Iterable[str]] = None) -> dict[str, Reading]:
    """A Reading per app (`apps`, or every app with a folder on the server); two round trips."""
    try:
        states = _states(remote)
    except LabdeployError as exc:
        return {app: Reading(app, None, "", f"not read ({exc.message})") for app in (apps or [])}
    wanted = sorted(states) if apps is None else [names.app_name(a) for a in apps]
    plan, known = plan_of(states, wanted)
    return {**known, **count(remote, plan)}


@pool.closes_what_it_opens
def readings(server, apps: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """One row per app: app, working (Int64, <NA> when unknown), source, reason."""
    found = read(pool.remote(server), apps)
    df = pd.DataFrame([(r.app, r.working, r.source, r.reason) for r in found.values()],
                      columns=["app", "working", "source", "reason"])
    df["working"] = pd.array(df["working"], dtype="Int64")
    return df.sort_values("app", ignore_index=True)


@pool.closes_what_it_opens
def working(server, app: str, *, reporter: Optional[Reporter] = None) -> Optional[int]:
    """How many participants of `app` are working now; None when that can't be known (the
    reason goes to `reporter` as a warning)."""
    app = names.app_name(app)
    found = read(pool.remote(server), [app])[app]
    if found.working is None:
        (reporter or null_reporter)(WarningEvent(found.describe()))
    return found.working


@pool.closes_what_it_opens
def working_all(server) -> dict[str, Optional[int]]:
    """Working participants of every app on the server (None: unknown), in two round trips."""
    return {app: r.working for app, r in read(pool.remote(server)).items()}


@pool.closes_what_it_opens
def wait_idle(server, app: str, timeout: float = DEFAULT_IDLE_TIMEOUT, *, poll: float = DEFAULT_POLL,
              reporter: Optional[Reporter] = None) -> Optional[int]:
    """Wait until no participant of `app` is working (0), at most `timeout` seconds, reading
    every `poll` seconds. Returns 0, or None at once for an app that can't tell (no participant
    table, no working_query; reported as a warning). Raises IdleTimeout when time runs out
    with participants still working or the count unreadable."""
    app = names.app_name(app)
    if not float(timeout) > 0 or not float(poll) > 0:
        raise ValidationError(f"timeout={timeout!r} and poll={poll!r} must be above 0.",
                              "Give the longest wait in seconds, e.g. 600.", code="invalid.wait_idle")
    reporter = reporter or null_reporter
    remote = pool.remote(server)
    deadline = time.monotonic() + float(timeout)
    with step(reporter, "wait until no participant works", f"{app}, at most {float(timeout):.0f} s"):
        plan, known = plan_of(_states(remote), [app])  # the query is read once, then counted each poll
        last = None
        while True:
            found = known.get(app) or count(remote, plan)[app]
            if found.working == 0:
                reporter(LogLine(found.describe(), "participants"))
                return 0
            if found.working is None and not found.source:
                reporter(WarningEvent(found.describe() + "; not waiting"))
                return None
            if found != last:
                reporter(LogLine(found.describe(), "participants"))
                last = found
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout(app, float(timeout), found)
            time.sleep(min(float(poll), left))


def _timeout(app: str, timeout: float, found: Reading) -> IdleTimeout:
    now = (f"{found.working} still working" if found.working is not None
           else f"the count could not be read ({found.reason})")
    return IdleTimeout(f"Waited {timeout:.0f} s for the participants of {app} to finish; {now}. Nothing was changed.",
                       remedy=Remedy("participants.wait_timeout", app=app))


def refuse_if_working(found: Reading, doing: str) -> None:
    """Raise ParticipantsWorking when `found` counts participants at work (None does not refuse)."""
    if found.working:
        n = found.working
        raise ParticipantsWorking(
            f"{n} participant{' is' if n == 1 else 's are'} working in {found.app} right now, so it was not "
            f"{doing}: they would lose their session.",
            remedy=Remedy("destroy.participants_working", app=found.app))


# ------------------------------------------------------------------ status and the stored query

def attach(status: pd.DataFrame, found: dict[str, Reading]) -> pd.DataFrame:
    """`status` rows with their app's `working` (Int64, <NA> when unknown); the reasons for
    unknown counts in attrs["working_unknown"] (pure)."""
    out = status.copy()
    out["working"] = pd.array([found[a].working if a in found else None for a in out["app"]], dtype="Int64")
    out.attrs.update(status.attrs)
    out.attrs["working_unknown"] = {a: r.reason for a, r in found.items() if r.working is None}
    return out


@pool.closes_what_it_opens
def set_working_query(server, app: str, sql: Optional[str]) -> None:
    """Keep `sql` as the app's working_query in its deploy.json on the server (None or "": the
    app goes back to its participant table, or unknown). Checked before anything is sent."""
    from ..server.locks import DeployLock

    app = names.app_name(app)
    query = check_query(sql) if sql and sql.strip() else ""
    remote = pool.connect(server)
    with DeployLock(remote, app, operation="set working_query"):
        state = appstate.read_state(remote, app)
        if state is None:
            raise UnknownApp(f"The app {app!r} has no deploy state on the server.",
                             "Deploy the app first; the query is kept with it.", code="app.unknown")
        state[STATE_KEY] = query
        remote.put_bytes(layout.app_state(app), json.dumps(state, indent=2, sort_keys=True) + "\n")
