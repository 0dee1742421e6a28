"""PostgreSQL connections: a `pg_stat_activity` snapshot, a per-database summary against the
connection limits, and warnings before the server runs out of connections.

An app with its own pooler (labdeploy.pooler) reaches PostgreSQL only through it: its
connections are the pooler's (application_name "pgbouncer", column `via_pooler`), never
more than the pool size, and a busy app makes its requests wait for one instead of being
refused. Its warning says so rather than asking for a restart.

One snapshot is one round trip: the SQL goes on stdin to `docker exec -i <container> psql`
(local socket, no password), which answers CSV sections for activity, settings, roles and
databases. The container is a parameter so tests can use a PostgreSQL of their own.
"""

from __future__ import annotations

import io
import queue
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from ..server import layout
from .. import names
from ..server import pooler
from ..commands import postgres, sections
from ..ssh import pool as ssh_pool  # here "pool" alone is PgBouncer's
from ..redaction import redact_frame
from ..errors import LabdeployError, Remedy, RemoteError

DEFAULT_THRESHOLD = 0.8
_CONTAINER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MARK = "labdeploy-section:"

ACTIVITY_COLUMNS = ["pid", "user", "database", "client_address", "application_name", "backend_start", "state",
                    "state_change", "query_age", "state_age", "wait_event_type", "query"]
SUMMARY_COLUMNS = ["database", "app", "connections", "active", "idle", "idle_in_transaction", "other",
                   "via_pooler", "maintenance", "role_limit", "pct_of_role_limit", "pct_of_max"]

SNAPSHOT_SQL = f"""\\echo {_MARK}activity
select pid, usename as "user", datname as database, client_addr as client_address, application_name,
       backend_start, state, state_change, query_start, wait_event_type,
       regexp_replace(left(query, 300), '\\s+', ' ', 'g') as query
from pg_stat_activity
where backend_type = 'client backend' and pid <> pg_backend_pid();
\\echo {_MARK}settings
select now() as now, current_setting('max_connections')::int as max_connections,
       current_setting('superuser_reserved_connections')::int as reserved;
\\echo {_MARK}roles
select rolname as role, rolconnlimit as role_limit from pg_roles where rolcanlogin;
\\echo {_MARK}databases
select datname as database from pg_database where datallowconn and not datistemplate;
"""


class PostgresUnavailable(RemoteError):
    """The PostgreSQL container is not running, or not accepting connections."""

    code = "postgres.unavailable"


def container_name(name: str) -> str:
    if not isinstance(name, str) or not _CONTAINER_RE.fullmatch(name):
        raise LabdeployError(f"{name!r} is not a valid container name.",
                             f"Use the PostgreSQL container's name, normally {layout.POSTGRES_CONTAINER!r}.",
                             code="invalid.container_name")
    return name


def psql_argv(container: str = layout.POSTGRES_CONTAINER, superuser: str = layout.POSTGRES_SUPERUSER) -> list[str]:
    return postgres.psql("postgres", "-q", "--csv", container=container_name(container),
                         superuser=names.user(superuser))


def app_of_database(database) -> str:
    """'app_stroop_pilot' -> 'stroop-pilot' (app names have no '_', so this is exact); else ''."""
    if isinstance(database, str) and database.startswith("app_") and len(database) > 4:
        return database[4:].replace("_", "-")
    return ""


@dataclass
class Snapshot:
    """One look at the server's connections."""

    time: pd.Timestamp
    activity: pd.DataFrame
    max_connections: int
    reserved: int
    roles: pd.DataFrame = field(repr=False)
    databases: list = field(repr=False, default_factory=list)

    @property
    def total(self) -> int:
        return len(self.activity)

    def summary(self) -> pd.DataFrame:
        return summarize(self)

    def warnings(self, threshold: float = DEFAULT_THRESHOLD) -> list["ConnectionWarning"]:
        return connection_warnings(self, threshold)


def _csv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""], dtype=str)


def parse_snapshot(text: str) -> Snapshot:
    """Parse the CSV sections psql printed for SNAPSHOT_SQL (pure; unit-tested)."""
    parts = sections.parse(text, mark=_MARK)
    missing = {"activity", "settings", "roles", "databases"} - set(parts)
    if missing:
        raise LabdeployError("PostgreSQL's answer was incomplete (missing " + ", ".join(sorted(missing)) + ").",
                             "Try again; if it persists, check the PostgreSQL container's logs.",
                             code="postgres.answer_incomplete")
    settings = _csv(parts["settings"]).iloc[0]
    now = pd.Timestamp(settings["now"]).tz_convert("UTC")
    act = _csv(parts["activity"])
    for col in ("backend_start", "state_change", "query_start"):
        act[col] = pd.to_datetime(act[col], utc=True, format="ISO8601")
    act["pid"] = act["pid"].astype("int64")
    act["application_name"] = act["application_name"].fillna("")
    act["query_age"] = now - act["query_start"]
    act["state_age"] = now - act["state_change"]
    act = act[ACTIVITY_COLUMNS].sort_values(["database", "backend_start"], ignore_index=True, na_position="first")
    act = redact_frame(act, ["query"])  # e.g. an ALTER ROLE ... PASSWORD someone is running
    act.attrs["time"] = now
    roles = _csv(parts["roles"])
    roles["role_limit"] = roles["role_limit"].astype("int64")
    dbs = list(_csv(parts["databases"])["database"])
    return Snapshot(now, act, int(settings["max_connections"]), int(settings["reserved"]), roles, dbs)


