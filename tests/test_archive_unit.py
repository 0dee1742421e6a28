"""Pure parts of export: PostgreSQL CSV <-> DataFrames, archives on disk, the stream splitter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import pandas as pd
import pytest

from labdeploy import errors
from labdeploy.data import archive, copystream, pgtypes
from labdeploy.data.archive import ExportData, load_export, write_archive, write_parquet
from labdeploy.errors import LabdeployError, ValidationError
from labdeploy.data.pgtypes import Column

COLUMNS = [
    Column("id", "integer", "int4", True, "N"),
    Column("n", "bigint", "int8", False, "N"),
    Column("f", "double precision", "float8", False, "N"),
    Column("b", "boolean", "bool", False, "B"),
    Column("done", "boolean", "bool", True, "B"),
    Column("ts", "timestamp with time zone", "timestamptz", False, "D"),
    Column("t", "timestamp without time zone", "timestamp", False, "D"),
    Column("d", "date", "date", False, "D"),
    Column("j", "jsonb", "jsonb", False, "U"),
    Column("s", "text", "text", False, "S"),
    Column("x", "bytea", "bytea", False, "U"),
    Column("e", "status", "status", False, "E"),
    Column("a", "integer[]", "_int4", False, "A"),
]

# As PostgreSQL's COPY ... CSV HEADER writes it (DateStyle ISO, TimeZone UTC).
PG_CSV = (
    'id,n,f,b,done,ts,t,d,j,s,x,e,a\n'
    '1,,1.5,,t,2024-01-02 03:04:05.12+00,2024-01-02 03:04:05,2024-01-02,"{""a"": [1, 2]}","",\\x00ff,working,"{1,2}"\n'
    '2,9007199254740993,,f,f,,,,,,,,\n'
    '3,-1,-0.25,t,t,2024-01-02 03:04:05+00,,,"[""ü"", null]","héllo\nwörld, ""quoted""",,,\n'
).encode()


def test_csv_to_frame_keeps_types_and_nulls():
    df = pgtypes.read_csv(PG_CSV, COLUMNS)
    assert str(df["id"].dtype) == "int32"
    assert str(df["n"].dtype) == "Int64" and df["n"].isna().tolist() == [True, False, False]
    assert df["n"][1] == 9007199254740993  # beyond float precision: kept exact
    assert df["f"].dtype == "float64" and pd.isna(df["f"][1])
    assert str(df["b"].dtype) == "boolean" and df["b"].isna()[0] and df["b"][2]
    assert df["done"].dtype == bool
    assert str(df["ts"].dtype).startswith("datetime64") and str(df["ts"].dt.tz) == "UTC"
    assert df["ts"][0] == pd.Timestamp("2024-01-02 03:04:05.12", tz="UTC") and pd.isna(df["ts"][1])
    assert df["t"].dt.tz is None and df["d"][0] == pd.Timestamp("2024-01-02")
    assert df["j"][0] == {"a": [1, 2]} and df["j"][1] is None and df["j"][2] == ["ü", None]
    assert df["s"][0] == "" and pd.isna(df["s"][1]) and df["s"][2] == 'héllo\nwörld, "quoted"'
    assert df["x"][0] == b"\x00\xff"
    assert df["e"][0] == "working" and df["a"][0] == "{1,2}"


def test_frame_to_csv_round_trip_is_exact():
    df = pgtypes.read_csv(PG_CSV, COLUMNS)
    out = pgtypes.csv_bytes(df, COLUMNS)
    pd.testing.assert_frame_equal(pgtypes.read_csv(out, COLUMNS), df)
    lines = out.decode().splitlines()
    assert ',"t","2024-01-02 03:04:05.12+00",' in lines[1]  # booleans t/f, PostgreSQL's timestamp form
    assert lines[2].startswith("2,9007199254740993,,") and lines[2].endswith(",,,,,,,")  # NULL: unquoted empty


def test_inferred_types_for_dallinger_made_csv():
    df = pgtypes.read_csv(PG_CSV)  # no catalog: what a zip made by Dallinger gives
    assert str(df["id"].dtype) == "int64" and str(df["n"].dtype) == "Int64"
    assert str(df["done"].dtype) == "bool" and str(df["b"].dtype) == "boolean"
    assert str(df["ts"].dt.tz) == "UTC"
    assert df["s"][0] == "" and pd.isna(df["s"][1])


def test_empty_table_and_table_without_columns():
    df = pgtypes.read_csv(b"id,name\n", [Column("id", "integer", "int4", True), Column("name", "text", "text")])
    assert list(df.columns) == ["id", "name"] and len(df) == 0 and str(df["id"].dtype) == "int32"
    assert len(pgtypes.read_csv(b"\n\n\n", [])) == 2


