"""The monitor, alerts, fleet and rehearsal panels draw their whole view from the truth they last
read (no server: the truth is set as the panel's own reading would set it). Drawn twice from the
same truth, whatever the view showed before, a panel shows the same; a destroy announced in the
notebook takes every trace of the app out of its view at once."""

from __future__ import annotations

import ipywidgets as W
import pandas as pd
import pytest

from labdeploy.app import changes

MINE, OTHER = "t-view-mine", "t-view-other"
HOST = "192.0.2.10"  # a TEST-NET address: never connected


def _widgets(root):
    stack, seen = [root], []
    while stack:
        w = stack.pop(0)
        if any(w is s for s in seen):
            continue
        seen.append(w)
        stack.extend(c for c in getattr(w, "children", ()) if isinstance(c, W.Widget))
    return seen


def view(panel) -> list:
    """What every widget of the panel shows (its message aside: that is the state's, not the truth's)."""
    out = []
    for w in _widgets(panel.widget):
        if w is panel.message:
            continue
        shown = [getattr(w, k, None) for k in ("value", "options", "description", "disabled", "tooltip")]
        if isinstance(shown[0], memoryview):  # a picture: compared by its bytes
            shown[0] = hash(bytes(shown[0]))
        out.append((type(w).__name__, repr(shown), w.layout.display if hasattr(w, "layout") else None))
    return out


def text(panel) -> str:
    """Every string the panel's widgets show (values, options, labels, tooltips)."""
    return " ".join(tuple_ for _t, tuple_, _d in view(panel))


def scribble(panel) -> None:
    """Leave stale things in every view widget, as an earlier action could have (not in the
    headings, nor in what an operation streams into: its steps, log and progress)."""
    streams = [panel.message, panel.steps, panel.log, *(panel.progress.children if panel.progress else ())]
    for w in _widgets(panel.widget):
        if any(w is s for s in streams if s is not None):
            continue
        if isinstance(w, (W.HTML, W.Label)) and not w.value.startswith(("<b>", "<h3")):
            w.value = f"stale text about {OTHER}"
        elif isinstance(w, W.Textarea) and w.disabled:  # an output box, not an input
            w.value = f"$ stale {OTHER}"
        elif isinstance(w, W.Image):
            w.value = b"not a picture"


# ---------------------------------------------------------------- the monitor


class Snap:
    """A connections snapshot as the sampler hands it over (the values only)."""

    total, max_connections = 7, 100

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([
            {"database": f"app_{a}", "app": a, "connections": n, "active": 1, "idle": n - 1,
             "idle_in_transaction": 0, "role_limit": 20} for a, n in ((MINE, 3), (OTHER, 4))])


class Warning_:
    def __init__(self, app: str) -> None:
        self.message, self.hint, self.apps = f"{app} uses 19 of its 20 connections", "Restart it.", (app,)


def _status() -> pd.DataFrame:
    row = {"state": "running", "health": "", "uptime": pd.Timedelta(seconds=90), "restarts": 0,
           "image": "10.250.0.1:5000/some/very/long/image/name:tag"}
    df = pd.DataFrame([{**row, "app": a, "service": s} for a in (MINE, OTHER) for s in ("web", "worker")])
    df["working"] = pd.array([2, 2, None, None], dtype="Int64")
    df.attrs["working_unknown"] = {OTHER: "its database could not be read"}
    return df


def _sampler():
    from labdeploy.ssh import servers
    from labdeploy.watch.sampler import Sampler

    servers.add("lab", HOST, "me")
    sampler = Sampler("lab")
    t = pd.Timestamp("2026-05-01 14:03:27", tz="UTC")
    sampler._samples.append(({"time": t, "ok": True, "error": "", "total": 7, "max_connections": 100, "warnings": 1},
                             [{"time": t, "database": f"app_{a}", "app": a, "connections": n, "active": 1,
                               "idle": n - 1, "idle_in_transaction": 0, "role_limit": 20}
                              for a, n in ((MINE, 3), (OTHER, 4))]))
    return sampler


def _monitor_truth(p, sampler, focus=OTHER) -> None:
    p.sampler = sampler
    p.status_df, p.status_read, p.updated_at, p._focus = _status(), True, "14:03:30", focus
    p.snapshot, p.sample_warnings = Snap(), [Warning_(OTHER)]
    p.stats_df = pd.DataFrame([{"app": a, "service": "web", "container": f"{a}-web", "cpu_percent": 1.5,
                                "mem_bytes": 1e8, "net_rx_bytes": 1e6, "net_tx_bytes": 1e6, "block_read_bytes": 0.0,
                                "block_write_bytes": 0.0} for a in (MINE, OTHER)])
    p.pending_restart = (OTHER, ["worker"])
    p.exec_run = (OTHER, "env", f"APP={OTHER}\n[exit status 0]")
    p.log_app = OTHER
    p.log_pane.append(f"web | {OTHER} started")


