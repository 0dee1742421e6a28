"""Exports on disk: Dallinger-compatible zip archives and Parquet folders, written atomically,
and loading them (or a zip made by Dallinger itself) back into DataFrames.

Archive layout, as Dallinger's `export` writes it (dallinger/data.py):

    data/<table>.csv      COPY ... CSV HEADER (NULL = unquoted empty field)
    experiment_id.md      the experiment id (here the app name)
    labdeploy.json        labdeploy's addition: column types, row counts, snapshot, time

`labdeploy.json` is named so Dallinger's `ingest_zip` (which picks files by table-name
substrings) never mistakes it for a table. Parquet goes next to the zip, not inside it, for the
same reason.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import shutil
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import pandas as pd

from . import pgtypes
from .errors import LabdeployError, ValidationError
from .pgtypes import Column
from .progress import Progress, Reporter, null_reporter

META_NAME = "labdeploy.json"
ID_NAME = "experiment_id.md"
FORMAT_VERSION = 1
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFull(LabdeployError, OSError):
    """The local disk (or quota) ran out while writing an export."""


class ArchiveError(LabdeployError):
    """An archive could not be read."""


class ExportData(dict):
    """Tables as DataFrames (`data["responses"]`), plus what is known about where they came from.

    Attributes: app, server, database, snapshot (PostgreSQL snapshot of the export), exported_at
    (UTC datetime: the start of the export's transaction), columns ({table: [Column]}), counts
    ({table: rows}), bytes (CSV bytes streamed), anonymised (bool), anonymous (the anonymised
    tables when both were asked for), paths (files written), source (a loaded file).
    """

    def __init__(self, frames: Optional[Mapping[str, pd.DataFrame]] = None, **attrs) -> None:
        super().__init__(frames or {})
        self.app: str = attrs.get("app", "")
        self.server: str = attrs.get("server", "")
        self.database: str = attrs.get("database", "")
        self.snapshot: str = attrs.get("snapshot", "")
        self.exported_at: Optional[datetime] = attrs.get("exported_at")
        self.columns: dict = attrs.get("columns", {})
        self.counts: dict = attrs.get("counts", {k: len(v) for k, v in self.items()})
        self.bytes: int = attrs.get("bytes", 0)
        self.anonymised: bool = attrs.get("anonymised", False)
        self.anonymised_columns: dict = attrs.get("anonymised_columns", {})
        self.anonymous: Optional["ExportData"] = attrs.get("anonymous")
        self.paths: list = list(attrs.get("paths", []))
        self.source: Optional[str] = attrs.get("source")

    def derive(self, frames: Mapping[str, pd.DataFrame], **changes) -> "ExportData":
        attrs = {k: getattr(self, k) for k in ("app", "server", "database", "snapshot", "exported_at", "columns",
                                                "counts", "bytes", "anonymised", "anonymised_columns")}
        attrs.update(changes)
        return ExportData(frames, **attrs)

    def summary(self) -> pd.DataFrame:
        """One row per table: rows, columns, memory."""
        rows = [{"table": t, "rows": len(df), "columns": len(df.columns),
                 "memory_mb": round(pgtypes.frame_nbytes(df) / 1e6, 2)} for t, df in self.items()]
        return pd.DataFrame(rows, columns=["table", "rows", "columns", "memory_mb"])

    def meta(self) -> dict:
        return {
            "format": FORMAT_VERSION, "app": self.app, "server": self.server, "database": self.database,
            "snapshot": self.snapshot,
            "exported_at": self.exported_at.isoformat() if self.exported_at else None,
            "anonymised": self.anonymised, "anonymised_columns": self.anonymised_columns,
            "counts": {t: int(len(df)) for t, df in self.items()},
            "columns": {t: [c.to_dict() for c in cols] for t, cols in self.columns.items()},
        }

    def __repr__(self) -> str:
        kind = "anonymised export" if self.anonymised else "export"
        tables = ", ".join(f"{t} ({len(df)} rows)" for t, df in self.items())
        return f"<{kind} of {self.app or '?'}: {tables or 'no tables'}>"


# ---------------------------------------------------------------------------- atomic files


def _disk_error(exc: OSError, path: Path) -> LabdeployError:
    if exc.errno in _DISK_ERRNOS:
        return DiskFull(f"The disk is full: {path.name} could not be written in {path.parent}. Nothing was "
                        f"saved under that name.",
                        "Free some space (or choose a folder on another disk) and export again; the data "
                        "on the server is untouched.")
    return LabdeployError(f"{path} could not be written: {exc.strerror or exc}.",
                          "Check that the folder exists and that you may write to it.")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_folder(folder: Union[str, os.PathLike]) -> Path:
    """Create the folder exports go to (checked before anything is downloaded)."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValidationError(f"{folder} is a file, not a folder.", "Choose a folder to save the export in.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, folder / "export") from exc
    if not os.access(folder, os.W_OK):
        raise ValidationError(f"You may not write to {folder}.", "Choose a folder of your own.")
    return folder


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ValidationError(f"{path} already exists.",
                              "Choose another name, or pass overwrite=True to replace it deliberately.")


