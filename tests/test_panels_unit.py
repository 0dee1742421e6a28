"""What every panel shares, without a server: one background-run helper (busy state, errors shown
in the panel, steps, `last_task`), and the export panel's "Export, then destroy" handing the whole
sequence to the core."""

from __future__ import annotations

import threading

import ipywidgets
import pytest

from labdeploy.data.archive import ExportData
from labdeploy.errors import LabdeployError
from labdeploy.widgets.common import LogPane, Message, Panel, StepList


class Little(Panel):
    def __init__(self) -> None:
        self.message, self.steps, self.log = Message(), StepList(["one", "two"]), LogPane()
        self.widget = self.message


def test_an_action_runs_in_the_background_and_its_step_follows(home):
    panel, gate = Little(), threading.Event()
    panel.message.show_ok("earlier")
    task = panel.in_background(lambda: gate.wait(10) and 42, lambda n: f"got {n}", step="one")
    assert task is panel.last_task and panel.busy and panel.steps.state("one") == "running"
    assert panel.message.value == ""  # an action starts with a clean message
    assert panel.in_background(lambda: 0) is None and "still running" in panel.message.value  # one at a time
    gate.set()
    task.join(10)
    assert not panel.busy and panel.steps.states == {"one": "done", "two": "pending"}
    assert "got 42" in panel.steps.value


def test_an_error_is_shown_with_its_hint_and_the_step_failed(home):
    panel, extras, gate = Little(), [], threading.Event()

    def work():
        gate.wait(10)
        raise LabdeployError("The server said no.", "Ask it nicely.")

    button = ipywidgets.Button()
    panel.in_background(work, step="two", on_error=extras.append, disable=[button])
    assert button.disabled
    gate.set()
    panel.last_task.join(10)
    assert "The server said no." in panel.message.value and "Ask it nicely." in panel.message.value
    assert panel.steps.state("two") == "failed" and len(extras) == 1 and not button.disabled and not panel.busy


def test_what_an_action_starts_when_it_ends_is_not_refused(home):
    panel, started = Little(), []
    panel.in_background(lambda: None, lambda _: started.append(panel.in_background(lambda: None)))
    panel.last_task.join(10)
    assert started[0] is not None
    started[0].join(10)


def test_background_refreshes_run_side_by_side_and_leave_the_message(home):
    panel, gate = Little(), threading.Event()
    panel.message.show_ok("kept")
    a = panel.in_background(lambda: gate.wait(10), exclusive=False)
    b = panel.in_background(lambda: gate.wait(10), exclusive=False)
    assert a is not None and b is not None and not panel.busy and "kept" in panel.message.value
    gate.set()
    a.join(10), b.join(10)


def test_a_reset_shows_the_new_steps_and_clears_the_log(home):
    panel = Little()
    panel.log.append("old line")
    panel.in_background(lambda: None, reset=["a", "b"])
    panel.last_task.join(10)
    assert list(panel.steps.states) == ["a", "b"] and panel.log.value == ""


def _as_read(panel, **rows) -> None:
    """The export panel as if it had read the app "stroop" and its tables' row counts (no server here)."""
    import pandas as pd

    panel.load_tables = lambda: None  # no server here: picking the app must not start a table listing
    panel.apps = ["stroop"]
    panel.counts, panel.counts_app = pd.DataFrame({"table": list(rows), "rows": list(rows.values())}), "stroop"
    panel.render()
    panel.app_picker.value = "stroop"
    panel.render()


def test_export_then_destroy_is_the_cores_destroy_with_a_final_export(home, monkeypatch, tmp_path):
    from labdeploy.app import apps
    from labdeploy.widgets import export as panel_module

    calls = []

    def destroy(app, server, **kw):
        calls.append((app, server, kw))
        kw["final_export"].on_exported(ExportData({}, app=app))  # shown before the rest of the destroy
        return apps.DestroyResult(app, removed=["containers"])

    monkeypatch.setattr(panel_module.apps_core, "destroy", destroy)
    panel = panel_module.ExportPanel("lab", app="stroop", folder=str(tmp_path / "out"), autoload=False)
    _as_read(panel, participant=3)
    panel.mode.value, panel.files.value, panel.logs.value = "anonymous", True, True
    panel.destroy_button.click()  # not confirmed: refused in the panel, the core is not called
    panel.last_task.join(10)
    assert "confirmation" in panel.message.value and not calls
    panel.confirm_destroy.value = True
    panel.destroy_button.click()
    panel.last_task.join(10)
    assert "labdeploy-error" not in panel.message.value, panel.message.value
    (app, server, kw), = calls
    final = kw["final_export"]
    assert (app, kw["confirm"], kw["remove_data"]) == ("stroop", True, True)
    assert (final.mode, final.files, final.logs, str(final.folder)) == ("anonymous", True, True, str(tmp_path / "out"))
    assert "stroop was destroyed" in panel.message.value and panel.app_picker.value is None
    assert not panel.confirm_destroy.value and not panel.destroy_button.disabled
    assert list(panel.steps.states) == apps.destroy_steps(final)


