"""The copy's data: the app's own rows, so a rehearsal measures the experiment at the size of
its real tables (a query over 5,000 participants is not one over none).

The app's latest backup on the server (or, when it has none, a fresh one taken now: pg_dump
only reads the app's database) is restored side by side into the copy's name, as
backup.restore does into any new name; the copy is then deployed reusing that data. The
simulated participants' rows are the only new rows, and they go with the copy's database
afterwards. `data="fresh"` always takes a new backup, `data="empty"` starts the copy empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from ..app import appdata
from ..data import backups, restore as data_restore
from ..errors import LabdeployError, ValidationError
from ..progress import LogLine, Reporter

CHOICES = ("latest", "fresh", "empty")


class NoDataToCopy(LabdeployError):
    """data="fresh" asked for the app's data, and the server holds none of it."""

    code = "rehearsal.no_data"


@dataclass
class CopyData:
    """What the copy started with: `source` in words ("empty", "backup <id> of <app>"),
    the backup used (`backup_id`, `fresh` when taken for the rehearsal) and `tables`
    (DataFrame: table, rows, as restored into the copy)."""

    source: str = "empty"
    backup_id: Optional[str] = None
    fresh: bool = False
    tables: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["table", "rows"]))

    @property
    def rows(self) -> int:
        return int(pd.to_numeric(self.tables["rows"], errors="coerce").fillna(0).sum()) if len(self.tables) else 0

    @property
    def restored(self) -> bool:
        return self.backup_id is not None


def check_choice(data: str) -> str:
    """Refused before anything connects."""
    if data not in CHOICES:
        raise ValidationError(f"data={data!r} is not one of {', '.join(CHOICES)}.",
                              "Use 'latest' (the app's latest backup, or a fresh one when it has none), 'fresh' "
                              "(a backup taken now) or 'empty' (the copy starts with no rows).",
                              code="invalid.rehearsal.data")
    return data


def _backup_to_use(remote, app: str, data: str, report: Reporter) -> tuple[Optional[str], bool]:
    """The id of the backup to restore and whether it was taken now; (None, False) for none."""
    if data == "latest":
        listed = backups.backups(app, remote, checksums=False)
        if len(listed):
            return str(listed["id"].iloc[-1]), False
    kept = appdata.kept(remote, app)
    if not kept.database or not kept.rows:
        if data == "fresh":
            raise NoDataToCopy(f"The server holds no rows of {app!r} to copy; nothing was started.",
                               "Rehearse with an empty copy, or check the app's name.")
        report(LogLine(f"{app} has no data on the server: the copy starts empty", "rehearsal"))
        return None, False
    manifest = backups.now(app, remote, reporter=report)  # read-only for the app: a pg_dump
    return str(manifest["id"]), True


def fill(remote, app: str, copy: str, data: str, report: Reporter) -> CopyData:
    """The app's data into the copy's (new) database before the copy is deployed."""
    if data == "empty":
        return CopyData()
    backup_id, fresh = _backup_to_use(remote, app, data, report)
    if backup_id is None:
        return CopyData()
    result = data_restore.restore(app, remote, backup_id, into=copy, reporter=report)
    tables = result.counts.rename(columns={"restored": "rows"})[["table", "rows"]].reset_index(drop=True)
    copied = CopyData(f"backup {backup_id} of {app}" + (" (taken now)" if fresh else ""), backup_id, fresh, tables)
    report(LogLine(f"the copy starts with {copied.rows} rows of {app} ({copied.source})", "rehearsal"))
    return copied
