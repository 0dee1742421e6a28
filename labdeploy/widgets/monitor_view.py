"""What the monitor panel shows, drawn from what it last read (and nothing else).

The panel (widgets/monitor.py) keeps the truth it last read in plain attributes; `draw(panel)`
turns them into widget values. Timers, the sampler and buttons only store what they read and
call `render()`, so the view is the same whatever it showed before, and an app destroyed since
(the panel's `gone`) leaves no trace in it. The HTML builders here are pure (unit-tested).
"""

from __future__ import annotations

import html
import io
import threading
from typing import Optional

import pandas as pd

from ..errors import LabdeployError
from ..server import layout
from .common import error_html, warning_html
from .remedies import hint as panel_hint

STATE_COLORS = {"running": "#188038", "restarting": "#c5221f", "exited": "#c5221f", "dead": "#c5221f",
                "created": "#888", "paused": "#8a4b00"}
ALL = "(all services)"
ALL_APPS = "(all apps)"  # the explicit overview; app names can't contain parentheses
# Cells wrap (a laptop's notebook is about 850 px wide): the table never scrolls sideways.
_CELLS = ("<style>.labdeploy-monitor-table td,.labdeploy-monitor-table th{padding:2px 12px 2px 0;text-align:left;"
          "vertical-align:top;overflow-wrap:anywhere}.labdeploy-monitor-table th{color:#1f1f1f;font-weight:600;"
          "white-space:nowrap}</style>")


def fmt_uptime(td) -> str:
    if td is None or pd.isna(td):
        return ""
    s = int(td.total_seconds())
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _working_cell(r, unknown: dict) -> str:
    """The app's working participants, or why the count is unknown, in words (never a bare '?')."""
    if not pd.isna(r.working):
        return f"<b class='labdeploy-monitor-working'>{int(r.working)}</b>"
    reason = unknown.get(r.app, "") or "the count could not be read"
    return (f"<span class='labdeploy-monitor-working-unknown' style='color:#8a4b00' "
            f"title='{html.escape(reason, quote=True)}'>unknown*</span>")


def _backup_cell(r) -> str:
    last = getattr(r, "last_backup", None)
    if r.backup_warning:
        return f"<b class='labdeploy-monitor-backup-warning' style='color:#c5221f'>⚠ {html.escape(r.backup_warning)}</b>"
    return f"last {last:%Y-%m-%d %H:%M}" if last is not None and not pd.isna(last) else ""


def _status_row(r, first: bool, unknown: dict) -> str:
    color = STATE_COLORS.get(r.state, "#000")
    working = _working_cell(r, unknown) if first and hasattr(r, "working") else ""  # once per app
    backup = _backup_cell(r) if first and hasattr(r, "backup_warning") else ""
    health = f" ({html.escape(r.health)})" if r.health else ""
    queued, failed = getattr(r, "jobs_queued", None), getattr(r, "jobs_failed", None)
    jobs = "" if queued is None or pd.isna(queued) else \
        f"{queued} queued" + (f", <b style='color:#c5221f'>{failed} failed</b>" if failed else "")
    # The image (long: registry/name:tag) is the service's tooltip, not a column that widens the
    # table; the app is named on its first row only (its rows follow each other).
    return (f"<tr class='labdeploy-monitor-row' data-app='{html.escape(r.app)}' "
            f"data-service='{html.escape(r.service)}' data-state='{html.escape(r.state)}'>"
            f"<td style='white-space:nowrap'>{html.escape(r.app) if first else ''}</td>"
            f"<td style='white-space:nowrap'>{working}</td>"
            f"<td title='image: {html.escape(str(r.image), quote=True)}'>{html.escape(r.service)}</td>"
            f"<td style='color:{color}'>{html.escape(r.state)}{health}</td>"
            f"<td style='white-space:nowrap'>{fmt_uptime(r.uptime)}</td><td>{r.restarts}</td><td>{jobs}</td>"
            f"<td>{backup}</td></tr>")


