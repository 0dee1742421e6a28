"""An app's data on the server: its database and role, its Redis volume, its files.

`destroy` keeps these unless asked, so a later deploy under the same name can find them.
`kept(remote, app)` says what is there (tables, rows, when the database was made) in two
round trips; `remove(remote, app)` deletes exactly this app's data: the database and role
named after it, the one volume Compose made for its Redis (checked by its project label,
never chosen by a pattern) and ~/dallinger-data/<app>.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from ..server import database, layout, psql
from .. import names
from ..commands import apps as app_commands, docker, files
from ..errors import LabdeployError, Remedy, ValidationError
from ..progress import WarningEvent
from .appcompose import REDIS_VOLUME

def redis_volume(app: str) -> str:
    """The name Compose (v1 and v2) gives the app's Redis volume: <project>_<volume>."""
    return f"{names.app_name(app)}_{REDIS_VOLUME}"


@dataclass
class KeptData:
    app: str
    database: bool = False
    tables: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["table", "rows"]))
    created_at: Optional[pd.Timestamp] = None
    redis_volume: bool = False
    files: bool = False

    @property
    def rows(self) -> int:
        return int(self.tables["rows"].sum()) if len(self.tables) else 0

    @property
    def any(self) -> bool:
        return self.database or self.redis_volume or self.files

    @property
    def worth_asking(self) -> bool:
        """Something a researcher collected: rows in the database, or stored files."""
        return self.rows > 0 or self.files

    def describe(self) -> str:
        parts = []
        if self.database:
            when = f", made {self.created_at:%Y-%m-%d %H:%M} UTC" if self.created_at is not None else ""
            busiest = self.tables.sort_values("rows", ascending=False).head(5)
            detail = ", ".join(f"{r.table} {r.rows}" for r in busiest.itertuples() if r.rows)
            parts.append(f"database {names.db_identifier(self.app)} ({len(self.tables)} tables, {self.rows} rows"
                         f"{when}{': ' + detail if detail else ''})")
        if self.redis_volume:
            parts.append(f"Redis volume {redis_volume(self.app)}")
        if self.files:
            parts.append(f"files in ~/{layout.app_data(self.app)}")
        return "; ".join(parts) or "nothing"


def kept(remote, app: str) -> KeptData:
    """What data of `app` the server holds (whether or not the app itself is deployed)."""
    app = names.app_name(app)
    found = app_commands.read_data_traces(
        remote.run(app_commands.data_traces(redis_volume(app), app, layout.app_data(app)), check=False).stdout)
    result = KeptData(app, redis_volume=found["volume"], files=found["files"])
    ident = names.db_identifier(app)
    found = psql.query_df(remote, "SELECT (pg_stat_file('base/' || oid || '/PG_VERSION')).modification AS made "
                                  f"FROM pg_database WHERE datname = '{ident}'")
    if len(found):
        from ..export import table_counts  # export builds on psql too; only needed here

        result.database = True
        result.created_at = pd.Timestamp(found.iloc[0, 0])
        result.tables = table_counts(app, remote)
    return result


class DataKept(LabdeployError):
    """A first deploy found the data a destroyed app of this name left behind."""

    code = "data.kept"

    def __init__(self, message: str, hint: str = "", *, tables=None, **kwargs) -> None:
        super().__init__(message, hint, **kwargs)
        object.__setattr__(self, "tables", tables)  # DataFrame: table, rows


EXISTING_DATA = ("reuse", "replace")


def check_existing_data(choice: Optional[str]) -> Optional[str]:
    if choice not in (None, *EXISTING_DATA):
        raise ValidationError(f"existing_data={choice!r} is not one of {', '.join(EXISTING_DATA)}.",
                              "Use 'reuse' to continue with the kept data or 'replace' to delete it first.",
                              code="invalid.existing_data")
    return choice


def ask_about_kept(remote, app: str, choice: Optional[str], reporter) -> None:
    """A first deploy under a name whose destroyed app left data behind: the researcher must
    choose. Reusing silently would mix a new study with old participants (who are then
    refused as having taken part); replacing needs the same fresh export as destroy."""
    kept_now = kept(remote, app)
    if not kept_now.worth_asking:
        return
    if choice is None:
        raise DataKept(
            f"The server still holds data of an earlier app named {app!r}: {kept_now.describe()}. "
            "Nothing was changed.", remedy=Remedy("data.kept", app=app), tables=kept_now.tables)
    if choice == "replace":
        from ..export import check_destroy  # the same rule as destroy --remove-data

        check_destroy(app, remote, reporter=reporter)
    reporter(WarningEvent(f"{'Reusing' if choice == 'reuse' else 'Replacing'} the data an earlier {app!r} left: "
                      f"{kept_now.describe()}.", ""))


def remove(remote, app: str) -> list[str]:
    """Delete the app's database and role, its Redis volume and its files. Returns what went."""
    app = names.app_name(app)
    psql.run_sql(remote, database.drop_sql(app))
    remote.run(docker.remove_project_volume(redis_volume(app), app))
    remote.run(files.remove(layout.app_data(app)))
    return ["database and role", "redis volume", "files"]
