"""The export, backups and registry panels draw their view from what they last read, so it
cannot go stale (issue 20): two panels that reach the same truth by different paths look the
same, and an app destroyed elsewhere in the notebook leaves no trace in their view. No server:
the truth is set as if it had been read (the testbed tests read it from real servers)."""

from __future__ import annotations

import pandas as pd
import pytest

from labdeploy.app import changes
from labdeploy.data.archive import ExportData
from labdeploy.data.backups import COLUMNS as BACKUP_COLUMNS
from labdeploy.images.registry import LoginState

APP = "t-view-app"


def _export_panel():
    from labdeploy.widgets.export import ExportPanel

    panel = ExportPanel(autoload=False)  # no server registered: nothing here connects
    panel.load_tables = lambda: None  # picking an app would read its tables from the server
    return panel


def _frame(app: str) -> pd.DataFrame:
    return pd.DataFrame({"worker_id": [f"W-{app}-1", f"W-{app}-2"], "answer": ["red", "blue"]})


def _exported(app: str) -> ExportData:
    return ExportData({"participant": _frame(app), "info": _frame(app).head(1)}, app=app)


def _read_export(panel, apps, app, counts) -> None:
    """What the export panel keeps after reading the apps and the chosen app's tables."""
    panel.apps = list(apps)
    panel.counts, panel.counts_app = pd.DataFrame({"table": list(counts), "rows": list(counts.values())}), app
    panel.render()
    panel.app_picker.value = app
    panel.render()


def _export_view(panel) -> tuple:
    return (tuple(panel.app_picker.options), panel.app_picker.value, tuple(panel.tables.options), panel.tables.value,
            panel.apps_note.value, panel.summary.value,
            [(panel.previews.get_title(i), c.value) for i, c in enumerate(panel.previews.children)])


def test_the_export_panel_looks_the_same_whatever_it_showed_before(home):
    fresh, used = _export_panel(), _export_panel()
    _read_export(used, ["old-study", APP], "old-study", {"responses": 9})
    used._keep(_exported("old-study"), "both")
    assert "old-study" in used.summary.value and used.previews.children
    for panel in (fresh, used):  # the same truth, reached from nothing and from another app
        _read_export(panel, [APP, "other-study"], APP, {"participant": 2, "info": 1})
        panel._keep(_exported(APP), "regular")
    assert _export_view(used) == _export_view(fresh)
    assert "old-study" not in repr(_export_view(used))
    assert ("participant (2 rows)", "participant") in fresh.tables.options and "1 row" in fresh.tables.options[1][0]
    assert fresh.tables.value == ("participant", "info")  # a new listing: every table chosen
    assert f"data-table='participant' data-rows='2'" in fresh.summary.value
    fresh.close(), used.close()


def test_a_destroy_announced_elsewhere_leaves_no_trace_in_the_export_panel(home):
    panel = _export_panel()
    _read_export(panel, [APP, "other-study"], APP, {"participant": 2})
    panel._keep(_exported(APP), "regular")
    changes.announce("destroy", APP, "host-a")
    view = repr(_export_view(panel))
    assert APP not in view, view
    assert tuple(panel.app_picker.options) == ("other-study",) and panel.app_picker.value is None
    assert panel.tables.options == () and panel.summary.value == "" and panel.previews.children == ()
    assert panel.previews.layout.display == "none"  # not an empty box either
    assert "was destroyed" in panel.message.value
    assert list(panel.data) == ["participant", "info"]  # the DataFrames the researcher has stay in memory
    panel.close()


def test_an_app_destroyed_on_another_server_stays(home):
    from labdeploy.ssh import servers

    servers.add("t-view-lab", "192.0.2.30", "me")  # a TEST-NET address: never connected here
    from labdeploy.widgets.export import ExportPanel

    panel = ExportPanel("t-view-lab", autoload=False)
    panel.load_tables = lambda: None
    _read_export(panel, [APP], APP, {"participant": 2})
    changes.announce("destroy", APP, "192.0.2.31")  # the same name on another server
    assert panel.app_picker.value == APP and panel.tables.options and panel.last_task is None
    panel.close()


def _backups_panel():
    from labdeploy.widgets.backups import BackupsPanel

    panel = BackupsPanel(autoload=False)
    panel.refresh = lambda: None  # picking an app would read its backups from the server
    return panel


def _backups(app: str, n: int) -> pd.DataFrame:
    rows = [{"id": f"{app}-b{i}", "time": pd.Timestamp(f"2026-11-30 1{i}:00", tz="UTC"), "age": None,
             "kind": "scheduled", "size": 1000 * (i + 1), "tables": 2, "rows": 25, "checksum_ok": True,
             "drill": None, "drill_detail": "", "version": "v1", "file": ""} for i in range(n)]
    return pd.DataFrame(rows, columns=BACKUP_COLUMNS)


