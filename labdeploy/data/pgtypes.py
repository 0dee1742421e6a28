"""PostgreSQL column types <-> pandas dtypes, and PostgreSQL's CSV format both ways.

Pure code (no server). `COPY ... TO STDOUT WITH (FORMAT csv, HEADER)` writes NULL as an
unquoted empty field and an empty string as `""`; pyarrow's CSV reader can tell the two
apart (`quoted_strings_can_be_null=False`), pandas' cannot, so pyarrow reads, and it parses
in several threads.

Dtypes, decided by the schema (not by the data, so every export of a table looks the same):

| PostgreSQL                      | pandas                                             |
| smallint / integer / bigint     | int16/32/64 if NOT NULL, else nullable Int16/32/64  |
| real / double / numeric         | float64 (NULL -> NaN)                               |
| boolean                         | bool if NOT NULL, else nullable boolean             |
| timestamp with time zone        | datetime64[UTC] (NULL -> NaT)                       |
| timestamp / date                | datetime64 (naive)                                  |
| json / jsonb                    | Python objects (dict, list, ...; NULL -> None)      |
| bytea                           | bytes                                               |
| anything else (text, enum, ...) | str (NULL stays missing, "" stays "")               |
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass
from typing import BinaryIO, Iterable, Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..errors import LabdeployError

INT_TYPES = {"int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64(), "oid": pa.int64()}
FLOAT_TYPES = {"float4", "float8", "numeric", "money_"}
NULLABLE_INTS = {pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
BLOCK_SIZE = 4 << 20  # pyarrow parses this much per task; several tasks run in parallel


class ExportFormatError(LabdeployError):
    """Data that could not be read as the column's type."""

    code = "export.data_unreadable"


@dataclass(frozen=True)
class Column:
    """One column as the catalog describes it."""

    name: str
    type: str  # as PostgreSQL prints it, e.g. "timestamp with time zone"
    base: str  # the base type's typname after resolving domains, e.g. "timestamptz"
    notnull: bool = False
    category: str = ""  # pg_type.typcategory: A array, E enum, ...

    @property
    def kind(self) -> str:
        """int / float / bool / timestamptz / timestamp / date / json / bytea / text."""
        if self.category == "A":
            return "text"  # arrays stay in PostgreSQL's text form, e.g. "{1,2,3}"
        if self.base in INT_TYPES:
            return "int"
        if self.base in FLOAT_TYPES:
            return "float"
        if self.base == "bool":
            return "bool"
        if self.base in ("timestamptz", "timestamp", "date", "bytea"):
            return self.base
        if self.base in ("json", "jsonb"):
            return "json"
        return "text"

    def arrow_type(self) -> pa.DataType:
        kind = self.kind
        if kind == "int":
            return INT_TYPES[self.base]
        return {"float": pa.float64(), "bool": pa.bool_(), "timestamptz": pa.timestamp("us", tz="UTC"),
                "timestamp": pa.timestamp("us"), "date": pa.date32()}.get(kind, pa.string())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Column":
        return cls(name=d["name"], type=d.get("type", ""), base=d.get("base", "text"),
                   notnull=bool(d.get("notnull", False)), category=d.get("category", ""))


def columns_from_catalog(rows: Iterable[dict]) -> list[Column]:
    return [Column.from_dict(r) for r in rows]


# ---------------------------------------------------------------------------- reading


def _source(data) -> pa.NativeFile | BinaryIO:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return pa.BufferReader(data)
    return data


