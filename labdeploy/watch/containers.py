"""App containers on the server: status, logs, stats, exec and restart, as DataFrames.

Every labdeploy app container carries the labels `labdeploy.app` and `labdeploy.service`, so
one `docker` call sees all apps at once; no per-app round trips and no compose project
folder needed (containers are found by label, whichever Compose version named them).
"""

from __future__ import annotations

import datetime as _dt
import re
import shlex
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

import pandas as pd

from .. import names
from ..commands import containers as commands, docker
from ..errors import (CommandFailed, ConnectionLost, LabdeployError, Remedy, RemoteError, UnknownApp,
                      ValidationError)
from ..progress import LogLine, Reporter, WarningEvent, null_reporter
from ..redaction import redact
from ..ssh import pool

APP_LABEL = docker.APP_LABEL
SERVICE_LABEL = docker.SERVICE_LABEL
COMPOSE_SERVICE_LABEL = docker.COMPOSE_SERVICE_LABEL
NOT_FOUND_EXIT = commands.NOT_FOUND  # the scripts' "no such container" exit status; docker never uses it

STATUS_COLUMNS = ["app", "service", "container", "state", "health", "uptime", "image", "restarts",
                  "exit_code", "started_at", "id", "memory_limit", "cpu_limit"]
LOG_COLUMNS = ["time", "service", "line"]


class UnknownService(LabdeployError):
    """The app has no container for this service."""

    code = "service.unknown"


class ServiceNotRunning(LabdeployError):
    """The service's container exists but is stopped or restarting."""

    code = "service.not_running"


class CommandNotFound(LabdeployError):
    """The command does not exist (or cannot be executed) inside the container."""

    code = "exec.command_not_found"


class RestartTimeout(LabdeployError):
    """Restarted services did not come back up in time."""

    code = "service.restart_timeout"


def docker_error(res, doing: str) -> LabdeployError:
    """A failed docker command on the server, explained (no docker, no permission, daemon down)."""
    err = (res.stderr or res.stdout).strip()
    tail = "\n".join(err.splitlines()[-10:])
    if res.exit_status == 127 or "docker: not found" in err or "command not found" in err:
        return LabdeployError(f"Can't {doing}: Docker is not installed on the server (or not on the PATH).",
                              "Install Docker Engine on the server (https://docs.docker.com/engine/install/), "
                              "then check the server again.", code="server.docker.missing")
    if "permission denied" in err.lower() and "docker" in err.lower():
        return LabdeployError(f"Can't {doing}: the login user may not use Docker on the server.",
                              "Add the user to the 'docker' group on the server (`sudo usermod -aG docker USER`), "
                              "then log in again.", code="server.docker.permission")
    if "Cannot connect to the Docker daemon" in err or "Is the docker daemon running" in err:
        return LabdeployError(f"Can't {doing}: Docker is not running on the server.",
                              "Start it on the server (`sudo systemctl start docker`).", code="server.docker.not_running")
    return CommandFailed(f"Can't {doing} (exit status {res.exit_status}):\n{tail}",
                         "Read the error above; it comes from Docker on the server.",
                         exit_status=res.exit_status, stdout=res.stdout, stderr=res.stderr,
                         code="remote.docker.failed")


def _app_first(app, server, fn: str):
    """(app, Remote) for the app-level functions, which take the app first like
    `deploy.destroy(app, server)`. A Remote/Server given first (the order of `status(server,
    app)`) is taken as meant: app names are always strings, so that is unambiguous."""
    if not isinstance(app, str) and isinstance(server, str):
        app, server = server, app
    if not isinstance(app, str):
        raise ValidationError(f"{fn}() needs an app name, got {type(app).__name__}.", code="invalid.app_argument",
                              remedy=Remedy("api.app_first", call=fn))
    return names.app_name(app), pool.remote(server)


# ------------------------------------------------------------------ status

def _docker_time(text: str):
    if not text or text.startswith("0001-01-01"):
        return pd.NaT
    ts = pd.Timestamp(text)
    return ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")


