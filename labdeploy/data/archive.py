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
import hashlib
import json
import os
import posixpath
import shutil
import uuid
import zipfile
from urllib.parse import unquote
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import pandas as pd

from . import pgtypes
from ..errors import DiskFull, LabdeployError, Remedy, ValidationError
from ..localfiles import PRIVATE_DIR, make_private_dirs, open_private
from .pgtypes import Column
from ..progress import Progress, Reporter, null_reporter

META_NAME = "labdeploy.json"
ID_NAME = "experiment_id.md"
FORMAT_VERSION = 2  # 2: labdeploy.json maps each table to its file name ("files")
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class ArchiveError(LabdeployError):
    """An archive could not be read."""

    code = "archive.unreadable"


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


# ---------------------------------------------------------------------------- table names on disk

# A table name comes from the server (an app's role may name a table "../../x" or "/etc/y"), so
# it never becomes a path as it is. Lower-case letters, digits, "_" and "-" stay (Dallinger's
# and PsyNet's tables keep their names); every other byte of the UTF-8 name becomes %XX with
# upper-case hex. That is reversible (unquote) and injective, also on file systems that ignore
# case (upper-case letters are escaped, escapes are always upper-case) or normalise unicode.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
STEM_MAX = 120  # + ".parquet" stays far below the usual 255-byte limit for one name
_HASH_MARK = "~"  # never produced by the plain encoding (it is escaped as %7E)


def _escape(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode("utf-8", "surrogatepass"))