def read_csv_table(data, columns: Optional[Sequence[Column]] = None, *, header: bool = True) -> pa.Table:
    """Parse PostgreSQL CSV into an Arrow table. With `columns`, types come from the catalog;
    without (a zip made by Dallinger itself), pyarrow infers them."""
    read = pacsv.ReadOptions(use_threads=True, block_size=BLOCK_SIZE,
                             column_names=[c.name for c in columns] if columns is not None else None,
                             skip_rows=1 if (header and columns is not None) else 0)
    parse = pacsv.ParseOptions(newlines_in_values=True)
    convert = pacsv.ConvertOptions(
        column_types={c.name: c.arrow_type() for c in columns} if columns is not None else None,
        null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
        true_values=["t", "true"], false_values=["f", "false"])
    try:
        return pacsv.read_csv(_source(data), read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise ExportFormatError(f"The data could not be read: {exc}",
                                "This is unexpected for data straight from PostgreSQL; please report it "
                                "with the table's column types.") from exc


JSON_SLICE = 8192  # values per json.loads call: short enough not to hold the GIL for long


def _json_values(arr) -> list:
    """JSON texts -> Python objects. Values are joined into one JSON array in Arrow (no Python
    string per value) and parsed with one json.loads call per slice: about 3x faster than one
    call per value. Slices keep each call short, so the thread receiving the SSH stream is not
    held up. SQL NULL becomes None."""
    if isinstance(arr, pa.ChunkedArray):
        out: list = []
        for chunk in arr.chunks:
            out.extend(_json_values(chunk))
        return out
    out = []
    filled = pc.fill_null(arr.cast(pa.large_string()), "null")
    sep = pa.scalar(",", pa.large_string())
    for start in range(0, len(filled), JSON_SLICE):
        part = filled.slice(start, JSON_SLICE)
        joined = pc.binary_join(pa.LargeListArray.from_arrays(pa.array([0, len(part)], pa.int64()), part), sep)
        out.extend(json.loads("[" + joined[0].as_py() + "]"))
    return out


def _bytea_values(arr: pa.ChunkedArray) -> list:
    out = []
    for v in arr.to_pylist():
        if v is None:
            out.append(None)
        elif v.startswith("\\x"):
            out.append(bytes.fromhex(v[2:]))
        else:  # bytea_output = escape, rare; keep the text
            out.append(v.encode())
    return out


def _is_integer_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def to_frame(table: pa.Table, columns: Optional[Sequence[Column]] = None,
             parsed: Optional[dict] = None) -> pd.DataFrame:
    """An Arrow table as a DataFrame with the dtypes the module docstring lists. `parsed` holds
    columns already converted (JSON parsed while the data streamed in)."""
    by_name = {c.name: c for c in columns} if columns is not None else {}
    data = {}
    for name, arr in zip(table.column_names, table.columns):
        col = by_name.get(name)
        kind = col.kind if col is not None else None
        if parsed and name in parsed:
            data[name] = pd.Series(parsed[name], dtype=object)
        elif kind == "json":
            data[name] = pd.Series(_json_values(arr), dtype=object)
        elif kind == "bytea":
            data[name] = pd.Series(_bytea_values(arr), dtype=object)
        elif _is_integer_type(arr.type):
            if (col is not None and col.notnull) or (col is None and arr.null_count == 0):
                data[name] = arr.to_pandas()
                if data[name].dtype.kind != "i":  # defensive: a NULL despite NOT NULL
                    data[name] = arr.to_pandas(types_mapper=NULLABLE_INTS.get)
            else:
                data[name] = arr.to_pandas(types_mapper=NULLABLE_INTS.get)
        elif pa.types.is_boolean(arr.type):
            if (col is not None and col.notnull) or (col is None and arr.null_count == 0):
                data[name] = arr.to_pandas()
                if data[name].dtype != bool:
                    data[name] = arr.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)
            else:
                data[name] = arr.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)
        elif pa.types.is_timestamp(arr.type):
            # One unit everywhere (inferred columns may come as s or ns): microseconds, as PostgreSQL keeps.
            data[name] = arr.cast(pa.timestamp("us", tz=arr.type.tz)).to_pandas()
        elif pa.types.is_date(arr.type):
            data[name] = pd.Series(arr.cast(pa.timestamp("us")).to_pandas())
        elif pa.types.is_null(arr.type):  # a column Dallinger exported with no values at all
            data[name] = pd.Series([None] * len(arr), dtype=object)
        else:
            data[name] = arr.to_pandas()
    frame = pd.DataFrame(data, columns=list(table.column_names))
    if len(frame.index) != table.num_rows:  # no columns at all: keep the row count
        frame = pd.DataFrame(index=pd.RangeIndex(table.num_rows))
    return frame