def parse_status(output: str) -> pd.DataFrame:
    """The status DataFrame from `commands.containers.status`'s output (pure; unit-tested)."""
    clock, found = commands.read_status(output)
    now = pd.Timestamp(clock, unit="s", tz="UTC") if clock is not None else pd.Timestamp.now(tz="UTC")
    rows = []
    for d in found:
        st = d.get("st") or {}
        d["state"], d["exit_code"] = st.get("Status", ""), st.get("ExitCode", 0)
        d["health"] = (st.get("Health") or {}).get("Status", "")
        started = _docker_time(st.get("StartedAt") or "")
        running = d["state"] == "running"
        rows.append({
            "app": d.get("app") or "", "service": d.get("service") or "", "container": d["name"].lstrip("/"),
            "state": d["state"], "health": d.get("health") or "",
            # Seconds first: a column of nothing but NaT would be taken for datetimes.
            "uptime": (now - started).total_seconds() if running and started is not pd.NaT else None,
            "image": d.get("image") or "", "restarts": int(d.get("restarts") or 0),
            "exit_code": int(d.get("exit_code") or 0), "started_at": started, "id": d["id"][:12],
            # The container's own limits (labdeploy.app.limits); none shows as <NA> / NaN.
            "memory_limit": int(d.get("memory") or 0) or None, "cpu_limit": int(d.get("nano_cpus") or 0) / 1e9 or None,
        })
    df = pd.DataFrame(rows, columns=STATUS_COLUMNS)
    df["uptime"] = pd.to_timedelta(pd.to_numeric(df["uptime"]), unit="s")
    df["started_at"] = pd.to_datetime(df["started_at"], utc=True)
    df["memory_limit"] = df["memory_limit"].astype("Int64")
    df["cpu_limit"] = df["cpu_limit"].astype(float)
    df = df.sort_values(["app", "service", "container"], ignore_index=True)
    df.attrs["server_time"] = now
    return df


@pool.closes_what_it_opens
def status(server, app: Optional[str] = None, *, jobs: bool = False, backups: bool = False,
           participants: bool = False) -> pd.DataFrame:
    """Every labdeploy app's containers: app, service, state, health, uptime, image, ...,
    memory_limit (bytes) and cpu_limit (CPUs): the container's limits, empty for none.

    All apps in one round trip. With `app`, only that app's rows; an app without containers
    raises `UnknownApp`. With `jobs`, the worker rows also get `jobs_queued`, `jobs_started`
    and `jobs_failed` from the app's rq queues (one more round trip). With `backups`, every row
    also gets its app's `last_backup`, `last_good_drill` and `backup_warning` (one more). With
    `participants`, every row gets its app's `working` participants (Int64, <NA> when unknown;
    the reasons in attrs["working_unknown"]; two more).
    """
    remote = pool.remote(server)
    if app is not None:
        names.app_name(app)
    res = remote.run(commands.status(), timeout=60, check=False)
    if res.exit_status != 0:
        # A container removed between `docker ps` and `docker inspect` is no error.
        other = [ln for ln in res.stderr.splitlines() if ln.strip() and "No such object" not in ln]
        if other or not res.stdout.strip():
            raise docker_error(res, "list the app containers")
    df = parse_status(res.stdout)
    if jobs:
        from . import jobs as rq_jobs

        df = rq_jobs.attach(df, rq_jobs.counts(remote, app))
    if backups:
        from . import backups as backup_health

        df = backup_health.attach(df, backup_health.read(remote, None if app is None else [app]))
    if participants:
        from . import participants as working

        shown = [a for a in dict.fromkeys(df["app"]) if names.is_app_name(a) and (app is None or a == app)]
        df = working.attach(df, working.read(remote, shown))
    if app is None:
        return df
    return _only_app(df, app)


def _only_app(df: pd.DataFrame, app: str) -> pd.DataFrame:
    sub = df[df["app"] == app].reset_index(drop=True)
    if sub.empty:
        known = sorted(set(df["app"]))
        raise UnknownApp(
            f"The server has no containers for the app {app!r}.",
            ("Check the name; apps on this server: " + ", ".join(known) + ".") if known else
            "No labdeploy app runs on this server yet: deploy one first.")
    sub.attrs.update(df.attrs)
    return sub


def _check_service(df: pd.DataFrame, app: str, service: str) -> pd.DataFrame:
    names.service(service)
    rows = df[df["service"] == service]
    if rows.empty:
        raise UnknownService(f"The app {app!r} has no service {service!r}.",
                             "Use one of its services: " + ", ".join(sorted(set(df["service"]))) + ".")
    return rows


