"""Pure parts of labdeploy.export: verification of what arrived, snapshots, export records."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from labdeploy.data import copystream
from labdeploy import export
from labdeploy.data.archive import ExportData


def _splitter(counts: dict, done: bool = True) -> copystream.Splitter:
    sp = copystream.Splitter("n0nce", lambda n, c: None, lambda n: None)
    sp.catalog = [{"table": t, "columns": []} for t in counts]
    for t, n in counts.items():
        sp.tables[t] = copystream.TableStream(t, n, ended=True)
    sp.done = done
    return sp


def test_row_count_mismatch_is_an_error_not_a_warning():
    frames = {"a": pd.DataFrame({"x": [1, 2]}), "b": pd.DataFrame({"x": [1]})}
    export._verify(_splitter({"a": 2, "b": 1}), frames)
    with pytest.raises(export.ExportVerificationError) as err:
        export._verify(_splitter({"a": 3, "b": 1}), frames)
    assert "a: 2 rows read, 3 in the database" in err.value.message and err.value.hint
    with pytest.raises(export.ExportVerificationError):
        export._verify(_splitter({"a": 2, "b": 1}, done=False), frames)  # the stream stopped early
    sp = _splitter({"a": 2, "b": 1})
    sp.tables["b"].ended = False
    with pytest.raises(export.ExportVerificationError) as err:
        export._verify(sp, frames)
    assert "b did not arrive" in err.value.message


def test_snapshot_parts_wrap_to_32_bit_xids():
    assert export._snapshot_parts("743:745:743,744") == (745, [743, 744])
    assert export._snapshot_parts(f"{2**32 + 5}:{2**32 + 9}:") == (9, [])


def test_records_only_for_saved_regular_exports(tmp_path, home):
    data = ExportData({"t": pd.DataFrame({"id": [1]})}, app="t-exp-rec", server="h:22", snapshot="1:2:",
                      exported_at=datetime(2026, 1, 2, tzinfo=timezone.utc))
    assert export.last_export_time("t-exp-rec") is None
    path = export.save_archive(data, tmp_path / "a.zip")
    assert export.last_export_time("t-exp-rec") == data.exported_at
    assert export.exports("t-exp-rec")[0]["path"] == str(path)
    anon = data.derive(data, anonymised=True, exported_at=datetime(2026, 2, 1, tzinfo=timezone.utc))
    export.save_archive(anon, tmp_path / "b.zip")
    assert export.last_export_time("t-exp-rec") == data.exported_at  # an anonymised copy is not a backup
    path.write_bytes(b"changed")  # replaced or damaged since: no longer counts
    assert export.last_export_time("t-exp-rec") is None


def test_bad_arguments_are_refused_before_connecting():
    with pytest.raises(export.ValidationError):
        export.export("t-exp-x", None, mode="everything")
    with pytest.raises(export.ValidationError):
        export.export("t-exp-x", None, tables=["a;b"])
    with pytest.raises(export.ValidationError):
        export.export("Not An App", None)
