"""Backups of an app's database: taken on the server by the stack's backup service (on its
schedule, or now), listed, copied off the server, drilled and restored.

```python
from labdeploy import backup
backup.now("stroop", "lab")                       # one backup now; returns its manifest
backup.backups("stroop", "lab")                   # DataFrame: id, time, age, size, tables, rows, checksum_ok, drill
backup.schedule("lab", "stroop", every="2h")      # or every="off"; keep_hourly, keep_daily
backup.pull("lab", "~/backups", app="stroop")     # copies the backups the folder lacks, checked
backup.verify_backup("stroop", "lab")             # a restore drill of the newest backup
backup.restore("stroop", "lab", "latest", into="stroop-copy")   # side by side (the safe default)
```

A backup is `~/dallinger-data/backups/<app>/<ID>.<kind>.dump` (pg_dump's custom format) and
its manifest `<ID>.<kind>.json` (time, size, sha256, app version, per-table row counts read in
the dump's own snapshot). Restores are in `data/restore.py`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd

from .. import localfiles, names
from ..commands import backups as commands
from ..errors import LabdeployError, Remedy, ValidationError
from ..progress import LogLine, Progress, Reporter, null_reporter, step
from ..server import backupservice, layout
from ..ssh import pool
from ..watch import backups as watch_backups
from . import encryption

BACKUP_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z")
MANIFEST_NAME = re.compile(r"([0-9]{8}T[0-9]{6}Z)\.(scheduled|manual|pre-restore)\.json")
COLUMNS = ["id", "time", "age", "kind", "size", "tables", "rows", "checksum_ok", "drill", "drill_detail",
           "version", "file"]


class BackupFailed(LabdeployError):
    """A backup, a drill or a restore did not complete; nothing earlier was touched."""

    code = "backup.failed"


class BackupServiceMissing(LabdeployError):
    """The server's stack has no running backup service (prepared by an older labdeploy)."""

    code = "backup.no_service"


def _service_missing(remote) -> BackupServiceMissing:
    return BackupServiceMissing(f"The backup service does not run on {remote.host}.",
                                "The server was prepared before backups existed, or the service stopped.",
                                remedy=Remedy("stack.prepare"))


def run_in_service(remote, argv: list, what: str, timeout: float = 3600) -> str:
    """Run a backup.sh command in the service's container; its `@@ok` text, else BackupFailed."""
    res = remote.run(argv, check=False, timeout=timeout)
    if res.exit_status == commands.NOT_RUNNING:
        raise _service_missing(remote)
    ok, text = commands.parse_outcome(res.stdout)
    if not ok:
        detail = text or (res.stderr or res.stdout).strip()[-600:] or f"exit status {res.exit_status}"
        raise BackupFailed(f"{what} failed: {detail}",
                           "Nothing was changed and older backups are intact. Look at "
                           "`docker logs dallinger-backup` on the server, fix the cause and try again.")
    return text


# ---------------------------------------------------------------------------- taking and listing

@pool.closes_what_it_opens
def now(app: str, server, *, reporter: Optional[Reporter] = None, kind: str = "manual") -> dict:
    """Back up the app's database now (beside its schedule). Returns the new backup's manifest."""
    app = names.app_name(app)
    report = reporter or null_reporter
    remote = pool.connect(server)
    with step(report, "Back up the database", f"{names.db_identifier(app)} on {remote.host}"):
        text = run_in_service(remote, commands.now(app, kind), f"The backup of {app}")
    backup_id = text.split()[0] if text else ""
    found = [m for m in _manifests(remote, app) if m.get("id") == backup_id]
    if not found:
        raise BackupFailed(f"The backup {backup_id} of {app} has no manifest on the server.",
                           "Run it again; if it keeps failing, look at `docker logs dallinger-backup`.")
    report(LogLine(f"backup {backup_id}: {found[0].get('size', 0)} bytes, {found[0].get('tables', 0)} tables",
                   "backup"))
    return found[0]


def _manifests(remote, app: str, listing: Optional[dict] = None) -> list[dict]:
    listing = listing or commands.read_listing(remote.run(commands.listing(app), check=False).stdout)
    found = []
    for text in listing["manifests"]:
        try:
            manifest = json.loads(text)
        except ValueError:
            continue
        if isinstance(manifest, dict) and BACKUP_ID.fullmatch(str(manifest.get("id", ""))) \
                and MANIFEST_NAME.fullmatch(f"{manifest['id']}.{manifest.get('kind')}.json"):
            found.append(manifest)
    return sorted(found, key=lambda m: m["id"])


def _lines(lines: list) -> list[dict]:
    out = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _rows(manifest: dict) -> int:
    rows = manifest.get("rows")
    return int(sum(v for v in rows.values() if isinstance(v, int))) if isinstance(rows, dict) else 0