def _diagnose(remote, app: str, service: Optional[str], doing: str) -> LabdeployError:
    """After a fast path found nothing: say exactly why (unknown app / service / not running)."""
    df = _only_app(status(remote), app)  # raises UnknownApp
    if service is not None:
        rows = _check_service(df, app, service)  # raises UnknownService
        state = rows.iloc[0]["state"]
        if state == "restarting":
            return ServiceNotRunning(
                f"Can't {doing}: {service} of {app} is restarting over and over (it crashes on start; "
                f"{int(rows.iloc[0]['restarts'])} restarts so far).",
                code="service.crashing", remedy=Remedy("service.crashing", app=app, service=service))
        return ServiceNotRunning(f"Can't {doing}: {service} of {app} is {state}, not running.",
                                 remedy=Remedy("service.start", app=app, service=service))
    return UnknownApp(f"The app {app!r} has no containers.", "Deploy it first.", code="app.unknown")


# ------------------------------------------------------------------ exec

@dataclass
class ExecResult:
    app: str
    service: str
    command: list
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def __str__(self) -> str:
        return self.stdout + (self.stderr if self.stderr else "")


_NOT_FOUND_RE = re.compile(r"executable file not found|no such file or directory|permission denied", re.I)


@pool.closes_what_it_opens
def exec_(app: str, server, service: str, command: Union[str, Sequence[str]], *,
          stdin: Union[bytes, str, None] = None, timeout: Optional[float] = 300,
          check: bool = False, redact_secrets: bool = True) -> ExecResult:
    """Run a command in a service's container, like the seed's `docker compose exec web ...`.

    `command` is an argv list, or a string run by `sh -c` in the container. No TTY; `stdin`
    (bytes/str) is sent over the SSH channel. Returns output and exit status; with
    `check=True` a non-zero exit raises `CommandFailed`. Secrets in the output are masked
    (`redact`) unless `redact_secrets=False`.
    """
    app, remote = _app_first(app, server, "exec_")
    names.service(service)
    argv = commands.in_shell(command) if isinstance(command, str) else [str(c) for c in command]
    if not argv or not argv[-1 if isinstance(command, str) else 0]:
        raise LabdeployError("The command is empty.", "Type a command to run, e.g. 'ls -la' or 'env'.",
                             code="invalid.exec.command")
    res = remote.run(commands.exec_in(app, service, argv, stdin is not None), stdin=stdin,
                     timeout=timeout, check=False)
    if res.exit_status == NOT_FOUND_EXIT:
        raise _diagnose(remote, app, service, "run a command")
    # Docker's own message (on stdout without -i, on stderr with it), not the command's output.
    runtime_msg = next((t for t in (res.stderr, res.stdout) if t.startswith("OCI runtime exec failed")), "")
    if res.exit_status in (126, 127) and _NOT_FOUND_RE.search(runtime_msg):
        raise CommandNotFound(
            f"{argv[0]!r} can't be run in {service} of {app}: "
            + ("it is not installed there." if "not found" in runtime_msg or "no such file" in runtime_msg.lower()
               else "it is not an executable program."),
            "Check the spelling; the container has only what its image installs. Try 'ls /usr/bin' or "
            "pass the command as a string to run it through the container's shell.")
    if check and res.exit_status != 0:
        raise CommandFailed(f"`{shlex.join(argv)}` exited with status {res.exit_status} in {service} of {app}:\n"
                            f"{redact(res.stderr.strip()[-2000:] or res.stdout.strip()[-2000:])}",
                            "Read the command's output above.", argv=argv, exit_status=res.exit_status,
                            stdout=redact(res.stdout), stderr=redact(res.stderr), code="exec.command_failed")
    clean = redact if redact_secrets else (lambda t: t)
    return ExecResult(app, service, argv, res.exit_status, clean(res.stdout), clean(res.stderr))


# ------------------------------------------------------------------ logs

@dataclass(frozen=True)
class LogEntry:
    time: object  # pandas Timestamp (UTC) or NaT
    service: str
    line: str

    def __str__(self) -> str:
        return f"{self.service} | {self.line}"


_SINCE_RE = re.compile(r"^(\d+(\.\d+)?|(\d+(\.\d+)?[smh])+|\d{4}-\d\d-\d\d([T ][0-9:.]+)?(Z|[+-]\d\d:?\d\d)?)$")


def since_arg(since) -> Optional[str]:
    """`since` as docker understands it: '10m', '2h30m', an RFC 3339 time, a datetime, a timedelta."""
    if since is None:
        return None
    if isinstance(since, (_dt.timedelta, pd.Timedelta)):
        return f"{max(pd.Timedelta(since).total_seconds(), 0):.0f}s"
    if isinstance(since, (_dt.datetime, pd.Timestamp)):
        ts = pd.Timestamp(since)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(since, str) and _SINCE_RE.match(since.strip()):
        return since.strip()
    raise LabdeployError(f"Can't read {since!r} as a start time for logs.",
                         "Use e.g. '10m', '2h', '2026-01-31T12:00:00Z', a datetime or a timedelta.",
                         code="invalid.logs.since")