def file_stem(table: str) -> str:
    """The file name (without .csv/.parquet) a table is saved under: deterministic, safe in
    any folder, and different for different tables. Long names end in a hash of the whole name
    (labdeploy.json's "files" then maps them back)."""
    if not isinstance(table, str) or not table:
        raise ValidationError(f"The table name {table!r} can't be saved.", "Give every table a non-empty name.",
                              code="invalid.table_name")
    out = []
    for i, ch in enumerate(table):
        # "." stays inside a name ("schema.table") but not at its ends (hidden files, "..",
        # names Windows trims).
        if ch in _PLAIN or (ch == "." and 0 < i < len(table) - 1):
            out.append(ch)
        else:
            out.append(_escape(ch))
    stem = "".join(out)
    if stem.split(".")[0] in _WINDOWS_DEVICES:  # "nul.csv" can't be made on Windows
        stem = _escape(stem[0]) + stem[1:]
    if len(stem) > STEM_MAX:
        head = stem[:STEM_MAX - 17]
        cut = head.rfind("%", len(head) - 2)
        if cut >= 0:
            head = head[:cut]  # never end inside an escape
        stem = head + _HASH_MARK + hashlib.sha256(table.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return stem


def table_from_stem(stem: str) -> str:
    """The table name a plain (not hashed) file name stands for."""
    return unquote(stem, errors="surrogatepass")


def file_stems(tables) -> dict:
    """{table: stem} for an export, checked to be one-to-one."""
    stems = {t: file_stem(t) for t in tables}
    if len(set(stems.values())) != len(stems):  # only a 64-bit hash collision could do this
        raise ArchiveError("Two table names map to the same file name.", "Report this, with the table names.",
                           code="archive.name_clash")
    return stems


def _inside(folder: Path, name: str) -> Path:
    """folder/name, refused unless it is a plain name directly inside folder."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or os.path.basename(name) != name):
        raise ArchiveError(f"The file name {name!r} would leave {folder}.", "The export is damaged or was "
                           "tampered with; export again.", code="archive.unsafe_name")
    path = folder / name
    real_folder = os.path.realpath(folder)
    if os.path.dirname(os.path.realpath(path)) != real_folder:
        raise ArchiveError(f"{path} leads outside {folder}.", "Remove the link, or export again.",
                           code="archive.link_outside")
    return path


# ---------------------------------------------------------------------------- atomic files


def _disk_error(exc: OSError, path: Path) -> LabdeployError:
    if exc.errno in _DISK_ERRNOS:
        return DiskFull(f"The disk is full: {path.name} could not be written in {path.parent}. Nothing was "
                        f"saved under that name.",
                        "Free some space (or choose a folder on another disk) and export again; the data "
                        "on the server is untouched.", code="disk.full")
    return LabdeployError(f"{path} could not be written: {exc.strerror or exc}.",
                          "Check that the folder exists and that you may write to it.", code="file.write_failed")


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
        raise ValidationError(f"{folder} is a file, not a folder.", "Choose a folder to save the export in.",
                              code="invalid.folder")
    try:
        make_private_dirs(folder)  # what labdeploy creates for exports is private (0700)
    except OSError as exc:
        raise _disk_error(exc, folder / "export") from exc
    if not os.access(folder, os.W_OK):
        raise ValidationError(f"You may not write to {folder}.", "Choose a folder of your own.",
                              code="invalid.folder")
    return folder


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ValidationError(f"{path} already exists.", code="invalid.file_exists",
                              remedy=Remedy("file.overwrite", path=path))


def write_archive(frames: ExportData | Mapping[str, pd.DataFrame], path: Union[str, os.PathLike], *,
                  experiment_id: Optional[str] = None, overwrite: bool = False,
                  reporter: Optional[Reporter] = None) -> Path:
    """Write a Dallinger-compatible zip. The file appears under `path` only when complete."""
    report = reporter or null_reporter
    path = Path(path).expanduser()
    if path.suffix != ".zip":
        raise ValidationError(f"{path.name} does not end in .zip.", "Give the archive a name ending in .zip.",
                              code="invalid.archive_name")
    _check_target(path, overwrite)
    data = frames if isinstance(frames, ExportData) else ExportData(frames)
    experiment_id = experiment_id or data.app or path.stem.removesuffix("-data")
    ensure_folder(path.parent)
    stems = file_stems(data)
    tmp = path.with_name(f".{path.name}.labdeploy-{uuid.uuid4().hex[:12]}.part")
    try:
        with open_private(tmp) as f:  # 0600: the archive holds participant data
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
                for i, (table, frame) in enumerate(data.items()):
                    cols = data.columns.get(table) or pgtypes.infer_columns(frame)
                    with zf.open(f"data/{stems[table]}.csv", "w", force_zip64=True) as member:
                        pgtypes.write_csv(frame, member, cols)
                    report(Progress("Write the archive", i + 1, len(data), unit="tables", item=table))
                zf.writestr(ID_NAME, experiment_id)
                zf.writestr(META_NAME, json.dumps(_meta(data, {t: f"data/{s}.csv" for t, s in stems.items()}),
                                                  indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _disk_error(exc, path) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _meta(data: ExportData, files: dict) -> dict:
    meta = data.meta()
    meta["columns"] = {t: [c.to_dict() for c in (data.columns.get(t) or pgtypes.infer_columns(f))]
                       for t, f in data.items()}
    meta["files"] = files  # table -> file: how load_export finds each table again
    return meta


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
    stems = file_stems(data)
    tmp = folder.with_name(f".{folder.name}.labdeploy-{uuid.uuid4().hex[:12]}.part")
    old = None
    try:
        tmp.mkdir(PRIVATE_DIR)
        os.chmod(tmp, PRIVATE_DIR)  # mkdir's mode is masked by the umask
        for i, (table, frame) in enumerate(data.items()):
            cols = data.columns.get(table) or pgtypes.infer_columns(frame)
            with open_private(_inside(tmp, f"{stems[table]}.parquet")) as f:
                _parquet_safe(frame, cols).to_parquet(f, index=False)
            report(Progress("Write Parquet", i + 1, len(data), unit="tables", item=table))
        with open_private(tmp / META_NAME) as f:
            f.write(json.dumps(_meta(data, {t: f"{s}.parquet" for t, s in stems.items()}), indent=1).encode())
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
    """{file stem: member} for every data/<stem>.csv (at any depth, as unzipped-and-rezipped copies vary)."""
    found = {}
    for name in names:
        parts = name.split("/")
        if len(parts) >= 2 and parts[-2] == "data" and parts[-1].endswith(".csv") and not parts[-1].startswith("."):
            found[parts[-1][:-4]] = name
    return found


def _guess_table(stem: str) -> str:
    """A file without an entry in labdeploy.json (a zip made by Dallinger, or a copy that lost
    it): an escaped name that labdeploy would have written is read back; others as they are."""
    if "%" in stem and _HASH_MARK not in stem:
        with contextlib.suppress(UnicodeError, ValidationError):
            table = table_from_stem(stem)
            if file_stem(table) == stem:
                return table
    return stem


def _tables_by_file(meta: Optional[dict], stems: Sequence[str], ext: str) -> dict:
    """{table: stem}: from labdeploy.json's "files" where it has them (any table name), the
    rest of the files by their names."""
    out: dict = {}
    files = (meta or {}).get("files")
    claimed = set()
    if isinstance(files, dict):
        present = set(stems)
        for table, name in files.items():
            base = posixpath.basename(str(name))
            if isinstance(table, str) and base.endswith(ext) and base[:-len(ext)] in present:
                out[table] = base[:-len(ext)]
                claimed.add(base[:-len(ext)])
    for stem in stems:
        if stem not in claimed:
            out.setdefault(_guess_table(stem), stem)
    return out


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
        meta = _read_meta(zf.read(meta_name), path) if meta_name else None
        id_name = next((n for n in names if posixpath.basename(n) == ID_NAME), None)
        attrs = _attrs(meta, str(path))
        if id_name and not attrs.get("app"):
            attrs["app"] = zf.read(id_name).decode("utf-8", "replace").strip()
        cols = attrs.get("columns", {})
        frames = {}
        for table, stem in sorted(_tables_by_file(meta, list(members), ".csv").items()):
            if tables is not None and table not in tables:
                continue
            with zf.open(members[stem]) as f:
                raw = f.read()
            try:
                frames[table] = pgtypes.read_csv(raw, cols.get(table))
            except LabdeployError as exc:
                raise ArchiveError(f"Table {table} in {path.name} could not be read: {exc.message}",
                                   "The archive may be damaged; export again.") from exc
    _check_wanted(frames, tables, path)
    return ExportData(frames, **attrs)


def _read_meta(raw: bytes, path: Path) -> dict:
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise ArchiveError(f"{META_NAME} in {path.name} is not valid JSON.", "The export may be damaged; "
                           "export again.") from exc
    if not isinstance(meta, dict):
        raise ArchiveError(f"{META_NAME} in {path.name} is not a labdeploy description.", "Export again.")
    return meta


def _check_wanted(frames: dict, tables, path: Path) -> None:
    if tables is not None:
        missing = [t for t in tables if t not in frames]
        if missing:
            raise ArchiveError(f"{path.name} has no table {', '.join(map(repr, missing))}.",
                               "Check the table names (load the export without naming tables to see them all).",
                               code="archive.table_missing")


def _load_folder(path: Path, tables) -> ExportData:
    meta_file = path / META_NAME
    meta = _read_meta(meta_file.read_bytes(), path) if meta_file.exists() else None
    attrs = _attrs(meta, str(path))
    cols = attrs.get("columns", {})
    frames = {}
    parquet = sorted(f.name[:-len(".parquet")] for f in path.glob("*.parquet"))
    if parquet:
        for table, stem in sorted(_tables_by_file(meta, parquet, ".parquet").items()):
            if tables is not None and table not in tables:
                continue
            frame = pd.read_parquet(_inside(path, f"{stem}.parquet"))
            for c in cols.get(table, []):
                if c.kind == "json" and c.name in frame.columns:
                    frame[c.name] = pd.Series([None if pgtypes._isna(v) else json.loads(v) for v in frame[c.name]],
                                              index=frame.index, dtype=object)
            frames[table] = frame
    else:
        data_dir = path / "data" if (path / "data").is_dir() else path
        if (path / ID_NAME).exists() and not attrs.get("app"):
            attrs["app"] = (path / ID_NAME).read_text().strip()
        stems = sorted(f.name[:-len(".csv")] for f in data_dir.glob("*.csv") if not f.name.startswith("."))
        for table, stem in sorted(_tables_by_file(meta, stems, ".csv").items()):
            if tables is not None and table not in tables:
                continue
            frames[table] = pgtypes.read_csv(_inside(data_dir, f"{stem}.csv").read_bytes(), cols.get(table))
        if not frames and tables is None:
            raise ArchiveError(f"{path} holds no exported tables.", "Choose an export folder or zip.")
    _check_wanted(frames, tables, path)
    return ExportData(frames, **attrs)


def now_stamp(when: Optional[datetime] = None) -> str:
    when = when or datetime.now(timezone.utc)
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y%m%dT%H%M%S") + f"{when.microsecond // 1000:03d}Z"