@pool.closes_what_it_opens
def backups(app: str, server, *, checksums: bool = True) -> pd.DataFrame:
    """The app's backups on the server, oldest first: id, time, age, kind, size, tables, rows,
    checksum_ok (the dump read again and hashed now; None with checksums=False), drill (the
    latest drill's outcome for that backup: True, False or None), version, file."""
    app = names.app_name(app)
    remote = pool.connect(server)
    listing = commands.read_listing(remote.run(commands.listing(app), check=False).stdout)
    manifests = _manifests(remote, app, listing)
    sums = {}
    if checksums and manifests:
        res = remote.run(commands.checksums(app, [m["dump"] for m in manifests]), check=False, timeout=3600)
        for line in res.stdout.splitlines():
            digest, _, name = line.partition("  ")
            sums[name.strip()] = digest
    drills = {}
    for drill in _lines(listing["drills"]):
        drills[drill.get("id")] = drill
    now_ = pd.Timestamp.now(tz="UTC")
    rows = []
    for m in manifests:
        when = pd.Timestamp(m.get("time")) if m.get("time") else None
        drill = drills.get(m["id"], {})
        rows.append({
            "id": m["id"], "time": when, "age": (now_ - when) if when is not None else None, "kind": m.get("kind"),
            "size": m.get("size"), "tables": m.get("tables"), "rows": _rows(m),
            "checksum_ok": (sums.get(m["dump"]) == m.get("sha256")) if checksums else None,
            "drill": drill.get("ok"), "drill_detail": drill.get("detail", ""), "version": m.get("version", ""),
            "file": f"~/{layout.app_backups(app)}/{m['dump']}",
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("checksum_ok", "drill"):  # True, False or None (not known): Python values, not numpy's
        df[column] = df[column].astype(object)
    return df


@pool.closes_what_it_opens
def runs(app: str, server) -> pd.DataFrame:
    """Every recent backup attempt of the app (scheduled or not), failures with their error."""
    app = names.app_name(app)
    remote = pool.connect(server)
    listing = commands.read_listing(remote.run(commands.listing(app), check=False).stdout)
    df = pd.DataFrame(_lines(listing["runs"]), columns=["time", "kind", "ok", "id", "error"])
    return df


@pool.closes_what_it_opens
def health(server, app: Optional[str] = None) -> pd.DataFrame:
    """Per app: last backup, its age, last run, last drill, last good drill, and a warning."""
    return watch_backups.read(pool.connect(server), None if app is None else [names.app_name(app)])


@pool.closes_what_it_opens
def schedule(server, app: Optional[str] = None, *, every: Union[int, str, None] = 60,
             keep_hourly: int = backupservice.DEFAULT_KEEP_HOURLY,
             keep_daily: int = backupservice.DEFAULT_KEEP_DAILY) -> backupservice.Schedule:
    """Set how often the app's database is backed up (minutes, "2h", "1d" or "off") and what is
    kept; without `app`, the server's default for every app without its own."""
    plan = backupservice.schedule(every, keep_hourly, keep_daily)
    if app is not None:
        app = names.app_name(app)
    remote = pool.connect(server)
    if app is not None and not remote.exists(layout.app_dir(app)):
        from ..errors import UnknownApp

        raise UnknownApp(f"The server has no app named {app!r}.", "Check the name against the list of apps on this server.")
    remote.put_bytes(backupservice.settings_path(app), plan.text().encode(), mode=0o644)
    return plan


# ---------------------------------------------------------------------------- drills

@pool.closes_what_it_opens
def verify_backup(app: str, server, backup_id: Optional[str] = None, *,
                  reporter: Optional[Reporter] = None) -> dict:
    """A restore drill: the backup (default: the newest) restored into a scratch database on the
    server, its row counts compared with the manifest, the scratch database dropped. The outcome
    is recorded beside the backups (status and `backups()` show it). Raises BackupFailed when
    the backup does not restore or its counts differ."""
    app = names.app_name(app)
    if backup_id is not None and not BACKUP_ID.fullmatch(str(backup_id)):
        raise ValidationError(f"{backup_id!r} is not a backup id.", "Backup ids look like 20261130T140000Z; "
                              "the list of backups shows them.", code="invalid.backup_id")
    report = reporter or null_reporter
    remote = pool.connect(server)
    with step(report, "Restore drill", "into a scratch database, then its row counts are compared"):
        text = run_in_service(remote, commands.drill(app, backup_id or ""), f"The restore drill of {app}")
    drilled, _, detail = text.partition(" ")
    return {"app": app, "id": drilled, "ok": True, "detail": detail}


# ---------------------------------------------------------------------------- off-server copies

def _local_manifests(folder: Path) -> dict[str, dict]:
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            if MANIFEST_NAME.fullmatch(path.name):
                try:
                    found[path.name] = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
    return found


def _apps_with_backups(remote) -> list[str]:
    try:
        entries = remote.listdir(layout.BACKUPS_ROOT)
    except (OSError, LabdeployError):
        return []
    out = []
    for entry in sorted(entries):
        try:
            out.append(names.app_name(entry))
        except ValidationError:
            continue
    return out


@pool.closes_what_it_opens
def pull(server, to: Union[str, os.PathLike], app: Optional[str] = None, *, all_apps: bool = False,
         encrypt_to: Union[str, Sequence[str], None] = None, passphrase: Optional[str] = None,
         reporter: Optional[Reporter] = None) -> pd.DataFrame:
    """Copy the app's backups (or every app's, with all_apps) that `to/<app>/` lacks, over the
    one SSH connection; each dump is checked against its sha256 before it gets its name, and
    written 0600 (folders 0700); its manifest is written after it. With `encrypt_to` (age1...
    or SSH public keys) or `passphrase`, copies are kept encrypted (`<dump>.age`, the age
    format; see data/encryption.py) and no plain copy stays. Returns one row per backup:
    app, id, file, size, pulled (False: it was there already)."""
    if (app is None) == (not all_apps):
        raise ValidationError("Say which backups to pull: one app, or all apps.",
                              "Name one app, or ask for all apps.", code="invalid.pull")
    how = None
    if encrypt_to or passphrase is not None:
        keys = [encrypt_to] if isinstance(encrypt_to, str) else list(encrypt_to or ())
        how = encryption.Encryption(tuple(keys), passphrase).check()  # before anything connects
    report = reporter or null_reporter
    remote = pool.connect(server)
    apps = _apps_with_backups(remote) if all_apps else [names.app_name(app)]
    root = localfiles.make_private_dirs(Path(to).expanduser())
    rows = []
    for name in apps:
        folder = localfiles.make_private_dirs(root / name)
        have = _local_manifests(folder)
        manifests = _manifests(remote, name)
        missing = [m for m in manifests if f"{m['id']}.{m['kind']}.json" not in have
                   or not _local_copy(folder, m["dump"])]
        with step(report, f"Pull the backups of {name}", f"{len(missing)} of {len(manifests)} new"):
            for m in manifests:
                manifest_name = f"{m['id']}.{m['kind']}.json"
                if m not in missing:
                    rows.append({"app": name, "id": m["id"], "file": str(_local_copy(folder, m["dump"])),
                                 "size": m.get("size"), "pulled": False})
                    continue
                total = int(m.get("size") or 0)

                def progress(done, size, _id=m["id"], _step=f"Pull the backups of {name}"):
                    report(Progress(_step, done, size or total, "bytes", _id))

                kept = _fetch(remote, f"{layout.app_backups(name)}/{m['dump']}", folder / m["dump"], m, how, progress)
                localfiles.write_atomic(folder / manifest_name, json.dumps(m, indent=2) + "\n", 0o600)
                report(LogLine(f"pulled {name}/{kept.name} ({total} bytes, checksum ok"
                               f"{', encrypted' if how else ''})", "backup"))
                rows.append({"app": name, "id": m["id"], "file": str(kept), "size": total, "pulled": True})
    return pd.DataFrame(rows, columns=["app", "id", "file", "size", "pulled"])


def _local_copy(folder: Path, dump: str) -> Optional[Path]:
    """The pulled copy of `dump` in `folder`, plain or encrypted, if there is one."""
    for path in (folder / dump, folder / (dump + encryption.SUFFIX)):
        if path.is_file():
            return path
    return None


def _fetch(remote, path: str, target: Path, manifest: dict, how, progress) -> Path:
    """One dump into `target` (checked against its sha256), or, with `how`, into target.age
    with the plain copy gone again."""
    if how is None:
        remote.get_private(path, target, sha256=manifest.get("sha256"), on_progress=progress)
        return target
    plain = localfiles.temp_name(target, ".plain")
    try:
        remote.get_private(path, plain, sha256=manifest.get("sha256"), on_progress=progress)
        encrypted = target.with_name(target.name + encryption.SUFFIX)
        encryption.encrypt(plain, encrypted, how)
        return encrypted
    finally:
        plain.unlink(missing_ok=True)


def remove_app_backups(remote, app: str) -> None:
    """Delete every backup of the app on the server (destroy with remove_backups=True)."""
    remote.run(commands.remove_app(names.app_name(app)))


@dataclass
class LocalBackup:
    """A pulled backup on this computer: the dump and, when beside it, its manifest."""

    dump: Path
    manifest: Optional[dict]

    @property
    def encrypted(self) -> bool:
        return self.dump.name.endswith(encryption.SUFFIX)

    @classmethod
    def open(cls, path: Union[str, os.PathLike]) -> "LocalBackup":
        path = Path(path).expanduser()
        if not path.is_file():
            raise ValidationError(f"There is no file {path}.", "Give the path of a pulled .dump file "
                                  "(backup.pull puts them in <folder>/<app>/).", code="invalid.backup_file")
        manifest = None
        stem = path.name[:-len(encryption.SUFFIX)] if path.name.endswith(encryption.SUFFIX) else path.name
        if stem.endswith(".dump"):
            beside = path.with_name(stem[:-len(".dump")] + ".json")
            if beside.is_file():
                try:
                    manifest = json.loads(beside.read_text())
                except ValueError:
                    manifest = None
        return cls(path, manifest if isinstance(manifest, dict) else None)