def _export_data() -> ExportData:
    frames = {"participant": pgtypes.read_csv(PG_CSV, COLUMNS),
              "info": pd.DataFrame({"id": pd.Series([], dtype="int32")})}
    return ExportData(frames, app="t-exp-unit", server="h:22", columns={
        "participant": COLUMNS, "info": [Column("id", "integer", "int4", True)]})


def test_archive_is_dallinger_shaped_and_loads_back(tmp_path):
    data = _export_data()
    path = write_archive(data, tmp_path / "t-exp-unit-data.zip")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert {"data/participant.csv", "data/info.csv", "experiment_id.md", "labdeploy.json"} <= names
        assert zf.read("experiment_id.md") == b"t-exp-unit"
        # Dallinger's ingest_zip picks members by table-name substrings: the extra file must match none.
        dallinger_tables = ["network", "participant", "node", "info", "notification", "question",
                            "transformation", "vector", "transmission"]
        assert not any(t in "labdeploy.json" for t in dallinger_tables)
    back = load_export(path)
    assert back.app == "t-exp-unit" and list(back) == ["info", "participant"]
    pd.testing.assert_frame_equal(back["participant"], data["participant"])
    assert str(back["info"]["id"].dtype) == "int32"


def test_load_a_zip_made_by_dallinger(tmp_path):
    # Dallinger's archive_data: data/<table>.csv straight from COPY, experiment_id.md, nothing else.
    path = tmp_path / "abc-data.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/participant.csv", PG_CSV)
        zf.writestr("data/node.csv", b"id,creation_time,failed\n")
        zf.writestr("experiment_id.md", "abc")
    data = load_export(path)
    assert data.app == "abc" and set(data) == {"participant", "node"}
    assert len(data["participant"]) == 3 and len(data["node"]) == 0
    assert data["participant"]["j"][0] == '{"a": [1, 2]}'  # no catalog: JSON stays text
    with pytest.raises(archive.ArchiveError) as err:
        load_export(path, tables=["nope"])
    assert err.value.hint