def status_html(df: pd.DataFrame) -> str:
    """The status DataFrame as a small table that fits a laptop's notebook, state coloured; an
    unknown count of working participants says so, with the reason under the table (pure)."""
    if df.empty:
        return "<i>No labdeploy apps run on this server yet.</i>"
    unknown = df.attrs.get("working_unknown", {})
    rows, seen = [], set()
    for r in df.sort_values("app", kind="stable").itertuples():  # an app's rows together
        rows.append(_status_row(r, r.app not in seen, unknown))
        seen.add(r.app)
    notes = ""
    if "working" in df.columns:
        missing = [a for a in dict.fromkeys(df["app"]) if pd.isna(df.loc[df["app"] == a, "working"].iloc[0])]
        notes = "".join(f"<div class='labdeploy-monitor-working-why' style='color:#8a4b00;font-size:90%'>"
                        f"* working participants in {html.escape(a)} unknown: "
                        f"{html.escape(unknown.get(a, '') or 'the count could not be read')}</div>" for a in missing)
    return (_CELLS + "<div class='labdeploy-monitor-status-box' style='overflow-x:auto;max-width:100%'>"
            "<table class='labdeploy-monitor-status labdeploy-monitor-table' "
            "style='border-collapse:collapse;font-size:90%;width:100%'>"
            "<tr><th>app</th><th title='participants working now'>working</th><th>service</th><th>state</th>"
            "<th>up</th><th>restarts</th><th>jobs</th><th>backup</th></tr>"
            + "".join(rows) + "</table></div>" + notes)


def summary_html(summ: pd.DataFrame, top: int = 8) -> str:
    if summ.empty:
        return ""
    rows = []
    for r in summ.head(top).itertuples():
        limit = "" if pd.isna(r.role_limit) else f" / {r.role_limit}"
        rows.append(f"<tr><td>{html.escape(r.app or r.database)}</td><td>{r.connections}{limit}</td>"
                    f"<td>{r.active}</td><td>{r.idle}</td><td>{r.idle_in_transaction}</td></tr>")
    return (_CELLS + "<table class='labdeploy-monitor-connections labdeploy-monitor-table' style='font-size:90%'>"
            "<tr><th>app</th><th>connections / limit</th><th>active</th><th>idle</th><th>idle in tx</th></tr>"
            + "".join(rows) + "</table>")


def stats_html(df: pd.DataFrame) -> str:
    if df.empty:
        return "<i>No running containers.</i>"
    mb = lambda v: "" if pd.isna(v) else f"{v / 1e6:.0f} MB"  # noqa: E731
    rows = "".join(
        f"<tr><td>{html.escape(r.app or '(shared)')}</td><td>{html.escape(r.service or r.container)}</td>"
        f"<td>{r.cpu_percent:.1f}%</td><td>{mb(r.mem_bytes)}</td><td>{mb(r.net_rx_bytes)} / {mb(r.net_tx_bytes)}</td>"
        f"<td>{mb(r.block_read_bytes)} / {mb(r.block_write_bytes)}</td></tr>" for r in df.itertuples())
    return (_CELLS + "<div style='overflow-x:auto'><table class='labdeploy-monitor-stats labdeploy-monitor-table' "
            "style='border-collapse:collapse;font-size:90%'><tr><th>app</th><th>service</th><th>CPU</th>"
            "<th>memory</th><th>network in / out</th><th>disk read / write</th></tr>" + rows + "</table></div>")


def only(df: Optional[pd.DataFrame], app: Optional[str], gone=(), shared: bool = False) -> pd.DataFrame:
    """The rows of one app (all rows for the view of all apps), never those of an app in `gone`;
    `shared`: also the rows of no app (the shared PostgreSQL and Caddy)."""
    if df is None or df.empty or "app" not in df.columns:
        return df if df is not None else pd.DataFrame()
    keep = ~df["app"].isin(list(gone))
    if app is not None:
        mine = df["app"] == app
        keep &= (mine | df["app"].isna() | (df["app"] == "")) if shared else mine
    out = df[keep]
    out.attrs = dict(df.attrs)
    return out


def render_chart(sampler, focus: Optional[str] = None, hide=()) -> bytes:
    """The connections chart as PNG bytes (the legend outside the plot, kept in the picture)."""
    from matplotlib.figure import Figure  # object API: no pyplot global state across threads

    fig = Figure(figsize=(8.5, 2.8), dpi=80)
    sampler.plot(ax=fig.subplots(), focus=focus, hide=tuple(hide))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _mentions(text: str, apps) -> bool:
    return any(a and a in text for a in apps)


# ---------------------------------------------------------------------- drawing the panel


def draw(p) -> None:
    """Every view widget of the monitor panel `p` from the truth it holds (one lock: the timer,
    the sampler and the buttons draw from their own threads)."""
    with p._draw_lock:
        # What draw sets in the pickers (in this thread) is not the researcher's choice.
        p._drawing = threading.get_ident()
        try:
            apps = _draw_pickers(p)
            _draw_status(p, apps)
            _draw_connections(p)
            _draw_actions(p)
        finally:
            p._drawing = None