def _unavailable(res, container: str) -> Optional[PostgresUnavailable]:
    err = (res.stderr or "").strip()
    low = err.lower()
    if "no such container" in low:
        return PostgresUnavailable(f"The PostgreSQL container {container!r} does not exist on the server.",
                                   code="stack.postgres.missing", remedy=Remedy("stack.prepare"))
    if "is not running" in low or "is restarting" in low or "is paused" in low:
        return PostgresUnavailable(f"PostgreSQL is down: its container {container!r} is not running.",
                                   code="stack.postgres.not_running", remedy=Remedy("stack.postgres.start"))
    if ("could not connect" in low or "connection to server" in low or "starting up" in low
            or "shutting down" in low or "no such file or directory" in low and "socket" in low):
        return PostgresUnavailable(f"PostgreSQL in {container!r} is not accepting connections (starting up, "
                                   "shutting down or crashed).",
                                   "Wait a few seconds and try again; if it persists read the container's logs "
                                   f"(`docker logs {container}`).", code="postgres.not_accepting")
    if "too many" in low and "connections" in low:
        return PostgresUnavailable("PostgreSQL refuses new connections: all connection slots are in use.",
                                   code="postgres.connections_full", remedy=Remedy("connections.restart_busiest"))
    return None


def _failed(res, container: str) -> LabdeployError:
    exc = _unavailable(res, container)
    if exc is not None:
        return exc
    from .containers import docker_error

    return docker_error(res, "read PostgreSQL's connections")


class _Ended(Exception):
    """The persistent psql ended; `error` says why."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Feed:
    """stdin of the persistent psql: hands over queued SQL; end-of-file on None."""

    def __init__(self) -> None:
        self.q: "queue.Queue[Optional[bytes]]" = queue.Queue()

    def read(self, n: int = -1) -> bytes:
        return self.q.get() or b""


class PersistentPsql:
    """A psql kept running in the PostgreSQL container, on one channel of the SSH connection.

    Each query is then a write and a read on an open channel (a few ms) instead of a new
    `docker exec` and psql start (~50-150 ms). It holds one superuser connection (those may
    use the reserved slots, so monitoring still works when apps have used up the others).
    Reopened by the next query after PostgreSQL or the SSH connection went away.
    """

    def __init__(self, remote, container: str = layout.POSTGRES_CONTAINER,
                 superuser: str = layout.POSTGRES_SUPERUSER) -> None:
        # Weakly: the per-connection cache must not keep a Remote alive that its owner dropped.
        self._remote = weakref.ref(remote)
        self.container, self.superuser = container_name(container), names.user(superuser)
        self._lock = threading.Lock()
        self._feed: Optional[_Feed] = None
        self._lines: "queue.Queue" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._seq = 0

    @property
    def remote(self):
        remote = self._remote()
        if remote is None:
            raise LabdeployError("The connection this PostgreSQL session belonged to is gone.",
                                 "Connect to the server again.", code="postgres.session_gone")
        return remote

    def _argv(self) -> list[str]:
        # stop_on_error off: one failing statement must not end the session
        return postgres.psql("postgres", "-q", "--csv", container=self.container, superuser=self.superuser,
                             stop_on_error=False, app_name="labdeploy-monitor")

    def _start(self) -> None:
        feed, lines = _Feed(), queue.Queue()

        def run() -> None:
            try:
                res = self.remote.run(self._argv(), stdin=feed, check=False,
                                      on_line=lambda line, stream: lines.put((stream, line)))
                lines.put(("exit", res))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting query
                # Without its traceback, whose frames would keep the Remote alive in the queue.
                lines.put(("error", exc.with_traceback(None)))
            finally:
                feed.q.put(None)  # ends the stdin feeder thread too

        self._feed, self._lines = feed, lines
        self._thread = threading.Thread(target=run, daemon=True, name=f"labdeploy-psql-{self.container}")
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def query(self, sql: str, timeout: float = 30) -> str:
        """Run SQL and return psql's stdout for it."""
        with self._lock:
            fresh = not self.alive
            if fresh:
                self._start()
            try:
                return self._query_locked(sql, timeout)
            except _Ended as ended:
                if fresh:
                    raise ended.error from None
            # The psql we had ended since the last query (PostgreSQL restarted, SSH dropped):
            # one more try on a new one says whether that works, or why not.
            self._start()
            try:
                return self._query_locked(sql, timeout)
            except _Ended as ended:
                raise ended.error from None

    def _query_locked(self, sql: str, timeout: float) -> str:
        self._seq += 1
        end = f"labdeploy-end:{self._seq}"
        self._feed.q.put((sql.rstrip() + f"\n\\echo {end}\n").encode())
        out, err = [], []
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, item = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._close_locked()
                raise PostgresUnavailable(f"PostgreSQL in {self.container!r} did not answer within {timeout:.0f} s.",
                                          "It may be overloaded; try again.", code="postgres.timeout") from None
            if kind == "stdout":
                if item == end:
                    break
                out.append(item)
            elif kind == "stderr":
                err.append(item)
            else:  # the psql (or the SSH channel) ended
                self._thread = None
                raise _Ended(_failed(item, self.container) if kind == "exit" else item)
        errors = [e for e in err if "ERROR" in e or "FATAL" in e]
        if errors:
            raise LabdeployError("PostgreSQL reported an error:\n" + "\n".join(errors[-10:]),
                                 "Try again; if it persists, check the PostgreSQL container's logs.",
                                 code="postgres.failed")
        return "\n".join(out) + "\n"

    def _close_locked(self) -> None:
        if self._feed is not None:
            self._feed.q.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread, self._feed = None, None

    def close(self) -> None:
        with self._lock:
            self._close_locked()