def test_load_rejects_non_exports(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(archive.ArchiveError):
        load_export(tmp_path / "x.zip")
    with zipfile.ZipFile(tmp_path / "y.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(archive.ArchiveError) as err:
        load_export(tmp_path / "y.zip")
    assert "data/<table>.csv" in err.value.message
    with pytest.raises(archive.ArchiveError):
        load_export(tmp_path / "missing.zip")


def test_existing_archive_is_not_overwritten_without_asking(tmp_path):
    data = _export_data()
    path = write_archive(data, tmp_path / "a.zip")
    before = path.read_bytes()
    with pytest.raises(ValidationError):
        write_archive(data, path)
    assert path.read_bytes() == before
    write_archive(data, path, overwrite=True)
    assert load_export(path).app == "t-exp-unit"


def test_parquet_folder_round_trip(tmp_path):
    data = _export_data()
    folder = write_parquet(data, tmp_path / "t-exp-unit-parquet")
    assert sorted(p.name for p in folder.iterdir()) == ["info.parquet", "labdeploy.json", "participant.parquet"]
    back = load_export(folder)
    pd.testing.assert_frame_equal(back["participant"], data["participant"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


DISK_FULL_CHILD = textwrap.dedent("""
    import resource, signal, sys
    import pandas as pd
    from labdeploy.data.archive import ExportData, write_archive
    from labdeploy.errors import DiskFull
    frame = pd.DataFrame({"id": range(200000), "s": ["some text that takes room %d" % i for i in range(200000)]})
    # The file-size limit stands in for a full disk: writes past it fail with EFBIG, as with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200000, 200000))
    try:
        write_archive(ExportData({"big": frame}, app="t-exp-unit"), sys.argv[1])
    except DiskFull as exc:
        print("DISKFULL", exc.message, "|", exc.hint)
""")


def test_disk_full_leaves_nothing_under_the_final_name(tmp_path):
    # RLIMIT_FSIZE in a child process: no root, no mount, and the same failure path (a write
    # that fails part-way) as a full disk. test_export.py also fills a real tmpfs.
    target = tmp_path / "out" / "t-exp-unit-data.zip"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    res = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(target)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert "DISKFULL" in res.stdout, res.stdout + res.stderr
    assert "disk is full" in res.stdout and "Free some space" in res.stdout
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temp file is gone too


# ---------------------------------------------------------------------------- stream splitting


def _stream(nonce: str, tables: dict) -> bytes:
    out = [f"{nonce} snapshot 10:12:11 1700000000.5\n",
           f"{nonce} catalog " + json.dumps([{"table": t, "columns": []} for t in tables]) + "\n"]
    for name, csv in tables.items():
        quoted = json.dumps(name, ensure_ascii=False)  # as to_json(name) writes it
        out.append(f"{nonce} count {quoted} {csv.count(chr(10)) - 1}\n{csv}{nonce} end {quoted}\n")
    out.append(f"{nonce} done\n")
    return "".join(out).encode()


@pytest.mark.parametrize("chunk", [1, 7, 64, 100000])
def test_splitter_cuts_tables_at_any_chunk_size(chunk):
    nonce = copystream.new_nonce()
    tables = {"a": "id\n1\n2\n", "empty": "id\n", "t x": 'v\n"x\nlabdeploy-not-the-nonce end a"\n',
              "new\nline\tand 9": "id\n3\n"}  # a table's name may hold a newline, a tab, a space and digits
    got, ended = {}, []

    class Sink(list):
        def write(self, b):
            self.append(b)

    def start(name, count):
        got[name] = Sink()
        return got[name]

    sp = copystream.Splitter(nonce, start, ended.append)
    data = _stream(nonce, tables)
    for i in range(0, len(data), chunk):
        sp.feed(data[i:i + chunk])
    assert sp.done and sp.snapshot == "10:12:11" and sp.started_epoch == 1700000000.5
    assert ended == ["a", "empty", "t x", "new\nline\tand 9"]
    assert {k: b"".join(v).decode() for k, v in got.items()} == tables
    assert sp.tables["a"].count == 2


def test_splitter_rejects_stray_output():
    sp = copystream.Splitter("n0nce", lambda n, c: None, lambda n: None)
    with pytest.raises(copystream.StreamError):
        sp.feed(b"WARNING: something\n")


@pytest.mark.parametrize("rows", [0, 3])
def test_chunk_pipe_feeds_the_streaming_parser_in_tiny_pieces(rows):
    # SSH delivers arbitrary pieces: the header itself may arrive split (a bug found by the
    # deploy panel's test, where a short table's header came in two packets).
    cols = [Column("id", "integer", "int4", True), Column("j", "jsonb", "jsonb")]
    text = b"id,j\n" + b"".join(b'%d,"{""a"": %d}"\n' % (i, i) for i in range(1, rows + 1))
    pipe = copystream.ChunkPipe()
    got = []
    reader = threading.Thread(target=lambda: got.append(pgtypes.read_csv_stream(pipe, cols)))
    reader.start()
    for i in range(0, len(text), 3):
        pipe.write(text[i:i + 3])
        if i < 12:
            time.sleep(0.05)  # let the parser ask while the header is still incomplete
    pipe.close_writer()
    reader.join(10)
    assert got[0]["id"].tolist() == list(range(1, rows + 1))
    assert got[0]["j"].tolist() == [{"a": i} for i in range(1, rows + 1)]
    assert list(got[0].columns) == ["id", "j"]
    broken = copystream.ChunkPipe()
    broken.write(b"id\n1\n")
    broken.close_writer(ConnectionError("dropped"))
    with pytest.raises(IOError):
        broken.read(10)


def test_script_names_tables_safely():
    script = copystream.build_script("n0nce", ["participant", "other.x"])
    assert "IN ('participant', 'other.x')" in script and "REPEATABLE READ READ ONLY" in script
    for bad in ["x; DROP TABLE y", "a'b", "", "a.b.c", "-x"]:
        with pytest.raises(ValidationError):
            copystream.build_script("n0nce", [bad])


def test_errors_have_hints():
    assert isinstance(errors.DiskFull("m", "h"), LabdeployError)


def test_chunk_pipe_holds_back_the_writer_and_never_deadlocks():
    pipe = copystream.ChunkPipe(limit=10)
    wrote = []
    writer = threading.Thread(target=lambda: [pipe.write(b"x" * 8) or wrote.append(i) for i in range(3)])
    writer.start()
    writer.join(0.3)
    assert writer.is_alive() and len(wrote) == 2  # 16 bytes unread > limit: the third write waits
    assert pipe.read(8) == b"x" * 8
    writer.join(5)
    assert not writer.is_alive() and len(wrote) == 3
    stuck = copystream.ChunkPipe(limit=1)
    stuck.write(b"abc")
    stuck.reader_done()  # the parser failed: later writes are dropped, not blocked
    t = threading.Thread(target=stuck.write, args=(b"def",))
    t.start()
    t.join(5)
    assert not t.is_alive()