def parse_log_line(raw: str) -> LogEntry:
    """'web 2026-...Z text' -> LogEntry (secrets in the text masked by `redact`)."""
    raw = redact(raw)
    service, _, rest = raw.partition(" ")
    stamp, sep, line = rest.partition(" ")
    try:
        t = pd.Timestamp(stamp)
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    except (ValueError, TypeError):
        return LogEntry(pd.NaT, service, rest)  # a line docker itself wrote, without a time
    return LogEntry(t, service, line if sep else "")


def entries_frame(entries: Iterable[LogEntry]) -> pd.DataFrame:
    df = pd.DataFrame([(e.time, e.service, e.line) for e in entries], columns=LOG_COLUMNS)
    df["time"] = pd.to_datetime(df["time"], utc=True)
    # Services' lines come interleaved by arrival; order by time (stable keeps each stream's order).
    return df.sort_values("time", kind="stable", ignore_index=True)


class _UntilStopped:
    """stdin for a follow command: blocks until `stop` is set, then reads as end-of-file."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def read(self, n: int = -1) -> bytes:
        self.stop.wait()
        return b""


@pool.closes_what_it_opens
def logs(app: str, server, service: Optional[str] = None, *, tail: Union[int, str] = 200, since=None,
         follow: bool = False, on_line: Optional[Callable[[LogEntry], None]] = None,
         stop: Optional[threading.Event] = None, as_frame: bool = True, max_lines: int = 100_000,
         reconnect: bool = True, reporter: Optional[Reporter] = None):
    """Logs of one or all services of an app: a DataFrame (time, service, line) or lines.

    `follow=True` streams new lines to `on_line` until `stop` is set (or the containers end);
    a dropped SSH connection is reported and the stream resumes where it left off. At most
    `max_lines` lines are kept for the returned value (older ones are dropped).
    """
    from collections import deque

    app, remote = _app_first(app, server, "logs")
    if service is not None:
        names.service(service)
    if not (tail == "all" or (isinstance(tail, int) and tail >= 0)):
        raise LabdeployError(f"tail={tail!r} is not a line count.", "Use a number such as 200, or 'all'.",
                             code="invalid.logs.tail")
    reporter = reporter or null_reporter
    stop = stop or threading.Event()
    since_s = since_arg(since)
    kept: deque[LogEntry] = deque(maxlen=max_lines)
    last_time = None
    seen_at_last: set = set()  # lines already shown at `last_time`, to skip them after a resume

    resume_at = None  # after a reconnect: lines before this time were shown already

    def handle(raw: str, stream: str) -> None:
        nonlocal last_time, seen_at_last
        entry = parse_log_line(raw)
        if entry.time is not pd.NaT and resume_at is not None:
            if entry.time < resume_at or (entry.time == resume_at and (entry.service, entry.line) in seen_at_last):
                return
        if entry.time is not pd.NaT:
            if last_time is None or entry.time > last_time:
                last_time, seen_at_last = entry.time, set()
            seen_at_last.add((entry.service, entry.line))
        kept.append(entry)
        if on_line is not None:
            on_line(entry)

    delay = 1.0
    while True:
        try:
            res = remote.run(commands.logs(app, service, tail, since_s, follow), on_line=handle, check=False,
                             stop=stop if follow else None, stdin=_UntilStopped(stop) if follow else None,
                             timeout=None if follow else 120)
        except (ConnectionLost, RemoteError) as exc:
            if not (follow and reconnect) or stop.is_set() or not _is_connection_problem(exc):
                raise
            reporter(WarningEvent(f"The connection to the server dropped while following the logs of {app}; "
                              "reconnecting…", str(getattr(exc, "hint", ""))))
            if stop.wait(delay):
                break
            delay = min(delay * 2, 10.0)
            # Resume from the newest line already seen; `handle` drops the repeats.
            resume_at = last_time
            tail, since_s = "all", (since_arg(last_time) if last_time is not None else since_s)
            continue
        if res.exit_status == NOT_FOUND_EXIT:
            raise _diagnose(remote, app, service, "read the logs")
        if res.exit_status not in (0, 143, -1) and not kept and not stop.is_set():
            raise CommandFailed(f"Reading the logs of {app} failed:\n{res.stderr.strip()[-2000:]}",
                                "Try again; if it persists, check Docker on the server.",
                                exit_status=res.exit_status, stderr=res.stderr, code="logs.failed")
        break
    df = entries_frame(kept)
    if as_frame:
        return df
    return [f"{s} | {line}" for s, line in zip(df["service"], df["line"])]


def _is_connection_problem(exc: BaseException) -> bool:
    from ..errors import ConnectTimeout, HostUnreachable

    return isinstance(exc, (ConnectionLost, HostUnreachable, ConnectTimeout)) or "connection" in str(exc).lower()


# ------------------------------------------------------------------ stats

STATS_COLUMNS = ["app", "service", "container", "cpu_percent", "mem_bytes", "mem_limit_bytes", "mem_percent",
                 "net_rx_bytes", "net_tx_bytes", "block_read_bytes", "block_write_bytes", "pids"]
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 1024, "mib": 1024 ** 2,
          "gib": 1024 ** 3, "tib": 1024 ** 4}
_SIZE_RE = re.compile(r"^\s*([0-9.]+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> float:
    """'1.5MiB' -> 1572864.0, '1.2kB' -> 1200.0, '--' -> nan."""
    m = _SIZE_RE.match(text or "")
    if not m:
        return float("nan")
    value = float(m.group(1)) * _UNITS.get(m.group(2).lower() or "b", float("nan"))
    return value if value != value else float(round(value))  # whole bytes (nan stays nan)


def _pair(text: str) -> tuple[float, float]:
    a, _, b = (text or "").partition("/")
    return parse_size(a), parse_size(b)


def _percent(text: str) -> float:
    try:
        return float((text or "").strip().rstrip("%"))
    except ValueError:
        return float("nan")


def parse_stats(output: str) -> pd.DataFrame:
    """The stats DataFrame from `commands.containers.stats`'s output (pure; unit-tested)."""
    found, labels = commands.read_stats(output)
    rows = []
    for d in found:
        cid = (d.get("ID") or d.get("Container") or "")[:12]
        app, svc = labels.get(cid, ("", ""))
        mem, mem_limit = _pair(d.get("MemUsage", ""))
        rx, tx = _pair(d.get("NetIO", ""))
        br, bw = _pair(d.get("BlockIO", ""))
        try:
            pids = int(d.get("PIDs") or 0)
        except ValueError:
            pids = 0
        rows.append({"app": app, "service": svc, "container": d.get("Name", ""),
                     "cpu_percent": _percent(d.get("CPUPerc")), "mem_bytes": mem, "mem_limit_bytes": mem_limit,
                     "mem_percent": _percent(d.get("MemPerc")), "net_rx_bytes": rx, "net_tx_bytes": tx,
                     "block_read_bytes": br, "block_write_bytes": bw, "pids": pids})
    return pd.DataFrame(rows, columns=STATS_COLUMNS).sort_values(["app", "service", "container"], ignore_index=True)