_psqls: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_psqls_lock = threading.Lock()


def persistent_psql(remote, container: str = layout.POSTGRES_CONTAINER,
                    superuser: str = layout.POSTGRES_SUPERUSER) -> PersistentPsql:
    """The persistent psql for this connection and container (made on first use)."""
    with _psqls_lock:
        per = _psqls.setdefault(remote, {})
        key = (container_name(container), superuser)
        if key not in per:
            per[key] = PersistentPsql(remote, container, superuser)
        return per[key]


def close_persistent_psql(remote) -> None:
    """End every persistent psql of a connection (frees their PostgreSQL connections)."""
    with _psqls_lock:
        per = _psqls.pop(remote, {})
    for s in per.values():
        s.close()


@ssh_pool.closes_what_it_opens
def snapshot(server, container: str = layout.POSTGRES_CONTAINER, *, superuser: str = layout.POSTGRES_SUPERUSER,
             persistent: bool = True, timeout: float = 30) -> Snapshot:
    """One `pg_stat_activity` snapshot with settings and limits, in one round trip.

    With `persistent` (the default) the SQL goes to a psql kept open on the connection
    (`PersistentPsql`); otherwise each call runs `docker exec -i <container> psql` afresh.
    """
    remote = ssh_pool.remote(server)
    if persistent:
        return parse_snapshot(persistent_psql(remote, container, superuser).query(SNAPSHOT_SQL, timeout))
    res = remote.run(psql_argv(container, superuser), stdin=SNAPSHOT_SQL.encode(), timeout=timeout, check=False)
    if res.exit_status != 0:
        raise _failed(res, container)
    return parse_snapshot(res.stdout)


def pg_activity(server, container: str = layout.POSTGRES_CONTAINER, **kw) -> pd.DataFrame:
    """The seed's `pg_stat_activity` query as a DataFrame: pid, user, database, client_address,
    application_name, backend_start, state, state_change, plus query_age and state_age.

    Client connections only, without this query's own. `attrs` carry max_connections."""
    snap = snapshot(server, container, **kw)
    df = snap.activity
    df.attrs.update(max_connections=snap.max_connections, time=snap.time)
    return df


def summarize(snap: Snapshot) -> pd.DataFrame:
    """Per database: connections, by state, against the role's limit and max_connections."""
    act = snap.activity
    limits = dict(zip(snap.roles["role"], snap.roles["role_limit"]))
    dbs = [d for d in snap.databases if d != "postgres"]
    dbs += sorted(set(act["database"].dropna()) - set(dbs))
    rows = []
    for db in dbs:
        mine = act[act["database"] == db]
        states = mine["state"].fillna("")
        limit = limits.get(db, -1)
        n = len(mine)
        # The backup service's (the superuser's): not the app's, and not against its role's limit.
        maint = int((mine["application_name"] == layout.BACKUP_APPLICATION_NAME).sum())
        rows.append({
            "database": db, "app": app_of_database(db), "connections": n,
            "active": int((states == "active").sum()), "idle": int((states == "idle").sum()),
            "idle_in_transaction": int(states.str.startswith("idle in transaction").sum()),
            "other": int((~states.isin(["active", "idle"]) & ~states.str.startswith("idle in transaction")).sum()),
            "via_pooler": int((mine["application_name"] == pooler.APPLICATION_NAME).sum()),
            "maintenance": maint,
            "role_limit": limit if limit >= 0 else pd.NA,
            "pct_of_role_limit": round(100.0 * (n - maint) / limit, 1) if limit > 0 else float("nan"),
            "pct_of_max": round(100.0 * n / snap.max_connections, 1),
        })
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    df["role_limit"] = pd.array(df["role_limit"], dtype="Int64")
    df = df.sort_values(["connections", "database"], ascending=[False, True], ignore_index=True)
    df.attrs.update(time=snap.time, total=snap.total, max_connections=snap.max_connections,
                    reserved=snap.reserved)
    return df


