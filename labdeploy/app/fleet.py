"""Every registered server at once: one DataFrame with a `server` column, and where a new app fits.

Each server is asked over its own SSH connection, all of them at the same time (one thread per
server), so N servers take about as long as the slowest one rather than the sum. A server that
does not answer (down, unreachable, its key changed, Docker stopped) becomes a row saying so
(`answered` False, `error` the reason), never an exception that hides the others.

`place()` judges where a new app fits best by the seed's rule (about 5 GB of memory per
simultaneous experiment), the memory and disk each server has free now, and the apps already
running there; `deploy(..., server="auto")` uses it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import pandas as pd

from ..commands import hostfacts
from ..errors import LabdeployError, ValidationError
from ..server import readiness
from ..ssh import concurrent, pool, servers as registry
from ..watch import containers, pgactivity
from . import apps as app_list

AUTO = "auto"  # the server "name" that asks deploy() to choose
GB = readiness.GB
PER_APP_GB = readiness.RAM_PER_EXPERIMENT_GB
MIN_DISK_GB = readiness.MIN_DISK_GB
FRONT = ["server", "answered", "error"]  # every fleet table starts with these
USAGE_COLUMNS = FRONT + ["host", "memory_total_gb", "memory_free_gb", "disk_free_gb", "apps", "apps_running",
                         "room", "seconds"]


class NoServers(LabdeployError):
    """No server is registered (or none of those named is)."""

    code = "fleet.empty"


def _servers(names: Optional[Iterable[str]]) -> list:
    """The registered servers to ask: all of them, or those named (unknown names refused first)."""
    known = registry.list_servers()
    if names is None:
        chosen = known
    else:
        wanted = list(dict.fromkeys(names))
        chosen = [registry.get(n) for n in wanted]  # ServerNotFound names the registered ones
    if not chosen:
        raise NoServers("No server is registered, so there is no fleet to ask.",
                        "Register your servers first (name, address, user).")
    return chosen


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(text.split())[:500]


def _ask_one(server, remote, ask: Callable) -> pd.DataFrame:
    """One server's rows (its own connection), or one row saying why it did not answer; its
    time in attrs["seconds"]."""
    started = time.monotonic()
    try:
        remote.connect()
        df = ask(remote).copy()
    except Exception as exc:  # noqa: BLE001 - one server's failure must not hide the others
        df = pd.DataFrame([{"server": server.name, "answered": False, "error": _reason(exc)}])
    else:
        df.insert(0, "server", server.name)
        df.insert(1, "answered", True)
        df.insert(2, "error", "")
    df.attrs = {"seconds": round(time.monotonic() - started, 3)}
    return df


def gather(ask: Callable, servers: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """`ask(remote)` (a function returning a DataFrame) on every registered server at once; the
    rows together, `server`, `answered` and `error` first. attrs: `servers` asked,
    `not_answering`, `seconds` (each server's time)."""
    chosen = _servers(servers)
    with pool.scope() as owner:
        remotes = [owner.get(s) for s in chosen]  # built here: a worker thread has no pool of its own
        frames = concurrent.together(*(lambda s=s, r=r: _ask_one(s, r, ask) for s, r in zip(chosen, remotes)))
    # A server that answered with no rows (no apps) has none here; attrs say it answered.
    rows = [f for f in frames if len(f)]
    columns = list(dict.fromkeys(c for f in frames for c in f.columns))
    df = pd.concat(rows, ignore_index=True, sort=False).reindex(columns=columns) if rows \
        else pd.DataFrame(columns=columns or FRONT)
    df["answered"] = df["answered"].astype(bool)
    df["error"] = df["error"].fillna("")
    df.attrs = {"servers": [s.name for s in chosen],
                "not_answering": sorted(set(df.loc[~df["answered"], "server"])),
                "seconds": {s.name: f.attrs["seconds"] for s, f in zip(chosen, frames)}}
    return df


def apps(servers: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Every server's apps (as apps.apps gives them), with a `server` column."""
    return gather(app_list.apps, servers)


def status(servers: Optional[Iterable[str]] = None, **kw) -> pd.DataFrame:
    """Every server's app containers (as monitor.status gives them, with its keyword arguments:
    jobs, backups, participants), with a `server` column."""
    return gather(lambda remote: containers.status(remote, **kw), servers)


def pg_activity(servers: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """Every server's PostgreSQL client connections (pg_stat_activity), with a `server` column
    and that server's `max_connections`."""
    def ask(remote) -> pd.DataFrame:
        snap = pgactivity.snapshot(remote, persistent=False)
        df = snap.activity.copy()
        df["max_connections"] = snap.max_connections
        return df

    return gather(ask, servers)


# ---------------------------------------------------------------------------- room for apps

def _meminfo(lines: list) -> dict:
    found = {}
    for line in lines:
        m = re.match(r"(\w+):\s+(\d+)", line)
        if m:
            found[m.group(1)] = int(m.group(2)) * 1024
    return found


def _disk_free(lines: list) -> int:
    try:
        return int((lines or [""])[0].split()[3]) * 1024
    except (IndexError, ValueError):
        return 0


def room(memory_total: float, memory_free: float, disk_free: float, running: int) -> int:
    """How many more experiments fit (pure): the 5 GB rule on the total, less the apps running
    there (each keeps its share though it may use less just now), bounded by the memory free
    now; none when the disk has less than the advised minimum free."""
    if disk_free < MIN_DISK_GB * GB:
        return 0
    by_rule = int(memory_total // (PER_APP_GB * GB)) - int(running)
    by_free = int(memory_free // (PER_APP_GB * GB))
    return max(0, min(by_rule, by_free))


def usage_row(facts: dict, listing: pd.DataFrame) -> dict:
    """One server's figures from its host facts and its apps table (pure)."""
    mem = _meminfo(facts.get("meminfo", []))
    total, free, disk = mem.get("MemTotal", 0), mem.get("MemAvailable", 0), _disk_free(facts.get("disk", []))
    running = int((listing["state"].isin(["running", "degraded"])).sum()) if len(listing) else 0
    return {"memory_total_gb": round(total / GB, 1), "memory_free_gb": round(free / GB, 1),
            "disk_free_gb": round(disk / GB, 1), "apps": len(listing), "apps_running": running,
            "room": room(total, free, disk, running)}


def _usage_of(remote) -> pd.DataFrame:
    text, listing = concurrent.together(lambda: remote.run(hostfacts.facts(), check=False, timeout=60).stdout,
                                        lambda: app_list.apps(remote))
    return pd.DataFrame([{"host": remote.host, **usage_row(hostfacts.read_facts(text), listing)}])


def _with_seconds(df: pd.DataFrame) -> pd.DataFrame:
    df["seconds"] = df["server"].map(df.attrs["seconds"])
    return df


def usage(servers: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """One row per server: memory (total, free now), disk free, apps deployed and running, and
    `room`: how many more experiments fit by the 5 GB rule."""
    found = gather(_usage_of, servers)
    df = _with_seconds(found).reindex(columns=USAGE_COLUMNS)
    df.attrs = found.attrs
    for column in ("apps", "apps_running", "room"):
        df[column] = df[column].astype("Int64")
    return df


# ---------------------------------------------------------------------------- placement

@dataclass
class Placement:
    server: str
    reason: str  # one line: why this server
    usage: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)  # what it was judged from

    def __str__(self) -> str:
        return self.reason


class NoRoom(LabdeployError):
    """No registered server has room for another experiment (or none answered)."""

    code = "fleet.no_room"


def choose(table: pd.DataFrame) -> Placement:
    """The server with the most room in a usage table (pure): most room, then most memory free,
    then most disk free, then fewest apps running, then the name (so the choice is stable)."""
    answered = table[table["answered"]] if len(table) else table
    fits = answered[answered["room"].fillna(0) > 0] if len(answered) else answered
    if not len(fits):
        silent = sorted(set(table.loc[~table["answered"], "server"])) if len(table) else []
        why = f"; not answering: {', '.join(silent)}" if silent else ""
        raise NoRoom(f"No registered server has room for another experiment (about {PER_APP_GB} GB of memory and "
                     f"{MIN_DISK_GB} GB of disk each){why}.",
                     "Stop or destroy an experiment that is finished, or register a server with more memory.")
    ranked = fits.assign(_neg_running=-fits["apps_running"]).sort_values(
        ["room", "memory_free_gb", "disk_free_gb", "_neg_running", "server"],
        ascending=[False, False, False, False, True])
    best = ranked.iloc[0]
    others = ", ".join(f"{r.server} {int(r.room)}" for r in ranked.iloc[1:].itertuples()) or "no other server"
    silent = sorted(set(table.loc[~table["answered"], "server"]))
    reason = (f"{best.server}: room for {int(best.room)} more experiment{'s' if best.room != 1 else ''} "
              f"({best.memory_free_gb:g} GB memory free of {best.memory_total_gb:g}, {best.disk_free_gb:g} GB disk free, "
              f"{int(best.apps_running)} app{'s' if best.apps_running != 1 else ''} running; "
              f"~{PER_APP_GB} GB each); others: {others}"
              + (f"; not answering: {', '.join(silent)}" if silent else ""))
    return Placement(str(best.server), reason, table)


def place(servers: Optional[Iterable[str]] = None) -> Placement:
    """Where a new app fits best among the registered servers (asked at once), with the reason."""
    return choose(usage(servers))


def check_server_argument(server) -> None:
    """`server="auto"` is the fleet's choice; a server registered under that name would be ambiguous."""
    if isinstance(server, str) and server == AUTO and AUTO in {s.name for s in registry.list_servers()}:
        raise ValidationError("A server is registered under the name 'auto', which also means "
                              "'choose the server for me'.", "Register that server under another name.",
                              code="invalid.server_auto")