@pool.closes_what_it_opens
def stats(server, app: Optional[str] = None) -> pd.DataFrame:
    """CPU, memory, network and block I/O of every running container (shared stack included:
    its `app` is empty). One round trip (`docker stats --no-stream` samples for ~1-2 s)."""
    remote = pool.remote(server)
    if app is not None:
        names.app_name(app)
    res = remote.run(commands.stats(), timeout=120, check=False)
    if res.exit_status != 0:
        raise docker_error(res, "read the containers' resource use")
    df = parse_stats(res.stdout)
    if app is not None:
        df = df[df["app"] == app].reset_index(drop=True)
        if df.empty:
            _only_app(status(remote), app)  # unknown app -> UnknownApp; else just not running
    return df


# ------------------------------------------------------------------ restart

def _is_up(row, settle: float = 0.0) -> bool:
    """Running (and healthy, if it has a health check) for at least `settle` seconds: a
    process that crashes on start is "running" for an instant, which is not up."""
    return (row["state"] == "running" and row["health"] in ("", "healthy")
            and row["uptime"] is not pd.NaT and row["uptime"] >= pd.Timedelta(seconds=settle))


def _participants_first(remote, app: str, wait: bool, idle_timeout: float, reporter: Optional[Reporter]):
    """Say how many participants work in the app before it restarts; with `wait`, wait until
    none does (participants.wait_idle). Returns the count read first (None: unknown)."""
    from . import participants

    found = participants.read(remote, [app])[app]
    (reporter or null_reporter)(LogLine(found.describe(), "participants") if found.working is not None
                                else WarningEvent(found.describe()))
    if wait and found.working != 0 and (found.working is not None or found.source):
        participants.wait_idle(remote, app, idle_timeout, reporter=reporter)
    return found.working


