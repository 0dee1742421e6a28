"""The backup service of the shared stack: a container of the PostgreSQL image (nothing more
to pull) that runs `backup.sh serve`, backing up every deployed app's database on its
schedule, keeping what the retention says and drilling a restore once a day, whether or not
anyone's laptop is open. It runs as the login user, so the backups are theirs (0600 files in
0700 folders) and `labdeploy backup pull` can read them.

The schedule is a small `key=value` file the script reads on every tick: the server's default
in ~/dallinger/backup.conf, an app's own in ~/dallinger/<app>/backup.conf.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Optional, Union

from . import layout
from .. import names
from ..errors import ValidationError

SCRIPT_NAME = "backup.sh"
DEFAULT_EVERY_MINUTES = 60
DEFAULT_KEEP_HOURLY = 24
DEFAULT_KEEP_DAILY = 14


def script() -> str:
    return resources.files("labdeploy.server").joinpath(SCRIPT_NAME).read_text()


def script_digest() -> str:
    """In the service's labels: a changed script makes Compose recreate the container."""
    return hashlib.sha256(script().encode()).hexdigest()[:16]


def service_document(postgres_image: str, user: str) -> dict:
    """The `backup` service of the stack's compose file. `user` is the login user's uid:gid."""
    if not (isinstance(user, str) and user.count(":") == 1 and all(p.isdigit() for p in user.split(":"))):
        raise ValidationError(f"{user!r} is not a uid:gid.", code="invalid.user")
    return {
        "image": postgres_image,
        "container_name": layout.BACKUP_CONTAINER,
        "restart": "unless-stopped",
        "user": user,
        "entrypoint": ["sh", "/labdeploy/backup.sh"],
        "command": ["serve"],
        "environment": {"PGHOST": "postgresql", "PGUSER": layout.POSTGRES_SUPERUSER, "HOME": "/tmp"},
        # ~/dallinger read-only (which apps are deployed, their schedules, the superuser's
        # password); only the backups folder is writable.
        "volumes": ["./backup:/labdeploy:ro", ".:/dallinger:ro", f"../{layout.BACKUPS_ROOT}:/backups"],
        "networks": [layout.NETWORK],
        "depends_on": ["postgresql"],
        "labels": {"labdeploy.server.stack": "backup", "labdeploy.backup.script": script_digest()},
    }


@dataclass(frozen=True)
class Schedule:
    """How often an app's database is backed up (None: off) and which backups are kept: the
    newest of each of the last `keep_hourly` hours and of the last `keep_daily` days."""

    every_minutes: Optional[int] = DEFAULT_EVERY_MINUTES
    keep_hourly: int = DEFAULT_KEEP_HOURLY
    keep_daily: int = DEFAULT_KEEP_DAILY

    def text(self) -> str:
        every = "off" if self.every_minutes is None else str(self.every_minutes)
        return ("# Written by labdeploy (backup.schedule). every_minutes: a number or off.\n"
                f"every_minutes={every}\nkeep_hourly={self.keep_hourly}\nkeep_daily={self.keep_daily}\n")


def _whole(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ValidationError(f"{what} {value!r} is not a whole number.", f"Use a number from {low} to {high}.",
                              code="invalid.backup_schedule")
    number = int(value)
    if not low <= number <= high:
        raise ValidationError(f"{what} {number} is out of range.", f"Use a number from {low} to {high}.",
                              code="invalid.backup_schedule")
    return number


def schedule(every: Union[int, str, None] = DEFAULT_EVERY_MINUTES, keep_hourly=DEFAULT_KEEP_HOURLY,
             keep_daily=DEFAULT_KEEP_DAILY) -> Schedule:
    """A checked Schedule. `every`: minutes (5 to 10080), "60min", "2h", "1d", or "off"."""
    if every is None or (isinstance(every, str) and every.strip().lower() == "off"):
        minutes = None
    else:
        text = str(every).strip().lower()
        factor = 1
        for suffix, f in (("min", 1), ("m", 1), ("h", 60), ("d", 1440)):
            if text.endswith(suffix) and text[:-len(suffix)].isdigit():
                text, factor = text[:-len(suffix)], f
                break
        minutes = _whole(text, "The backup interval", 1, 10080) * factor
        if not 5 <= minutes <= 10080:
            raise ValidationError(f"Backups every {minutes} minutes is out of range.",
                                  "Use between 5 minutes and 7 days, or 'off'.", code="invalid.backup_schedule")
    return Schedule(minutes, _whole(keep_hourly, "keep_hourly", 0, 1000), _whole(keep_daily, "keep_daily", 0, 1000))


def read_schedule(text: str) -> Schedule:
    """A backup.conf back (unknown or broken lines fall back to the defaults, as the script does)."""
    values = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    every = values.get("every_minutes", str(DEFAULT_EVERY_MINUTES))
    return Schedule(None if every == "off" else int(every) if every.isdigit() else DEFAULT_EVERY_MINUTES,
                    int(values["keep_hourly"]) if values.get("keep_hourly", "").isdigit() else DEFAULT_KEEP_HOURLY,
                    int(values["keep_daily"]) if values.get("keep_daily", "").isdigit() else DEFAULT_KEEP_DAILY)


def settings_path(app: Optional[str]) -> str:
    return layout.backup_settings(names.app_name(app) if app else None)