def read_csv_stream(source, columns: Sequence[Column]) -> pd.DataFrame:
    """Like read_csv, for a file-like source that is still being written (a ChunkPipe): batches
    are parsed as they arrive, and JSON columns converted batch by batch, so most of the work
    overlaps the download."""
    if not columns:
        return read_csv(source, columns)
    # One parsing thread: it already overlaps the download, and on a small machine (or one the
    # server shares) more threads only compete with the one receiving the stream.
    read = pacsv.ReadOptions(use_threads=False, block_size=1 << 20, column_names=[c.name for c in columns],
                             skip_rows=1)
    convert = pacsv.ConvertOptions(
        column_types={c.name: c.arrow_type() for c in columns}, null_values=[""], strings_can_be_null=True,
        quoted_strings_can_be_null=False, true_values=["t", "true"], false_values=["f", "false"])
    json_cols = [c.name for c in columns if c.kind == "json"]
    parsed: dict = {name: [] for name in json_cols}
    batches = []
    try:
        reader = pacsv.open_csv(source, read_options=read, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                convert_options=convert)
        schema = reader.schema
        for batch in reader:
            for name in json_cols:
                parsed[name].extend(_json_values(batch.column(name)))
            if json_cols:  # the text is no longer needed: keep only the parsed objects
                batch = batch.drop_columns(json_cols) if hasattr(batch, "drop_columns") else batch
            batches.append(batch)
    except pa.ArrowInvalid as exc:
        raise ExportFormatError(f"The data could not be read: {exc}",
                                "This is unexpected for data straight from PostgreSQL; please report it "
                                "with the table's column types.") from exc
    if batches:
        table = pa.Table.from_batches(batches)
    else:
        table = pa.Table.from_batches([], schema=schema)
        if json_cols:
            table = table.drop_columns(json_cols)
    frame = to_frame(table, columns)
    for name in json_cols:
        frame[name] = pd.Series(parsed[name], index=frame.index, dtype=object)
    return frame[[c.name for c in columns]]


def read_csv(data, columns: Optional[Sequence[Column]] = None) -> pd.DataFrame:
    """PostgreSQL CSV (with header) -> DataFrame."""
    if columns is not None and not columns:
        # A table without columns: COPY writes an empty header line, then one empty line per row.
        raw = data if isinstance(data, (bytes, bytearray)) else data.read()
        rows = max(0, bytes(raw).count(b"\n") - 1)
        return pd.DataFrame(index=pd.RangeIndex(rows))
    return to_frame(read_csv_table(data, columns), columns)


# ---------------------------------------------------------------------------- writing


def _strip_fraction(arr: pa.Array) -> pa.Array:
    # PostgreSQL prints "12:00:05.12", not "12:00:05.120000", and "12:00:05" for whole seconds.
    arr = pc.replace_substring_regex(arr, pattern=r"\.0+$", replacement="")
    return pc.replace_substring_regex(arr, pattern=r"(\.\d*[1-9])0+$", replacement=r"\1")


def _text_array(series: pd.Series, col: Optional[Column]) -> pa.Array:
    """One column as PostgreSQL would print it in CSV (NULL stays null)."""
    kind = col.kind if col is not None else None
    if kind == "json" or (kind is None and series.dtype == object and _looks_like_json(series)):
        return pa.array([None if _isna(v) else json.dumps(v, ensure_ascii=False) for v in series],
                        type=pa.string())
    if kind == "bytea" or (kind is None and series.dtype == object and _first(series, bytes)):
        return pa.array([None if _isna(v) else "\\x" + bytes(v).hex() for v in series], type=pa.string())
    if pd.api.types.is_bool_dtype(series.dtype):
        arr = pa.array(series, from_pandas=True, type=pa.bool_())
        return pc.if_else(arr, "t", "f")
    if isinstance(series.dtype, pd.DatetimeTZDtype) or kind == "timestamptz":
        s = pd.to_datetime(series, utc=True)
        arr = pa.array(s.dt.tz_convert("UTC").dt.tz_localize(None), from_pandas=True, type=pa.timestamp("us"))
        text = _strip_fraction(pc.strftime(arr, format="%Y-%m-%d %H:%M:%S"))
        return pc.binary_join_element_wise(text, pa.scalar("+00"), "")
    if pd.api.types.is_datetime64_dtype(series.dtype):
        arr = pa.array(series, from_pandas=True, type=pa.timestamp("us"))
        if kind == "date":
            return pc.strftime(arr, format="%Y-%m-%d")
        return _strip_fraction(pc.strftime(arr, format="%Y-%m-%d %H:%M:%S"))
    if kind == "float" or pd.api.types.is_float_dtype(series.dtype):
        return pa.array(series, from_pandas=True, type=pa.float64())
    if kind == "int" or pd.api.types.is_integer_dtype(series.dtype):
        return pa.array(series, from_pandas=True, type=pa.int64())
    return pa.array([None if _isna(v) else str(v) for v in series], type=pa.string()) \
        if series.dtype == object else pa.array(series, from_pandas=True, type=pa.string())