def pg_summary(server_or_snapshot, container: str = layout.POSTGRES_CONTAINER, **kw) -> pd.DataFrame:
    """`summarize` of a fresh snapshot (or of a Snapshot you already have)."""
    snap = server_or_snapshot if isinstance(server_or_snapshot, Snapshot) else snapshot(
        server_or_snapshot, container, **kw)
    return summarize(snap)


@dataclass(frozen=True)
class ConnectionWarning:
    kind: str        # "server" (near max_connections) or "app" (near its role's limit)
    message: str
    hint: str
    used: int
    limit: int
    apps: tuple = ()  # the apps holding most, most first

    def event(self):
        from ..progress import WarningEvent

        return WarningEvent(self.message, self.hint)


def _who(row) -> str:
    return row["app"] or row["database"]


def _restart_hint(who: str) -> str:
    """How to restart an app's processes, for the CLI and for Python (warnings reach both)."""
    return f"`labdeploy restart --app {who}` (or monitor.restart({who!r}, server) in Python)"


def _pool_size(limit) -> Optional[int]:
    try:
        return pooler.pool_size(int(limit))
    except (LabdeployError, TypeError, ValueError):
        return None


def connection_warnings(snap: Snapshot, threshold: float = DEFAULT_THRESHOLD) -> list[ConnectionWarning]:
    """Warnings when connections pass `threshold` of max_connections (naming the apps that
    hold most) or of an app role's own connection limit."""
    if not 0 < threshold <= 1:
        raise LabdeployError(f"threshold={threshold!r} is not a fraction.", "Use e.g. 0.8 for 80%.",
                             code="invalid.threshold")
    summ = summarize(snap)
    out = []
    total, limit = snap.total, snap.max_connections
    if total >= threshold * limit:
        top = summ[summ["connections"] > 0].head(3)
        holders = [f"{_who(r)} ({r['connections']})" for _, r in top.iterrows()]
        first = _who(top.iloc[0]) if len(top) else ""
        out.append(ConnectionWarning(
            "server",
            f"PostgreSQL has {total} of {limit} connections in use ({100 * total / limit:.0f}%). "
            + ("Most are held by " + ", ".join(holders) + "." if holders else ""),
            (f"Restart the web, worker and clock of {first}: {_restart_hint(first)} frees its connections. If "
             f"it fills up again, give it its own pooler (`labdeploy deploy --app {first} --update --pooler`), "
             "or lower its connection limit." if first else
             "Find the clients in pg_activity() (`labdeploy connections --all`) and close them."),
            total, limit, tuple(_who(r) for _, r in top.iterrows())))
    for _, r in summ.iterrows():
        lim = r["role_limit"]
        n = int(r["connections"]) - int(r["maintenance"])  # the app role's own, what its limit counts
        if lim is pd.NA or lim <= 0 or n < threshold * lim:
            continue
        who = _who(r)
        full = n >= lim
        pool = _pool_size(lim)
        if pool is not None and r["via_pooler"] == n and n <= pool:
            # Its pooler at work: at most `pool` connections, the app's requests queue for them.
            out.append(ConnectionWarning(
                "app",
                f"{who} uses {n} of its {lim} database connections, all through its pooler "
                f"(at most {pool} at a time)"
                + (": it is busy, so requests wait their turn for one (none is refused)."
                   if n >= pool else "."),
                f"Nothing needs restarting. If {who}'s pages get slow under load, give it more connections: "
                f"`labdeploy deploy --app {who} --update --connection-limit N` (or update(..., "
                "connection_limit=N)), keeping the sum over all apps below the server's max_connections.",
                n, int(lim), (who,)))
            continue
        out.append(ConnectionWarning(
            "app",
            f"{who} uses {n} of its {lim} database connections"
            + (" — it is at its limit: new connections of this app are refused." if full else "."),
            f"Restart its web, worker and clock: {_restart_hint(who)}. If that recurs, give it its own pooler "
            f"(`labdeploy deploy --app {who} --update --pooler`) or raise its connection limit.",
            n, int(lim), (who,)))
    return out
