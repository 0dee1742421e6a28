"""Issue 14, "data out", pure parts: table names as file names, what load_export reads back,
file modes under a permissive umask, unpacking a hostile tar stream, refusals before
anything is sent."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import unicodedata
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from labdeploy.data import archive
from labdeploy import export
from labdeploy.server import psql
from labdeploy.data.archive import ExportData, load_export
from labdeploy.errors import ValidationError
from labdeploy.progress import Collector, Progress

HOSTILE = ["../../../../elsewhere/rel", "/elsewhere/abs", "..", ".", ".hidden", "trailing.", "a/b", "a\\b",
           "Participant", "participant", "PARTICIPANT", "ünïcödé 表", "e\u0301", "\u00e9", "É",
           "x" * 63, "y" * 63 + "." + "Z" * 63, "ü" * 63, "tab\there", "new\nline", "\x01\x1f\x7f", "nul",
           "CON", "com1.x", "a%41", "%41", "~", "a~0123456789abcdef", "quo'te\"d", "data/../x", "labdeploy",
           "experiment_id", "-", "_", "$", "space at end "]


@pytest.fixture
def permissive_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def frames_for(names) -> ExportData:
    return ExportData({n: pd.DataFrame({"id": [i], "name": [n]}) for i, n in enumerate(names)}, app="t-sec-unit",
                      server="h:22", snapshot="1:2:", exported_at=datetime(2026, 1, 2, tzinfo=timezone.utc))


def test_file_names_are_safe_distinct_and_reversible():
    stems = archive.file_stems(HOSTILE)
    assert len(set(stems.values())) == len(HOSTILE)
    # distinct also where a file system ignores case or normalises unicode
    folded = {unicodedata.normalize("NFD", s).casefold() for s in stems.values()}
    assert len(folded) == len(HOSTILE)
    for table, stem in stems.items():
        assert stem and not stem.startswith(".") and not stem.endswith(".") and len(stem) <= archive.STEM_MAX
        assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789_-.%~ABCDEF" for c in stem), stem
        assert stem.split(".")[0] not in ("con", "nul", "com1")  # Windows device names
        if "~" not in stem:
            assert archive.table_from_stem(stem) == table
    assert stems["participant"] == "participant" and archive.file_stem("public_x-1") == "public_x-1"
    assert archive.file_stem("y" * 63 + "." + "Z" * 63) == archive.file_stem("y" * 63 + "." + "Z" * 63)
    with pytest.raises(ValidationError):
        archive.file_stem("")


def test_hostile_names_stay_inside_and_round_trip(tmp_path, home):
    base = tmp_path / "a" / "b" / "c"
    out = base / "d" / "out"
    out.mkdir(parents=True)
    elsewhere = [base.parent / "elsewhere", tmp_path / "elsewhere"]
    for p in elsewhere:
        p.mkdir()  # where the relative and absolute names lead, so a write there would succeed
    names = [HOSTILE[0], f"{tmp_path}/elsewhere/abs", *HOSTILE[1:]]
    data = frames_for(names)
    path = export.save_archive(data, out / "t-sec-unit-data.zip", parquet=True)
    assert all(list(p.iterdir()) == [] for p in elsewhere)
    outside = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out and tmp_path / "home" not in p.parents}
    assert outside == {tmp_path / "a", tmp_path / "a" / "b", base, base / "d", tmp_path / "home", *elsewhere}
    assert not Path("/elsewhere").exists()
    with zipfile.ZipFile(path) as zf:
        members = zf.namelist()
    for m in members:
        assert not m.startswith("/") and ".." not in m.split("/") and "\\" not in m, m
        assert m.count("/") <= 1 and len(m.encode()) <= 140, m
    parquet = out / "t-sec-unit-data-parquet"
    assert all(f.parent == parquet for f in parquet.rglob("*"))
    for saved in (path, parquet):
        back = load_export(saved)
        assert set(back) == set(names), saved
        for table in names:
            pd.testing.assert_frame_equal(back[table], data[table], obj=repr(table))
        assert list(load_export(saved, tables=["Participant", "../../../../elsewhere/rel"])) == \
            ["../../../../elsewhere/rel", "Participant"]
    # Unzipped (as a researcher may do) it still loads, with the same names.
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(unzipped)
    assert set(load_export(unzipped)) == set(names)


def test_a_tampered_manifest_can_not_read_outside_the_folder(tmp_path):
    folder = archive.write_parquet(frames_for(["a"]), tmp_path / "x-parquet")
    (tmp_path / "secret.parquet").write_bytes((folder / "a.parquet").read_bytes())
    meta = (folder / archive.META_NAME).read_text().replace('"a.parquet"', '"../secret.parquet"')
    (folder / archive.META_NAME).write_text(meta)
    back = load_export(folder)
    assert set(back) == {"a"}  # read by its own file name; the manifest's path is ignored
    (folder / "a.parquet").unlink()
    os.symlink(tmp_path / "secret.parquet", folder / "a.parquet")  # a link leading out is refused
    with pytest.raises(archive.ArchiveError):
        load_export(folder)


def test_a_zip_made_by_dallinger_keeps_its_names(tmp_path):
    path = tmp_path / "d-data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/participant.csv", "id\n1\n")
        zf.writestr("data/Odd%Name.csv", "id\n2\n")
        zf.writestr("experiment_id.md", "d")
    assert set(load_export(path)) == {"participant", "Odd%Name"}


def modes(paths) -> dict:
    return {Path(p).name: oct(stat.S_IMODE(Path(p).stat().st_mode)) for p in paths}


def test_archives_parquet_and_records_are_private(tmp_path, home, permissive_umask):
    data = frames_for(["participant", "info"])
    target = tmp_path / "made" / "by" / "labdeploy" / "t-sec-unit-data.zip"
    archive.ensure_folder(target.parent)
    export.save_archive(data, target, parquet=True)
    parquet = target.with_name("t-sec-unit-data-parquet")
    records = export._records_file()
    assert set(modes([target, *parquet.iterdir(), records]).values()) == {"0o600"}
    assert set(modes([tmp_path / "made", tmp_path / "made" / "by", target.parent, parquet,
                      records.parent]).values()) == {"0o700"}
    # an existing records file from an older version is tightened when next written
    os.chmod(records, 0o644)
    export.save_archive(data, target.with_name("again.zip"))
    assert modes([records])["exports.jsonl"] == "0o600"


def test_an_existing_folder_keeps_its_mode(tmp_path, permissive_umask):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    archive.ensure_folder(mine)
    archive.write_archive(frames_for(["t"]), mine / "x.zip")
    assert modes([mine, mine / "x.zip"]) == {"mine": "0o755", "x.zip": "0o600"}


# ---------------------------------------------------------------------------- download_files' unpacking


def hostile_tar() -> bytes:
    buf = io.BytesIO()

    def add(name: str, data: bytes = b"x", kind=tarfile.REGTYPE, link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        info.mode = 0o644
        tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        add("./", kind=tarfile.DIRTYPE)
        add("./assets", kind=tarfile.DIRTYPE)
        add("./assets/ok.txt", b"fine")
        add("./assets/..dots", b"dots")
        add("../evil", b"evil")
        add("/abs/evil", b"evil")
        add("./a/../../evil", b"evil")
        add("./link", kind=tarfile.SYMTYPE, link="/")
        add("./link/evil", b"through a link that was never made")
        add("./hard", kind=tarfile.LNKTYPE, link="/etc/passwd")
        add("./fifo", kind=tarfile.FIFOTYPE)
        add("./pre/evil", b"through a local link")
        add("./" + "n" * 250, b"long")
    return buf.getvalue()


def test_unpacking_writes_only_regular_files_inside_dest(tmp_path, permissive_umask):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "d" / "dest"
    archive.ensure_folder(dest)
    os.symlink(outside, dest / "pre")  # a link already in the destination is not written through
    events = Collector()
    written, skipped = export._unpack_files(io.BytesIO(hostile_tar()), dest, events, 46)
    assert sorted(p.relative_to(dest).as_posix() for p in written) == \
        ["assets/..dots", "assets/ok.txt", "link/evil", "n" * 250]
    assert {name for name, _ in skipped} == {"../evil", "/abs/evil", "./a/../../evil", "link", "hard", "fifo",
                                             "pre/evil"}
    assert list(outside.iterdir()) == [] and not (tmp_path / "evil").exists() and not Path("/abs/evil").exists()
    assert (dest / "assets" / "ok.txt").read_bytes() == b"fine"
    for p in dest.rglob("*"):
        if p.is_symlink():
            assert p == dest / "pre"
            continue
        assert stat.S_IMODE(p.stat().st_mode) == (0o600 if p.is_file() else 0o700), p
    assert not [p for p in dest.rglob(".labdeploy-*")]  # no temporary file left
    last = events.of(Progress)[-1]
    assert last.done == 4 + 4 + 34 + 4 and last.unit == "bytes"  # the files written


# ---------------------------------------------------------------------------- refused before sending


class NoServer:
    """Stands where a Remote would be: any use of it fails the test."""

    stats = {"commands": 0}

    def __getattr__(self, name):
        raise AssertionError(f"the server was used ({name}) before the input was checked")


@pytest.mark.parametrize("sql", ["select 1; drop table x", "select 1 \\! id", "\\! id", "select ';'",
                                 "select 1 \\g", "", "  ;  ", "select E'\\\\x'"])
def test_query_df_refuses_before_anything_is_sent(sql):
    with pytest.raises(ValidationError) as err:
        psql.query_df(NoServer(), sql)
    assert err.value.hint


def test_query_df_accepts_a_plain_select_with_a_trailing_semicolon():
    assert psql.single_select("  SELECT count(*) FROM pg_database WHERE datname = 'x';  ") == \
        "SELECT count(*) FROM pg_database WHERE datname = 'x'"


def test_query_refuses_missing_parameters_before_connecting():
    with pytest.raises(ValidationError):
        export.query("t-sec-x", NoServer(), "SELECT * FROM t WHERE id = :id")
    with pytest.raises(ValidationError):
        export.query("t-sec-x", NoServer(), "   ")
    assert export._bind("SELECT '100%' AS p, x::int FROM t WHERE a = :a", {"a": 1, "b": 2}) == \
        ("SELECT '100%%' AS p, x::int FROM t WHERE a = %(a)s", {"a": 1})
