"""How an app's backups are doing, read from the server in one round trip: the newest backup,
the last run and drill, the schedule, and a warning when something needs the researcher
(no backup yet, the newest older than twice the interval, the last run or drill failed, the
backup service not running). `monitor.status` and the monitor panel show it per app."""

from __future__ import annotations

import json
from typing import Optional

import pandas as pd

from .. import names
from ..commands import backups as commands
from ..server import backupservice
from ..ssh import pool

COLUMNS = ["app", "every_minutes", "backups", "last_backup", "backup_age_s", "last_run_ok", "last_run_error",
           "last_drill", "last_drill_ok", "last_good_drill", "warning"]


def _json(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _when(epoch) -> Optional[pd.Timestamp]:
    return pd.Timestamp(int(epoch), unit="s", tz="UTC") if str(epoch or "").isdigit() else None


def _every(text: str, default: Optional[int]) -> Optional[int]:
    value = text.partition("=")[2] if text else ""
    if value == "off":
        return None
    return int(value) if value.isdigit() else default


def _ago(seconds: float) -> str:
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _warning(row: dict, service: bool) -> str:
    every = row["every_minutes"]
    if every is None:
        return "backups are off for this app"
    if not service:
        return "the backup service is not running: prepare the server again"
    if not row["last_run_ok"] and row["last_run_error"]:
        return f"the last backup failed: {row['last_run_error']}"
    if row["last_drill_ok"] is False:
        return "the last restore drill failed: the newest backup may not restore"
    age = row["backup_age_s"]
    if age is None:
        return "no backup yet" if row["last_run_ok"] is not None else ""
    if age > 2 * every * 60:
        return f"the newest backup is {_ago(age)} old (every {every} min was asked)"
    return ""


def read(remote, apps: Optional[list] = None) -> pd.DataFrame:
    """One row per app (every deployed app, or `apps`) with COLUMNS; attrs["service_running"]."""
    res = remote.run(commands.health(list(apps or [])), check=False, timeout=60)
    found, server = commands.read_health(res.stdout)
    if apps is None:
        apps = sorted(a for a in found if names.is_app_name(a))
    now = int(server.get("now") or 0)
    service = server.get("service") == "true"
    default = _every(server.get("conf", ""), backupservice.DEFAULT_EVERY_MINUTES)
    rows = []
    for app in apps:
        info = found.get(app, {})
        run, drill, good = _json(info.get("run", "")), _json(info.get("drill", "")), _json(info.get("gooddrill", ""))
        epoch = info.get("epoch")
        row = {
            "app": app, "every_minutes": _every(info.get("conf", ""), default),
            "backups": int(info.get("count") or 0) if str(info.get("count") or "").isdigit() else 0,
            "last_backup": _when(epoch), "backup_age_s": (now - int(epoch)) if str(epoch or "").isdigit() else None,
            "last_run_ok": run.get("ok"), "last_run_error": run.get("error", ""),
            "last_drill": _when(drill.get("epoch")), "last_drill_ok": drill.get("ok"),
            "last_good_drill": _when(good.get("epoch")),
        }
        row["warning"] = _warning(row, service)
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["service_running"] = service
    return df


@pool.closes_what_it_opens
def health(server, app: Optional[str] = None) -> pd.DataFrame:
    """The backup health of one app or of every deployed app (see `read`)."""
    return read(pool.remote(server), None if app is None else [app])


def attach(status: pd.DataFrame, health_df: pd.DataFrame) -> pd.DataFrame:
    """`status` rows with their app's last_backup, last_good_drill and backup_warning."""
    out = status.copy()
    by_app = {row.app: row for row in health_df.itertuples()}
    out["last_backup"] = [getattr(by_app.get(a), "last_backup", None) for a in out["app"]]
    out["last_good_drill"] = [getattr(by_app.get(a), "last_good_drill", None) for a in out["app"]]
    out["backup_warning"] = [getattr(by_app.get(a), "warning", "") or "" for a in out["app"]]
    out.attrs.update(status.attrs)
    out.attrs["backup_service_running"] = health_df.attrs.get("service_running")
    return out