@pytest.mark.parametrize("picked", [(), ("participant",)])
def test_export_then_destroy_needs_every_table(home, monkeypatch, tmp_path, picked):
    from labdeploy.widgets import export as panel_module

    monkeypatch.setattr(panel_module.apps_core, "destroy", lambda *a, **k: pytest.fail("the core was called"))
    panel = panel_module.ExportPanel("lab", app="stroop", folder=str(tmp_path / "out"), autoload=False)
    _as_read(panel, participant=3, info=1)
    panel.tables.value = picked
    panel.confirm_destroy.value = True
    panel.destroy_button.click()
    panel.last_task.join(10)
    assert "every table" in panel.message.value


def test_the_monitor_status_shows_each_apps_backup_once_and_a_warning_in_red():
    import pandas as pd

    from labdeploy.widgets.backups import backups_html
    from labdeploy.widgets.monitor import status_html

    row = {"health": "", "uptime": pd.NaT, "restarts": 0, "image": "img", "state": "running"}
    df = pd.DataFrame([
        {**row, "app": "a", "service": "web", "last_backup": pd.Timestamp("2026-11-30 12:00", tz="UTC"),
         "last_good_drill": None, "backup_warning": ""},
        {**row, "app": "a", "service": "worker", "last_backup": pd.Timestamp("2026-11-30 12:00", tz="UTC"),
         "last_good_drill": None, "backup_warning": ""},
        {**row, "app": "b", "service": "web", "last_backup": None, "last_good_drill": None,
         "backup_warning": "the last restore drill failed: the newest backup may not restore"},
    ])
    out = status_html(df)
    assert out.count("last 2026-11-30 12:00") == 1
    assert "labdeploy-monitor-backup-warning" in out and "drill failed" in out and "#c5221f" in out
    assert "No backups yet" in backups_html(pd.DataFrame(columns=["id"]))
    assert "⚠ the newest backup is 3.0 h old" in backups_html(pd.DataFrame(columns=["id"]), "the newest backup is 3.0 h old")


def _fields(widget):
    """Every labelled input of a panel (text, password, dropdown, number boxes)."""
    stack, seen = [widget], set()
    while stack:
        w = stack.pop()
        if id(w) in seen:
            continue
        seen.add(id(w))
        if isinstance(w, (ipywidgets.Text, ipywidgets.Password, ipywidgets.Dropdown, ipywidgets.BoundedIntText,
                          ipywidgets.IntText, ipywidgets.FloatText, ipywidgets.SelectMultiple)) and w.description:
            yield w
        stack.extend(c for c in getattr(w, "children", ()) if isinstance(c, ipywidgets.Widget))


def _panels():
    from labdeploy.widgets.backups import BackupsPanel
    from labdeploy.widgets.deploy import DeployPanel
    from labdeploy.widgets.export import ExportPanel
    from labdeploy.widgets.monitor import MonitorPanel
    from labdeploy.widgets.registry import RegistryPanel
    from labdeploy.widgets.setup import SetupPanel

    return [BackupsPanel(autoload=False), DeployPanel(), ExportPanel(autoload=False), MonitorPanel(autostart=False),
            RegistryPanel(), SetupPanel()]


def test_every_panels_fields_keep_the_shared_readable_width(home):
    """One layout for all panels: every labelled input has the shared label width and a minimum
    width (the browser journey measures the result at laptop and desktop sizes)."""
    from labdeploy.widgets.common import FIELD_MIN_PX, LABEL_PX

    for panel in _panels():
        fields = list(_fields(panel.widget))
        assert fields, type(panel).__name__
        for f in fields:
            assert f.layout.min_width == f"{FIELD_MIN_PX}px", (type(panel).__name__, f.description, f.layout.min_width)
            assert f.style.description_width == f"{LABEL_PX}px", (type(panel).__name__, f.description)
        if hasattr(panel, "close"):
            panel.close()
