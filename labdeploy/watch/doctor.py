"""`doctor(server)`: one report on a server that runs a study, each line with what to do.

Readiness, every app's processes, disk and memory, database connections, backups, alerts and
deploy locks, gathered with the functions that answer each on its own; a part that cannot be
checked is a line of its own (the others still come).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from ..commands import doctor as commands
from ..server import alerts, layout, readiness
from ..ssh import pool
from . import backups, containers

COLUMNS = ["area", "subject", "ok", "detail", "what_to_do"]
DISK_MIN_FREE = 0.10
MEMORY_MAX_USED = 0.90
LOCK_OLD_S = 3600
FULL_SOON_DAYS = 14  # a disk that fills within this many days at its recent pace is a warning
TREND_MIN_HOURS = 1.0  # fewer hours of samples: no pace is judged
TREND_DAYS = 7  # the pace is fitted over at most this many recent days


def _row(area, subject, ok, detail, todo="") -> dict:
    return dict(zip(COLUMNS, (area, subject, bool(ok), detail, "" if ok else todo)))


def _readiness(remote) -> list[dict]:
    df = readiness.check(remote)
    bad = df[~df["ok"].astype(bool)]
    if bad.empty:
        return [_row("readiness", "server", True, f"all {len(df)} checks pass")]
    return [_row("readiness", r.check, False, r.detail, r.hint or "See the readiness check's advice.")
            for r in bad.itertuples()]


def _apps(remote) -> list[dict]:
    df = containers.status(remote)
    if df.empty:
        return [_row("apps", "(none)", True, "no app is deployed")]
    rows = []
    for r in df.itertuples():
        ok = r.state == "running" and str(getattr(r, "health", "") or "") != "unhealthy"
        rows.append(_row("apps", f"{r.app} {r.service}", ok, f"{r.state} {getattr(r, 'health', '') or ''}".strip(),
                         "Restart the app's processes, and read this service's logs to see why it stopped."))
    return rows


def _host(remote) -> list[dict]:
    facts = commands.read_facts(remote.run(commands.facts(layout.locks_dir()), check=False).stdout)
    rows = []
    if "disk" in facts:
        size, free = facts["disk"]
        rows.append(_row("disk", "home folder's disk", free >= DISK_MIN_FREE * size,
                         f"{free / 1e9:.1f} GB free of {size / 1e9:.1f} GB ({100 * free / max(1, size):.0f}%)",
                         "Free space: remove old app images and build cache (pruning), old exports, "
                         "or give the server a larger disk."))
    if "mem" in facts:
        total, available = facts["mem"]
        used = 1 - available / max(1, total)
        rows.append(_row("memory", "server", used <= MEMORY_MAX_USED, f"{100 * used:.0f}% used of {total / 1e9:.1f} GB",
                         "Stop apps you no longer need, or give the server more memory."))
    for name, age in sorted(facts["locks"].items()):
        rows.append(_row("locks", name, age < LOCK_OLD_S, f"held for {age // 60} min",
                         "If no deploy or setup is running, it was left by one that crashed: break the app's lock."))
    if not facts["locks"]:
        rows.append(_row("locks", "(none)", True, "no deploy or setup is running"))
    return rows


def _backups(remote) -> list[dict]:
    df = backups.read(remote)
    if df.empty:
        return [_row("backups", "(none)", True, "no app to back up")]
    return [_row("backups", r.app, not r.warning, r.warning or f"{r.backups} backup(s), newest {r.last_backup}",
                 "Look at the app's backups and the backup service; run a backup now to see the error.")
            for r in df.itertuples()]


def _alerts(remote) -> list[dict]:
    now = alerts.check_now(remote)
    if not now.attrs.get("running"):
        return [_row("alerts", "watcher", False, "the alert watcher is not running",
                     "Prepare the server again: it starts the alert watcher.")]
    settings = alerts.read_settings(remote)
    channels = (["webhook"] if settings.webhook else []) + (["e-mail"] if settings.email else [])
    rows = [_row("alerts", "channels", bool(channels), ", ".join(channels) or "no channel set: nobody is told",
                 "Set a webhook URL or an e-mail address for alerts.")]
    rows += [_row("alerts" if not r.key.startswith("connections") else "connections", r.key, False, r.text,
                  "See the line about the same subject above; the watcher reports it until it is fixed.")
             for r in now.itertuples()]
    if not any(r.key.startswith("connections") for r in now.itertuples()):
        rows.append(_row("connections", "database", True, f"under {settings.connections_max_pct:.0f}% of every limit"))
    return rows


def trend_rows(usage: pd.DataFrame) -> list[dict]:
    """How fast the disk fills and how high memory went, from the watcher's samples (pure)."""
    if usage.empty:
        return [_row("trend", "disk and memory", True, "no samples yet: the alert watcher records them")]
    recent = usage[usage["time"] >= usage["time"].max() - pd.Timedelta(days=TREND_DAYS)]
    hours = (recent["time"] - recent["time"].min()).dt.total_seconds() / 3600
    span = float(hours.max())
    mem = recent["mem_used_pct"]
    rows = [_row("trend", "memory", float(mem.max()) <= 100 * MEMORY_MAX_USED,
                 f"{mem.iloc[-1]:.0f}% used now; over the last {_span(span)}: peak {mem.max():.0f}%, "
                 f"mean {mem.mean():.0f}%", "Memory came near its limit: stop apps you no longer need, "
                 "lower the apps' memory limits, or give the server more memory.")]
    free = float(recent["disk_free_gb"].iloc[-1])
    if len(recent) < 3 or span < TREND_MIN_HOURS:
        rows.append(_row("trend", "disk", True, f"{free:.1f} GB free; {len(recent)} sample(s) over {_span(span)}: "
                                                f"a pace needs {TREND_MIN_HOURS:g} h of samples"))
        return rows
    per_day = float(np.polyfit(hours, recent["disk_free_gb"], 1)[0]) * 24
    if per_day >= -0.01:
        return rows + [_row("trend", "disk", True, f"{free:.1f} GB free, steady over the last {_span(span)}")]
    days = free / -per_day
    return rows + [_row("trend", "disk", days > FULL_SOON_DAYS,
                        f"{free:.1f} GB free, falling {-per_day:.2f} GB a day over the last {_span(span)}: "
                        f"full in about {days:.0f} days", "The disk fills before the study is likely to end: "
                        "remove unused app images (pruning) and old exports, or give the server a larger disk.")]


def _span(hours: float) -> str:
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _trend(remote) -> list[dict]:
    return trend_rows(alerts.usage(remote))


PARTS: list[tuple[str, Callable]] = [("readiness", _readiness), ("apps", _apps), ("disk and memory", _host),
                                     ("trend", _trend), ("backups", _backups), ("alerts", _alerts)]


@pool.closes_what_it_opens
def doctor(server) -> pd.DataFrame:
    """One row per thing looked at: area, subject, ok, detail, what_to_do (empty when ok)."""
    remote = pool.remote(server)
    rows: list[dict] = []
    for name, part in PARTS:
        try:
            rows += part(remote)
        except Exception as exc:  # noqa: BLE001 - a part that fails is reported, the others still run
            rows.append(_row(name, "(check)", False, f"could not be checked: {str(exc)[:300]}",
                             "Check the server's connection and Docker, then run the report again."))
    return pd.DataFrame(rows, columns=COLUMNS)