def write_archive(frames: ExportData | Mapping[str, pd.DataFrame], path: Union[str, os.PathLike], *,
                  experiment_id: Optional[str] = None, overwrite: bool = False,
                  reporter: Optional[Reporter] = None) -> Path:
    """Write a Dallinger-compatible zip. The file appears under `path` only when complete."""
    report = reporter or null_reporter
    path = Path(path).expanduser()
    if path.suffix != ".zip":
        raise ValidationError(f"{path.name} does not end in .zip.", "Give the archive a name ending in .zip.")
    _check_target(path, overwrite)
    data = frames if isinstance(frames, ExportData) else ExportData(frames)
    experiment_id = experiment_id or data.app or path.stem.removesuffix("-data")
    ensure_folder(path.parent)
    tmp = path.with_name(f".{path.name}.labdeploy-{uuid.uuid4().hex[:12]}.part")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for i, (table, frame) in enumerate(data.items()):
                cols = data.columns.get(table) or pgtypes.infer_columns(frame)
                with zf.open(f"data/{table}.csv", "w", force_zip64=True) as member:
                    pgtypes.write_csv(frame, member, cols)
                report(Progress("Write the archive", i + 1, len(data), unit="tables", item=table))
            zf.writestr(ID_NAME, experiment_id)
            meta = data.meta()
            meta["columns"] = {t: [c.to_dict() for c in (data.columns.get(t) or pgtypes.infer_columns(f))]
                               for t, f in data.items()}
            zf.writestr(META_NAME, json.dumps(meta, indent=1))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _disk_error(exc, path) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _parquet_safe(frame: pd.DataFrame, cols: Sequence[Column]) -> pd.DataFrame:
    """JSON columns hold dicts and lists of any shape: store them as JSON text."""
    json_cols = [c.name for c in cols if c.kind == "json" and c.name in frame.columns]
    if not json_cols:
        return frame
    out = frame.copy()
    for name in json_cols:
        out[name] = pd.Series([None if v is None else json.dumps(v, ensure_ascii=False) for v in frame[name]],
                              index=frame.index, dtype=object)
    return out


def write_parquet(frames: ExportData | Mapping[str, pd.DataFrame], folder: Union[str, os.PathLike], *,
                  overwrite: bool = False, reporter: Optional[Reporter] = None) -> Path:
    """One `<table>.parquet` per table plus labdeploy.json, in a folder that appears only when
    complete. An existing folder is replaced only with overwrite=True."""
    report = reporter or null_reporter
    folder = Path(folder).expanduser()
    _check_target(folder, overwrite)
    data = frames if isinstance(frames, ExportData) else ExportData(frames)
    ensure_folder(folder.parent)
    tmp = folder.with_name(f".{folder.name}.labdeploy-{uuid.uuid4().hex[:12]}.part")
    old = None
    try:
        tmp.mkdir()
        for i, (table, frame) in enumerate(data.items()):
            cols = data.columns.get(table) or pgtypes.infer_columns(frame)
            _parquet_safe(frame, cols).to_parquet(tmp / f"{table}.parquet", index=False)
            report(Progress("Write Parquet", i + 1, len(data), unit="tables", item=table))
        meta = data.meta()
        meta["columns"] = {t: [c.to_dict() for c in (data.columns.get(t) or pgtypes.infer_columns(f))]
                           for t, f in data.items()}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1))
        if folder.exists():  # overwrite=True: swap, then remove the old copy
            old = folder.with_name(f".{folder.name}.labdeploy-{uuid.uuid4().hex[:12]}.old")
            os.replace(folder, old)
        os.replace(tmp, folder)
        _fsync_dir(folder.parent)
    except OSError as exc:
        raise _disk_error(exc, folder) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------- loading


def _meta_columns(meta: Optional[dict]) -> dict:
    if not meta:
        return {}
    return {t: [Column.from_dict(c) for c in cols] for t, cols in meta.get("columns", {}).items()}


