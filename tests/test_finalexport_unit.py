"""The final export before a destroy, without a server: its options are checked before anything
stops, its steps are known in advance, and it saves what was asked for in the documented order."""

from __future__ import annotations

import pytest

from labdeploy.app import apps, finalexport
from labdeploy.app.finalexport import FinalExport
from labdeploy.data.archive import ExportData
from labdeploy.errors import ValidationError
from labdeploy.progress import Collector, LogLine


def test_a_folder_is_a_final_export_of_the_regular_archive(tmp_path):
    final = FinalExport.of(tmp_path / "final")
    assert final == FinalExport(tmp_path / "final") and (tmp_path / "final").is_dir()
    assert final.steps() == ["Read the tables", "Check row counts", "Write the archive"]
    assert FinalExport.of(final) == final  # options given as they are


def test_the_steps_follow_the_options(tmp_path):
    final = FinalExport(tmp_path, mode="anonymous", parquet=True, files=True, logs=True)
    assert final.steps() == ["Read the tables", "Check row counts", "Anonymise", "Write the archive",
                             "Write Parquet", "Download files", "Download logs"]
    assert apps.destroy_steps() == list(apps.DESTROY_STEPS)
    assert apps.destroy_steps(final) == ["check", "lock", "stop", *final.steps(), "route", "data", "files"]


@pytest.mark.parametrize("bad", [{"mode": "secret"}, {"folder": "a-file"}])
def test_bad_options_are_refused_before_any_connection(tmp_path, bad):
    (tmp_path / "a-file").write_text("x")
    options = FinalExport(**{"folder": tmp_path / "out", **{k: tmp_path / v if k == "folder" else v
                                                            for k, v in bad.items()}})
    server = object()  # anything the destroy touched would fail on it
    with pytest.raises(ValidationError):
        apps.destroy("stroop", server, confirm=True, remove_data=True, final_export=options)


def test_a_final_export_needs_remove_data_and_confirmation(tmp_path):
    with pytest.raises(ValidationError, match="remove_data"):
        apps.destroy("stroop", object(), confirm=True, final_export=tmp_path)
    with pytest.raises(apps.ConfirmationRequired):
        apps.destroy("stroop", object(), remove_data=True, final_export=tmp_path)
    assert not any(tmp_path.iterdir())


class FakeDataOut:
    """Stands in for labdeploy.export: records the calls, in order."""

    MODES = ("regular", "anonymous", "both")

    def __init__(self, folder) -> None:
        self.calls, self.folder = [], folder

    def export(self, app, remote, *, mode, save_to, parquet, reporter):
        self.calls.append(("export", mode, save_to, parquet))
        data = ExportData({}, app=app)
        data.paths += [str(save_to / f"{app}-data.zip")] * 2  # "both" lists an archive once per version
        return data

    def download_files(self, app, remote, dest, *, reporter):
        self.calls.append(("files", dest))

    def download_logs(self, app, remote, dest, *, reporter):
        self.calls.append(("logs", dest))
        return dest / f"{app}-logs.txt"


def test_take_saves_a_regular_copy_always_then_files_and_logs(tmp_path, monkeypatch):
    fake = FakeDataOut(tmp_path)
    monkeypatch.setattr(finalexport, "data_out", fake)
    shown = []
    options = FinalExport(tmp_path, mode="anonymous", files=True, logs=True, on_exported=shown.append)
    saved = finalexport.take("stroop", object(), options, has_containers=True, reporter=Collector())
    assert fake.calls == [("export", "both", tmp_path, False), ("files", tmp_path / "stroop-files"),
                          ("logs", tmp_path)]
    assert shown == [saved.data]  # shown before the files and logs arrive
    assert saved.paths == [str(tmp_path / "stroop-data.zip"), str(tmp_path / "stroop-files"),
                           str(tmp_path / "stroop-logs.txt")]


def test_take_skips_the_logs_of_an_app_without_containers(tmp_path, monkeypatch):
    fake = FakeDataOut(tmp_path)
    monkeypatch.setattr(finalexport, "data_out", fake)
    events = Collector()
    finalexport.take("stroop", object(), FinalExport(tmp_path, logs=True), has_containers=False, reporter=events)
    assert fake.calls == [("export", "regular", tmp_path, False)]
    assert any("no logs" in e.line for e in events.of(LogLine))
