"""One psql session that streams every table of a database, consistently, over one SSH channel.

Pure parts: the psql script (built here, sent on stdin) and the splitter that cuts psql's
stdout back into tables. The script opens one REPEATABLE READ READ ONLY transaction, so the
catalog, every `count(*)` and every `COPY ... TO STDOUT` see the same snapshot. Marker lines
that start with a random nonce separate the parts; the nonce cannot occur in the data (it is
chosen after the data was written and is 128 random bits), so no escaping is needed. Table
names in marker lines are JSON strings: a name may hold spaces, tabs or newlines.

Stream, in order:

    <nonce> snapshot <pg_current_snapshot> <transaction start, epoch seconds>
    <nonce> catalog <one-line JSON: [{"table": ..., "columns": [...]}, ...]>
    <nonce> count <table as a JSON string> <count(*)>
    <CSV with header, as COPY writes it>
    <nonce> end <table as a JSON string>
    ... (count / CSV / end for each table)
    <nonce> done
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..errors import LabdeployError, ValidationError

# Table names given by a caller go into the script as SQL literals; keep them plain anyway.
_TABLE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_$]{0,62}\.)?[A-Za-z_][A-Za-z0-9_$]{0,62}$")


class StreamError(LabdeployError):
    """psql's output did not have the expected shape."""

    code = "export.stream_malformed"


def table_name(name: str) -> str:
    if not isinstance(name, str) or not _TABLE_RE.fullmatch(name):
        raise ValidationError(f"The table name {name!r} is not valid.",
                              "Give table names as they are in the database, e.g. 'participant' or "
                              "'public.participant' (letters, digits, underscores).", code="invalid.table_name")
    return name


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# The catalog: every ordinary or partitioned table outside the system schemas. Tables in
# "public" are named bare (as Dallinger names its CSV files), others "schema.table".
CATALOG_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind,
       CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END AS label
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
"""

COLUMNS_SQL = """
SELECT coalesce(jsonb_agg(jsonb_build_object(
         'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
         'base', coalesce(bt.typname, t.typname), 'category', coalesce(bt.typcategory, t.typcategory),
         'notnull', a.attnotnull) ORDER BY a.attnum), '[]'::jsonb)
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
WHERE a.attrelid = tl.oid AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attgenerated = ''  -- COPY TO leaves generated columns out
"""


def build_script(nonce: str, tables: Optional[Sequence[str]] = None) -> str:
    """The psql script (sent on stdin). `tables` None means every table."""
    wanted = ""
    if tables is not None:
        names = [table_name(t) for t in tables]
        wanted = "WHERE tl.label IN (" + ", ".join(_literal(t) for t in names) + ")" if names else "WHERE false"
    tag = _literal(nonce + " ")
    return f"""\\set QUIET on
\\set ON_ERROR_STOP on
\\pset pager off
\\pset format unaligned
\\pset tuples_only on
\\pset footer off
SET client_encoding = 'UTF8';
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
SET LOCAL TimeZone = 'UTC';
SET LOCAL DateStyle = 'ISO, YMD';
SET LOCAL IntervalStyle = 'postgres';
SET LOCAL bytea_output = 'hex';
SET LOCAL extra_float_digits = 1;
SELECT {tag} || 'snapshot ' || pg_current_snapshot()::text || ' ' || extract(epoch FROM now())::text;
SELECT {tag} || 'catalog ' || coalesce(jsonb_agg(jsonb_build_object('table', tl.label, 'columns', ({COLUMNS_SQL}))
       ORDER BY tl.label), '[]'::jsonb)::text FROM ({CATALOG_SQL}) tl {wanted};