def _attrs(meta: Optional[dict], source: str) -> dict:
    if not meta:
        return {"source": source}
    at = meta.get("exported_at")
    return {"app": meta.get("app", ""), "server": meta.get("server", ""), "database": meta.get("database", ""),
            "snapshot": meta.get("snapshot", ""), "exported_at": datetime.fromisoformat(at) if at else None,
            "anonymised": bool(meta.get("anonymised")), "anonymised_columns": meta.get("anonymised_columns", {}),
            "columns": _meta_columns(meta), "source": source}


def _zip_tables(names: Sequence[str]) -> dict:
    """{table: member} for every data/<table>.csv (at any depth, as unzipped-and-rezipped copies vary)."""
    found = {}
    for name in names:
        parts = name.split("/")
        if len(parts) >= 2 and parts[-2] == "data" and parts[-1].endswith(".csv") and not parts[-1].startswith("."):
            found[parts[-1][:-4]] = name
    return found


def load_export(path: Union[str, os.PathLike], tables: Optional[Sequence[str]] = None) -> ExportData:
    """Load an export back into DataFrames: a zip written by labdeploy or by Dallinger
    (`dallinger export`), an unzipped folder of either, or a labdeploy Parquet folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ArchiveError(f"{path} does not exist.", "Check the path; exports are named <app>-...-data.zip.")
    if path.is_dir():
        return _load_folder(path, tables)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path.name} is not a readable zip archive ({exc}).",
                           "It may be incomplete or damaged; export again.") from exc
    with zf:
        names = zf.namelist()
        members = _zip_tables(names)
        if not members:
            raise ArchiveError(f"{path.name} holds no data/<table>.csv files, so it is not an experiment export.",
                               "Choose a zip made by labdeploy's or Dallinger's export.")
        meta_name = next((n for n in names if posixpath.basename(n) == META_NAME), None)
        meta = json.loads(zf.read(meta_name)) if meta_name else None
        id_name = next((n for n in names if posixpath.basename(n) == ID_NAME), None)
        attrs = _attrs(meta, str(path))
        if id_name and not attrs.get("app"):
            attrs["app"] = zf.read(id_name).decode("utf-8", "replace").strip()
        cols = attrs.get("columns", {})
        frames = {}
        for table in sorted(members):
            if tables is not None and table not in tables:
                continue
            with zf.open(members[table]) as f:
                raw = f.read()
            try:
                frames[table] = pgtypes.read_csv(raw, cols.get(table))
            except LabdeployError as exc:
                raise ArchiveError(f"Table {table} in {path.name} could not be read: {exc.message}",
                                   "The archive may be damaged; export again.") from exc
    _check_wanted(frames, tables, path)
    return ExportData(frames, **attrs)


def _check_wanted(frames: dict, tables, path: Path) -> None:
    if tables is not None:
        missing = [t for t in tables if t not in frames]
        if missing:
            raise ArchiveError(f"{path.name} has no table {', '.join(missing)}.",
                               "Check the table names (load without `tables` to see them all).")


def _load_folder(path: Path, tables) -> ExportData:
    meta_file = path / META_NAME
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else None
    attrs = _attrs(meta, str(path))
    cols = attrs.get("columns", {})
    frames = {}
    parquet = sorted(path.glob("*.parquet"))
    if parquet:
        for f in parquet:
            table = f.stem
            if tables is not None and table not in tables:
                continue
            frame = pd.read_parquet(f)
            for c in cols.get(table, []):
                if c.kind == "json" and c.name in frame.columns:
                    frame[c.name] = pd.Series([None if pgtypes._isna(v) else json.loads(v) for v in frame[c.name]],
                                              index=frame.index, dtype=object)
            frames[table] = frame
    else:
        data_dir = path / "data" if (path / "data").is_dir() else path
        if (path / ID_NAME).exists() and not attrs.get("app"):
            attrs["app"] = (path / ID_NAME).read_text().strip()
        for f in sorted(data_dir.glob("*.csv")):
            if tables is not None and f.stem not in tables:
                continue
            frames[f.stem] = pgtypes.read_csv(f.read_bytes(), cols.get(f.stem))
        if not frames and tables is None:
            raise ArchiveError(f"{path} holds no exported tables.", "Choose an export folder or zip.")
    _check_wanted(frames, tables, path)
    return ExportData(frames, **attrs)


def now_stamp(when: Optional[datetime] = None) -> str:
    when = when or datetime.now(timezone.utc)
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y%m%dT%H%M%S") + f"{when.microsecond // 1000:03d}Z"