def _switch_web(remote, app: str, timeout: float, reporter: Optional[Reporter]):
    """The web process restarted without a dropped request: a fresh container from the same
    compose file, switched to once healthy (labdeploy.server.webswitch). None when nothing
    serves through Caddy now (then `docker restart` loses nothing)."""
    from ..server import appstate, webcheck, webswitch

    path = (appstate.read_state(remote, app) or {}).get("health_path") or "/"
    host = f"{app}.localhost"
    try:
        return webswitch.switch(remote, app, gate=lambda port: webcheck.healthy(port, host, path, 30), host=host,
                                start_timeout=timeout, reporter=reporter)
    except webswitch.NoLiveWeb:
        return None


@pool.closes_what_it_opens
def restart(app: str, server, services: Optional[Iterable[str]] = None, *, timeout: float = 120,
            stop_timeout: int = 10, settle: float = 2.0, wait_idle: bool = False, idle_timeout: float = 600,
            reporter: Optional[Reporter] = None) -> pd.DataFrame:
    """Restart an app's web / worker / clock (the seed's remedy), then wait until they are up:
    running (and healthy if they have a health check) for `settle` seconds. Returns the app's
    status afterwards, with attrs["working_before"]: the participants working when it began.

    It first reports how many participants are working; with `wait_idle=True` it waits until
    none is (at most `idle_timeout` seconds, then raises participants.IdleTimeout and restarts
    nothing)."""
    from ..server.layout import PROCESS_SERVICES
    from ..progress import step

    if isinstance(services, str):
        services = [services]
    for s in services or ():
        names.service(s)  # checked before anything reaches the server
    if wait_idle and not float(idle_timeout) > 0:
        raise ValidationError(f"idle_timeout={idle_timeout!r} must be above 0.", "Give the longest wait in seconds.",
                              code="invalid.wait_idle")
    app, remote = _app_first(app, server, "restart")
    df = status(remote, app)
    wanted = list(services) if services is not None else [s for s in PROCESS_SERVICES if s in set(df["service"])]
    if not wanted:
        raise UnknownService(f"The app {app!r} has none of the services web, worker, clock.",
                             code="service.none_to_restart", remedy=Remedy("restart.services", app=app))
    rows = pd.concat([_check_service(df, app, s) for s in wanted])
    working_before = _participants_first(remote, app, wait_idle, idle_timeout, reporter)
    before = df.attrs["server_time"]
    with step(reporter, f"restart {', '.join(wanted)} of {app}"):
        new_web = _switch_web(remote, app, timeout, reporter) if "web" in wanted else None
        if new_web is not None:  # a fresh web container took over: the others restart in place
            rows = rows[rows["service"] != "web"]
        ids = list(rows["id"])
        if ids:
            remote.run(docker.restart(ids, stop_timeout), timeout=timeout)
        ids += [new_web.id[:12]] if new_web is not None else []  # status() shows short ids
    deadline = time.monotonic() + timeout
    with step(reporter, "wait until up"):
        while True:
            now_df = status(remote, app)
            mine = now_df[now_df["id"].isin(ids)]
            fresh = mine["started_at"] >= before - pd.Timedelta(seconds=1)
            if len(mine) == len(ids) and all(_is_up(r, settle) for _, r in mine.iterrows()) and bool(fresh.all()):
                now_df.attrs["working_before"] = working_before
                return now_df
            if time.monotonic() > deadline:
                down = [f"{r['service']} ({r['state']}{', ' + r['health'] if r['health'] else ''}"
                        f"{', restarted ' + str(r['restarts']) + ' times' if r['restarts'] else ''})"
                        for _, r in mine.iterrows() if not _is_up(r, settle)]
                raise RestartTimeout(
                    f"After {timeout:.0f} s these services of {app} are not up again: "
                    f"{', '.join(down) or 'some containers disappeared'}.",
                    remedy=Remedy("restart.timeout", app=app))
            time.sleep(0.5)


# ------------------------------------------------------------------ a failure's last lines

FAILURE_TAIL = 40  # lines of each process shown with a failed deploy


def failure_logs(remote, app: str, tail: int = FAILURE_TAIL) -> str:
    """The last lines of each of the app's processes (Redis left out), for a failure message;
    secrets in them are masked."""
    from ..commands import appstate

    return redact(remote.run(appstate.logs_tail(app, tail), check=False, timeout=60).stdout.strip())