def _isna(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and v != v:
        return True
    return v is pd.NA or v is pd.NaT


def _first(series: pd.Series, kind: type) -> bool:
    for v in series:
        if not _isna(v):
            return isinstance(v, kind)
    return False


def _looks_like_json(series: pd.Series) -> bool:
    for v in series:
        if not _isna(v):
            return isinstance(v, (dict, list))
    return False


def write_csv(frame: pd.DataFrame, sink, columns: Optional[Sequence[Column]] = None) -> None:
    """Write a DataFrame as PostgreSQL-compatible CSV with header: NULL as an unquoted empty field,
    text always quoted (so "" stays an empty string), booleans t/f, timestamps in ISO form."""
    by_name = {c.name: c for c in columns} if columns is not None else {}
    names = [str(n) for n in frame.columns]
    if not names:
        sink.write(b"\n" + b"\n" * len(frame.index))
        return
    arrays = [_text_array(frame.iloc[:, i], by_name.get(name)) for i, name in enumerate(names)]
    table = pa.Table.from_arrays(arrays, names=names)
    pacsv.write_csv(table, sink, write_options=pacsv.WriteOptions(include_header=True, batch_size=65536,
                                                                  quoting_style="needed"))


def csv_bytes(frame: pd.DataFrame, columns: Optional[Sequence[Column]] = None) -> bytes:
    buf = io.BytesIO()
    write_csv(frame, buf, columns)
    return buf.getvalue()


def infer_columns(frame: pd.DataFrame) -> list[Column]:
    """Column descriptions for a DataFrame that did not come with a catalog (best effort)."""
    out = []
    for name in frame.columns:
        s = frame[name]
        dt = s.dtype
        if pd.api.types.is_bool_dtype(dt):
            base = "bool"
        elif pd.api.types.is_integer_dtype(dt):
            base = "int8"
        elif pd.api.types.is_float_dtype(dt):
            base = "float8"
        elif isinstance(dt, pd.DatetimeTZDtype):
            base = "timestamptz"
        elif pd.api.types.is_datetime64_dtype(dt):
            base = "timestamp"
        elif dt == object and _looks_like_json(s):
            base = "jsonb"
        elif dt == object and _first(s, bytes):
            base = "bytea"
        else:
            base = "text"
        notnull = bool(not s.isna().any()) and base in ("int8", "bool")
        out.append(Column(str(name), base, base, notnull))
    return out


_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, double-quoted (embedded quotes doubled)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise LabdeployError(f"{name!r} is not a usable table or column name.", "Check the name.",
                             code="invalid.table_name")
    return '"' + name.replace('"', '""') + '"'


def table_ref(name: str) -> str:
    """'schema.table' or 'table' (public) as a quoted reference."""
    if "." in name:
        schema, table = name.split(".", 1)
        return f"{quote_ident(schema)}.{quote_ident(table)}"
    return f"{quote_ident('public')}.{quote_ident(name)}"


def frame_nbytes(frame: pd.DataFrame) -> int:
    return int(frame.memory_usage(index=True, deep=True).sum())


__all__ = ["Column", "ExportFormatError", "read_csv", "read_csv_table", "to_frame", "write_csv", "csv_bytes",
           "infer_columns", "quote_ident", "table_ref", "frame_nbytes"]