def _draw_pickers(p) -> list:
    df = only(p.status_df, None, p.gone)
    apps = sorted(set(df["app"])) if not df.empty else []
    if list(p.app_picker.options) != [ALL_APPS, *apps]:
        p.app_picker.options = [ALL_APPS, *apps]
    p.app_picker.value = p.focus if p.focus in apps else ALL_APPS
    services = sorted(set(df[df["app"] == p.focus]["service"])) if p.focus and not df.empty else []
    if services and list(p.exec_service.options) != services:
        p.exec_service.options = services
        p.log_service.options = [ALL, *services]
        # An app without a clock (Dallinger's clock_on off) offers only what it runs.
        processes = [s for s in layout.PROCESS_SERVICES if s in services]
        if processes and list(p.restart_services.options) != processes:
            p.restart_services.options = processes
            p.restart_services.value = processes
    return apps


def _draw_status(p, apps: list) -> None:
    focus = p.focus if p.focus in apps else None
    if p.status_read:
        table = status_html(only(p.status_df, focus, p.gone))
    else:
        table = "<i>Loading…</i>"
    p.status_table.value = (error_html(p.status_error) if p.status_error is not None else "") + table
    p.updated.value = f"updated {p.updated_at}" if p.updated_at else ""
    if p.stats_measuring:
        p.stats_table.value = "<i>Measuring (takes a second or two)…</i>"
    elif p.stats_df is None:
        p.stats_table.value = ""
    else:  # the focused app and the shared services it uses
        p.stats_table.value = stats_html(only(p.stats_df, focus, p.gone, shared=True))


def _draw_connections(p) -> None:
    msgs = []
    if p.sample_error is not None:
        err = p.sample_error
        hint = panel_hint(err) if isinstance(err, LabdeployError) else ""
        msgs.append(warning_html("No connection data: " + (getattr(err, "message", None) or str(err)), hint))
    snap = p.snapshot
    if snap is not None:
        used, limit = snap.total, snap.max_connections
        p.gauge.max = float(limit)
        p.gauge.value = float(used)
        p.gauge.bar_style = "danger" if used >= p.threshold * limit else "success"
        p.gauge_label.value = f"{used} / {limit} ({100 * used / limit:.0f}%)"
        summ = snap.summary()
        p.summary.value = summary_html(summ[~summ["app"].isin(list(p.gone))] if not summ.empty else summ)
        if p.sample_error is None:
            msgs += [warning_html(w.message, w.hint) for w in p.sample_warnings
                     if not (set(w.apps) & p.gone) and not _mentions(w.message, p.gone)]
    else:
        p.gauge.value, p.gauge_label.value, p.summary.value = 0.0, "", ""
    p.warnings.value = ("<div style='font-size:115%;font-weight:bold'>" + "".join(msgs) + "</div>"
                        if msgs else "")
    png = _chart(p)
    p.chart.value = png
    p.chart.layout.display = "" if png else "none"


def _chart(p) -> bytes:
    """The chart for the sampler's samples so far, the focus and the apps gone, drawn again only
    when one of them changed (a PNG takes a while)."""
    sampler = p.sampler
    if sampler is None or p.snapshot is None and p.sample_error is None:
        return b""
    samples = sampler.samples
    if samples.empty:
        return b""
    key = (id(sampler), len(samples), samples["time"].iloc[-1], p.focus, frozenset(p.gone))
    if p._chart_key != key:
        p._chart_png, p._chart_key = render_chart(sampler, p.focus, p.gone), key
    return p._chart_png


def _draw_actions(p) -> None:
    pending = p.pending_restart
    if pending is not None and pending[0] not in p.gone:
        app, services = pending
        p.confirm_text.value = (f"<b>Restart {html.escape(', '.join(services))} of {html.escape(app)}?</b> "
                                "Participants may see errors for a few seconds.")
        p.confirm_row.layout.display = "flex"
    else:
        p.confirm_text.value = ""
        p.confirm_row.layout.display = "none"
    run = p.exec_run
    if run is None or run[0] in p.gone:
        p.exec_output.value = ""
    else:
        _app, command, output = run
        p.exec_output.value = f"$ {command}\n" + ("(running…)" if output is None else output)
    if p.log_app is None or p.log_app in p.gone:
        if p.log_pane.text:
            p.log_pane.clear()


__all__ = ["ALL", "ALL_APPS", "draw", "fmt_uptime", "only", "render_chart", "stats_html", "status_html",
           "summary_html"]