def _health(warning: str, every) -> pd.DataFrame:
    return pd.DataFrame([{"warning": warning, "every_minutes": every}])


def _read_backups(panel, apps, app, df, health) -> None:
    panel.apps = list(apps)
    panel.render()
    panel.app_picker.value = app
    panel._read(app, (df, health))
    panel.render()


def _backups_view(panel) -> tuple:
    return (tuple(panel.app_picker.options), panel.app_picker.value, panel.table.value, tuple(panel.source.options),
            panel.source.value, panel.every.value, panel.into.placeholder)


def test_the_backups_panel_looks_the_same_whatever_it_showed_before(home):
    fresh, used = _backups_panel(), _backups_panel()
    _read_backups(used, ["old-study", APP], "old-study", _backups("old-study", 3),
                  _health("the newest backup is 9.0 h old", 360))
    assert "old-study-b2" in used.table.value and "9.0 h" in used.table.value
    for panel in (fresh, used):
        _read_backups(panel, [APP], APP, _backups(APP, 2), _health("", 60))
    assert _backups_view(used) == _backups_view(fresh)
    assert "old-study" not in repr(_backups_view(used)) and "9.0 h" not in used.table.value
    assert [v for _, v in fresh.source.options] == ["latest", f"{APP}-b1", f"{APP}-b0"]  # newest first
    assert fresh.every.value == "60" and fresh.into.placeholder == f"{APP}-restore"
    fresh.close(), used.close()


def test_a_schedule_chosen_but_not_saved_survives_a_redraw_until_the_server_says_otherwise(home):
    panel = _backups_panel()
    _read_backups(panel, [APP], APP, _backups(APP, 1), _health("", 60))
    other = next(v for _, v in panel.every.options if v != "60")
    panel.every.value = other  # picked, Save not clicked yet
    panel._read(APP, (_backups(APP, 2), _health("", 60)))  # e.g. Back up now read the list again
    panel.render()
    assert panel.every.value == other
    panel._read(APP, (_backups(APP, 2), _health("", 360)))  # the schedule changed on the server
    panel.render()
    assert panel.every.value == "360"
    panel.close()


def test_a_destroy_announced_elsewhere_leaves_no_trace_in_the_backups_panel(home):
    panel = _backups_panel()
    _read_backups(panel, [APP, "other-study"], APP, _backups(APP, 2), _health("", 60))
    panel.source.value = f"{APP}-b0"
    changes.announce("destroy", APP, "host-a")
    view = repr(_backups_view(panel))
    assert APP not in view, view
    assert panel.app_picker.value is None and panel.source.value == "latest" and panel.backups.empty
    assert "was destroyed" in panel.message.value
    panel.close()


def test_the_registry_panel_shows_the_logins_of_the_chosen_server_and_registry_as_last_checked(home):
    from labdeploy.ssh import servers
    from labdeploy.widgets.registry import RegistryPanel

    servers.add("t-view-a", "192.0.2.40", "me")
    servers.add("t-view-b", "192.0.2.41", "me")
    here = LoginState("registry.example.org", "this session", True)
    fresh = RegistryPanel("t-view-a", registry_address="registry.example.org")
    used = RegistryPanel("t-view-a", registry_address="old.example.org")
    used.logins[("t-view-a", "old.example.org")] = (LoginState("old.example.org", "", False), "")
    used.render()
    assert "old.example.org" in used.login_html.value
    used.check = fresh.check = lambda: None  # a change of server or registry would check the logins again
    used.registry_box.value = "registry.example.org"
    assert used.login_html.value == ""  # what was checked for the other registry does not show
    for panel in (fresh, used):
        panel.logins[("t-view-a", "registry.example.org")] = (here, "")
        panel.render()
    assert used.login_html.value == fresh.login_html.value and "Server t-view-a: logged in." in fresh.login_html.value
    assert fresh.login_state == here
    fresh.server_picker.value = "t-view-b"  # another server: not shown as logged in before it is checked
    assert fresh.login_html.value == "" and fresh.steps.state("log in on the server") == "pending"
    fresh.server_picker.value = "t-view-a"
    assert "Server t-view-a: logged in." in fresh.login_html.value
    fresh.close(), used.close()


@pytest.mark.parametrize("panel_of", [_export_panel, _backups_panel])
def test_a_deploy_announced_does_not_touch_what_is_shown_without_a_server(home, panel_of):
    panel = panel_of()
    before = repr(panel.widget.get_state())
    changes.announce("deploy", APP, "host-a")
    assert repr(panel.widget.get_state()) == before and panel.last_task is None
    panel.close()