@pytest.fixture
def matplotlib_agg():
    import matplotlib

    matplotlib.use("Agg")


def test_the_monitor_draws_the_same_view_from_the_same_truth(home, matplotlib_agg):
    from labdeploy.widgets.monitor import MonitorPanel

    sampler = _sampler()
    first, second = MonitorPanel(autostart=False), MonitorPanel(autostart=False)
    try:
        _monitor_truth(first, sampler)
        first.render()
        scribble(second)
        second.confirm_row.layout.display = "flex"
        second._focus = MINE  # it showed another app first
        second.render()
        _monitor_truth(second, sampler)
        second.render()
        assert view(first) == view(second)
        shown = text(first)
        assert f"data-app='{OTHER}'" in first.status_table.value and f"data-app='{MINE}'" not in first.status_table.value
        assert first.app_picker.value == OTHER and first.confirm_row.layout.display == "flex"
        assert f"APP={OTHER}" in first.exec_output.value and first.gauge_label.value == "7 / 100 (7%)"
        assert len(first.chart.value) > 1000 and f"{OTHER} uses 19" in first.warnings.value
        assert "stale" not in shown
    finally:
        sampler.stop()
        first.close()
        second.close()


def test_the_monitors_status_table_says_why_a_count_is_unknown_and_keeps_the_image_out_of_its_width():
    from labdeploy.widgets.monitor import status_html

    out = status_html(_status())
    assert ">?<" not in out and "unknown*" in out
    assert f"working participants in {OTHER} unknown: its database could not be read" in out
    assert "<th>image</th>" not in out and "title='image: 10.250.0.1:5000/some" in out
    assert "white-space:nowrap}" not in out.split("</style>")[0].split("th{")[0]  # the cells wrap


def test_an_announced_destroy_takes_the_app_out_of_every_part_of_the_monitor(home, matplotlib_agg):
    from labdeploy.widgets.monitor import MonitorPanel

    sampler = _sampler()
    p = MonitorPanel(autostart=False)
    try:
        _monitor_truth(p, sampler)
        p.render()
        before = p.chart.value
        assert OTHER in text(p)
        changes.announce("destroy", OTHER, HOST)
        assert OTHER not in text(p), [v for v in view(p) if OTHER in v[1]]
        assert p.focus is None and p.app_picker.value == "(all apps)" and p.app_picker.options == ("(all apps)", MINE)
        assert p.confirm_row.layout.display == "none" and p.exec_output.value == "" and p.log_pane.text == ""
        assert MINE in p.status_table.value and MINE in p.summary.value
        assert p.chart.value != before and OTHER in p._chart_key[-1]  # drawn again, without it
        ax = sampler.plot(hide=(OTHER,))
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [MINE]
        changes.announce("deploy", OTHER, HOST)  # deployed again: shown again
        assert f"data-app='{OTHER}'" in p.status_table.value
    finally:
        sampler.stop()
        p.close()


def test_the_monitor_opens_on_the_app_asked_for_and_all_apps_once_chosen_stays_chosen(home):
    from labdeploy.widgets.monitor import MonitorPanel

    p = MonitorPanel(autostart=False, app=MINE)
    p.status_df, p.status_read = _status(), True
    p._focus = p._choose_focus([MINE, OTHER])  # as a refresh does
    p.render()
    assert p.focus == MINE and p.app_picker.value == MINE
    p.app_picker.value = "(all apps)"
    assert p._choose_focus([MINE, OTHER]) is None  # the next refresh does not take it back
    assert f"data-app='{OTHER}'" in p.status_table.value and f"data-app='{MINE}'" in p.status_table.value
    p.close()


# ---------------------------------------------------------------- the fleet


def _fleet_truth(p) -> None:
    p.usage = pd.DataFrame([{"server": "lab", "host": HOST, "memory_total_gb": 16.0, "memory_free_gb": 8.0,
                             "disk_free_gb": 50.0, "apps": 2, "apps_running": 2, "room": 1, "answered": True,
                             "error": ""}])
    p.status = pd.DataFrame([{"server": "lab", "app": a, "service": "web", "state": "running", "health": "",
                              "restarts": 0, "image": "img", "answered": True, "error": ""} for a in (MINE, OTHER)])
    p.updated_at = "14:03:30"