SELECT format('SELECT %L || count(*) FROM %I.%I', {tag} || 'count ' || to_json(tl.label)::text || ' ',
              tl.nspname, tl.relname),
       CASE WHEN tl.relkind = 'p' THEN  -- COPY can't read a partitioned table itself: its rows via SELECT
         format('COPY (SELECT %s FROM %I.%I) TO STDOUT WITH (FORMAT csv, HEADER true)',
                (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
                 WHERE a.attrelid = tl.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
                tl.nspname, tl.relname)
       ELSE format('COPY %I.%I TO STDOUT WITH (FORMAT csv, HEADER true)', tl.nspname, tl.relname) END,
       format('SELECT %L', {tag} || 'end ' || to_json(tl.label)::text)
FROM ({CATALOG_SQL}) tl {wanted} ORDER BY tl.label
\\gexec
SELECT {tag} || 'done';
COMMIT;
"""


def new_nonce() -> str:
    return "labdeploy-" + secrets.token_hex(16)


class ChunkPipe:
    """A file-like object fed by one thread (write/close) and read by another (a parser).

    Chunks are handed over without copying and dropped once read, so a table never needs to
    be held whole as bytes while it is parsed.
    """

    def __init__(self, limit: int = 32 << 20) -> None:
        self.limit = limit  # the writer waits while this much is unread: memory stays bounded
        self._reader_gone = False
        self._chunks: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._error: Optional[BaseException] = None
        self._offset = 0  # into the first chunk
        self._avail = 0  # bytes written and not read yet
        self.closed = False

    # writer side
    def write(self, data: bytes) -> None:
        if data:
            with self._cond:
                # Back-pressure: SSH's flow control then slows the server down, instead of the
                # table piling up here when parsing is slower than the network.
                while self._avail > self.limit and not self._reader_gone:
                    self._cond.wait()
                if self._reader_gone:
                    return  # nobody will read it
                self._chunks.append(data)
                self._avail += len(data)
                self._cond.notify_all()

    def close_writer(self, error: Optional[BaseException] = None) -> None:
        with self._cond:
            self._closed = True
            self._error = error
            self._cond.notify_all()

    def reader_done(self) -> None:
        """The reader stopped (finished or failed): never make the writer wait again."""
        with self._cond:
            self._reader_gone = True
            self._chunks.clear()
            self._avail = 0
            self._cond.notify_all()

    # reader side (what pyarrow calls)
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes, fewer only at the end: like a buffered file, which pyarrow expects
        (its first block must hold the whole header line)."""
        with self._cond:
            while not self._closed and (n is None or n < 0 or self._available() < n):
                self._cond.wait()
            if self._error is not None:
                raise IOError(f"the stream was interrupted: {self._error}")
            if not self._chunks:
                return b""
            if n is None or n < 0:
                out = b"".join(bytes(c) for c in self._chunks)
                out = out[self._offset:]
                self._chunks.clear()
                self._offset = 0
                self._avail = 0
                self._cond.notify_all()
                return out
            parts, want = [], n
            while self._chunks and want > 0:
                head = self._chunks[0]
                avail = len(head) - self._offset
                if avail <= want:
                    parts.append(head[self._offset:] if self._offset else head)
                    self._chunks.popleft()
                    self._offset = 0
                    want -= avail
                else:
                    parts.append(head[self._offset:self._offset + want])
                    self._offset += want
                    want = 0
            self._avail -= n - want
            self._cond.notify_all()  # a writer may be waiting for room
            return parts[0] if len(parts) == 1 else b"".join(parts)

    def _available(self) -> int:
        return self._avail

    def close(self) -> None:
        self.closed = True


@dataclass
class TableStream:
    name: str
    count: int
    bytes: int = 0
    sampled_bytes: int = 0  # newlines are counted in samples only (for progress estimates)
    sampled_lines: int = 0

    def rows_estimate(self) -> int:
        """Rows received so far, estimated from the newlines in sampled chunks (values may hold
        newlines too): for progress only; the real count is checked at the end."""
        if not self.sampled_bytes:
            return 0
        return max(0, min(self.count, int(self.bytes * self.sampled_lines / self.sampled_bytes) - 1))
    ended: bool = False


def _json_name(text: str) -> str:
    try:
        name = json.loads(text)
    except ValueError:
        name = None
    if not isinstance(name, str):
        raise StreamError(f"psql's output named a table oddly: {text[:200]!r}",
                          "Run the export again; if it repeats, report it with this message.")
    return name


@dataclass
class Splitter:
    """Cuts psql's stdout into the parts listed in the module docstring.

    `on_table_start(name, count)` returns a writable sink (e.g. a ChunkPipe) for the CSV;
    `on_table_end(name)` is called when that table's CSV is complete.
    """

    nonce: str
    on_table_start: Callable[[str, int], object]
    on_table_end: Callable[[str], None]
    on_data: Optional[Callable[[TableStream, int], None]] = None
    on_catalog: Optional[Callable[[list], None]] = None
    snapshot: str = ""
    started_epoch: float = 0.0
    catalog: Optional[list] = None
    tables: dict = field(default_factory=dict)
    done: bool = False
    _pending: bytes = b""
    _current: Optional[TableStream] = None
    _sink: object = None

    def __post_init__(self) -> None:
        self._marker = (self.nonce + " ").encode()
        self._end = self._marker + b"end "

    def feed(self, data: bytes) -> None:
        buf = self._pending + data if self._pending else data
        self._pending = b""
        while buf:
            if self._current is None:
                nl = buf.find(b"\n")
                if nl < 0:
                    self._pending = bytes(buf)
                    return
                self._line(bytes(buf[:nl]))
                buf = buf[nl + 1:]
            else:
                idx = buf.find(self._end)
                if idx < 0:
                    keep = len(self._end) - 1  # a marker may straddle two chunks
                    cut = max(0, len(buf) - keep)
                    self._data(buf[:cut])
                    self._pending = bytes(buf[cut:])
                    return
                self._data(buf[:idx])
                self._finish_table()
                buf = buf[idx:]  # the end line itself is handled as a marker line

    def _data(self, chunk) -> None:
        if not chunk:
            return
        t = self._current
        t.bytes += len(chunk)
        if t.sampled_bytes < (1 << 20):  # the first MB is a fair sample
            t.sampled_bytes += len(chunk)
            t.sampled_lines += chunk.count(b"\n")
        self._sink.write(bytes(chunk))
        if self.on_data is not None:
            self.on_data(t, len(chunk))

    def _finish_table(self) -> None:
        t = self._current
        t.ended = True
        self._current = None
        self._sink = None
        self.on_table_end(t.name)

    def _line(self, line: bytes) -> None:
        if not line.startswith(self._marker):
            raise StreamError(f"Unexpected output from psql: {line[:200]!r}",
                              "Run the export again; if it repeats, report it with this message.")
        kind, _, rest = line[len(self._marker):].decode("utf-8").partition(" ")
        if kind == "snapshot":
            snap, _, epoch = rest.partition(" ")
            self.snapshot, self.started_epoch = snap, float(epoch)
        elif kind == "catalog":
            self.catalog = json.loads(rest)
            if self.on_catalog is not None:
                self.on_catalog(self.catalog)
        elif kind == "count":
            quoted, _, count = rest.rpartition(" ")
            name = _json_name(quoted)
            t = TableStream(name, int(count))
            self.tables[name] = t
            self._current = t
            self._sink = self.on_table_start(name, t.count)
        elif kind == "end":
            rest = _json_name(rest)
            if rest not in self.tables or not self.tables[rest].ended:
                raise StreamError(f"psql's output ended table {rest!r} out of order.",
                                  "Run the export again; if it repeats, report it.")
        elif kind == "done":
            self.done = True
        else:
            raise StreamError(f"Unknown marker {kind!r} in psql's output.", "Report this.")