def test_the_fleet_view_is_drawn_from_its_last_reading_and_a_destroyed_app_leaves_it(home):
    from labdeploy.widgets.fleet import FleetPanel

    first, second = FleetPanel(servers=[], autoload=False), FleetPanel(servers=[], autoload=False)
    _fleet_truth(first)
    first.render()
    scribble(second)
    second.asking = True
    second.render()
    assert "Asking every server" in second.usage_html.value
    second.asking = False
    _fleet_truth(second)
    second.render()
    assert view(first) == view(second) and OTHER in first.status_html.value
    first.usage = None  # an announced destroy asks again: not here (no server), its rows go at once
    changes.announce("destroy", OTHER, HOST)
    assert OTHER not in text(first) and MINE in first.status_html.value


# ---------------------------------------------------------------- alerts


def _alerts_truth(p) -> None:
    from labdeploy.server import alerts

    p.settings = alerts.AlertSettings(email={"to": ["me@lab.example.org"], "host": "smtp.lab.example.org",
                                             "port": 587, "security": "starttls"}, memory_max_pct=80.0)
    p.settings_table = pd.DataFrame({"setting": ["webhook", "email_to", "smtp_password"],
                                     "value": ["set", "me@lab.example.org", "not set"]})
    p.test_result = pd.DataFrame({"channel": ["webhook"], "ok": [True], "error": [""]})
    p.history_df = pd.DataFrame({"time": ["2026-05-01 14:00"], "event": ["alert"], "text": ["disk low"],
                                 "duration_s": [None], "sent": ["webhook"]})
    p.report = pd.DataFrame({"area": ["apps", "apps", "disk"], "subject": [f"{OTHER} web", f"{MINE} web", "/"],
                             "ok": [False, True, True], "detail": ["exited", "running", "50 GB free"],
                             "what_to_do": ["Look at its logs.", "", ""]})


def test_the_alerts_view_is_drawn_from_what_was_read_and_a_destroyed_app_leaves_the_doctors_report(home):
    from labdeploy.widgets.alerts import AlertsPanel

    first, second = AlertsPanel(autoload=False), AlertsPanel(autoload=False)
    _alerts_truth(first)
    first.render()
    scribble(second)
    second.doctor_running = True
    second.render()
    assert "Looking at the server" in second.doctor_html.value
    second.doctor_running = False
    _alerts_truth(second)
    second.render()
    assert view(first) == view(second)
    assert first.thresholds["memory_max_pct"].value == 80.0 and first.email_to.value == "me@lab.example.org"
    assert ">set</b>" in first.state_html.value and "1 thing needs attention" in first.doctor_html.value
    first.email_to.value = "typed@lab.example.org"
    first.render()
    assert first.email_to.value == "typed@lab.example.org"  # what the researcher types stays until a new reading
    changes.announce("destroy", OTHER, HOST)
    assert OTHER not in first.doctor_html.value and "All 2 checks are fine" in first.doctor_html.value


# ---------------------------------------------------------------- the rehearsal


class Result:
    """A finished rehearsal's answer (its values only; the plot is a real matplotlib figure)."""

    app, copy, stopped, removed = OTHER, OTHER + "-rh", True, True
    sentence = f"{OTHER} holds about 40 simultaneous participants."
    latency = pd.DataFrame({"p50": [0.1], "p95": [0.2], "error_rate": [0.0]}, index=pd.Index([2], name="participants"))
    resources = pd.DataFrame({"samples": [3]}, index=pd.Index([2], name="participants"))
    costs = pd.DataFrame({"per_participant": [0.01]}, index=pd.Index(["cpu"], name="resource"))

    def plot(self, fig):
        fig.subplots().plot([2], [0.1])
        return fig


def test_the_rehearsal_view_is_drawn_from_its_result_and_keeps_it_after_a_destroy(home, matplotlib_agg):
    from labdeploy.widgets.rehearsal import RehearsalPanel, live_png

    first, second = RehearsalPanel(OTHER), RehearsalPanel(OTHER)
    result = Result()
    first.result = result
    first.render()
    scribble(second)
    second.live_chart = live_png(Result.latency)
    second.render()
    assert second.chart.layout.display == "" and second.sentence_html.value == ""
    second.result = result
    second.render()
    assert view(first) == view(second) and first.stop_button.disabled
    assert "holds about 40" in first.sentence_html.value and "stopped early" in first.sentence_html.value
    assert "labdeploy-rehearsal-costs" in first.tables_html.value
    changes.announce("destroy", OTHER, HOST)  # a measurement stays, said to be of an app now gone
    assert first.result is result and "holds about 40" in first.sentence_html.value
    assert f"Measured before {OTHER} was destroyed" in first.sentence_html.value
    changes.announce("deploy", OTHER, HOST)
    assert "was destroyed" not in first.sentence_html.value and view(first) == view(second)
    for p in (first, second):
        p.close()
