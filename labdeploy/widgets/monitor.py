"""The monitor panel: container status, logs, connections, restart and exec for one server.

Thin over `labdeploy.monitor`: a refresh thread polls `status`, a `Sampler` feeds the
connections gauge, chart and warnings, and every button runs its core call in a background
thread. `stop()` (or the Stop button) ends all of that background work.
"""

from __future__ import annotations

import html
import io
import threading
import time
from typing import Optional

import ipywidgets as W
import pandas as pd

from ..server import layout
from ..watch import backups as backup_health, monitor, participants
from ..errors import LabdeployError
from ..app import changes
from ..ssh import pool as ssh_pool
from ..watch.pgactivity import DEFAULT_THRESHOLD
from .maintenance import MaintenanceBox
from .common import (LogPane, Message, Panel, choice_field, error_html, text_field, titled, warning_html,
                     widget_reporter)
from .remedies import hint as panel_hint

BACKUP_EVERY = 30.0  # seconds between readings of the apps' backup health
PARTICIPANTS_EVERY = 15.0  # seconds between counts of the apps' working participants

STATE_COLORS = {"running": "#188038", "restarting": "#c5221f", "exited": "#c5221f", "dead": "#c5221f",
                "created": "#888", "paused": "#8a4b00"}
ALL = "(all services)"
ALL_APPS = "(all apps)"  # the explicit overview; app names can't contain parentheses
_CELLS = ("<style>.labdeploy-monitor-table td,.labdeploy-monitor-table th{padding:2px 14px 2px 0;text-align:left;"
          "white-space:nowrap}.labdeploy-monitor-table th{color:#1f1f1f;font-weight:600}</style>")


def _fmt_uptime(td) -> str:
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


def status_html(df: pd.DataFrame) -> str:
    """The status DataFrame as a small table, state coloured (pure; used by the panel)."""
    if df.empty:
        return "<i>No labdeploy apps run on this server yet.</i>"
    rows = []
    shown: set = set()
    counted: set = set()
    unknown = df.attrs.get("working_unknown", {})
    for r in df.itertuples():
        color = STATE_COLORS.get(r.state, "#000")
        working = ""
        if hasattr(r, "working") and r.app not in counted:  # once per app, on its first row
            counted.add(r.app)
            working = (f"<span title='{html.escape(unknown.get(r.app, ''), quote=True)}'>?</span>"
                       if pd.isna(r.working) else f"<b class='labdeploy-monitor-working'>{int(r.working)}</b>")
        backup = ""
        if hasattr(r, "backup_warning") and r.app not in shown:  # once per app, on its first row
            shown.add(r.app)
            last = getattr(r, "last_backup", None)
            backup = (f"<b class='labdeploy-monitor-backup-warning' style='color:#c5221f'>⚠ {html.escape(r.backup_warning)}</b>"
                      if r.backup_warning else
                      f"last {last:%Y-%m-%d %H:%M}" if last is not None and not pd.isna(last) else "")
        health = f" ({html.escape(r.health)})" if r.health else ""
        queued, failed = getattr(r, "jobs_queued", None), getattr(r, "jobs_failed", None)
        jobs = "" if queued is None or pd.isna(queued) else \
            f"{queued} queued" + (f", <b style='color:#c5221f'>{failed} failed</b>" if failed else "")
        rows.append(f"<tr class='labdeploy-monitor-row' data-app='{html.escape(r.app)}' "
                    f"data-service='{html.escape(r.service)}' data-state='{html.escape(r.state)}'>"
                    f"<td>{html.escape(r.app)}</td><td>{working}</td><td>{html.escape(r.service)}</td>"
                    f"<td style='color:{color}'>{html.escape(r.state)}{health}</td>"
                    f"<td>{_fmt_uptime(r.uptime)}</td><td>{r.restarts}</td><td>{jobs}</td><td>{backup}</td>"
                    f"<td style='color:#555'>{html.escape(r.image)}</td></tr>")
    return (_CELLS + "<div style='overflow-x:auto'><table class='labdeploy-monitor-status labdeploy-monitor-table' "
            "style='border-collapse:collapse;font-size:90%'>"
            "<tr><th align=left>app</th><th align=left title='participants working now'>working</th>"
            "<th align=left>service</th><th align=left>state</th>"
            "<th align=left>up</th><th align=left>restarts</th><th align=left>jobs</th><th align=left>backup</th>"
            "<th align=left>image</th></tr>"
            + "".join(rows) + "</table></div>")


def summary_html(summ: pd.DataFrame, top: int = 8) -> str:
    if summ.empty:
        return ""
    rows = []
    for r in summ.head(top).itertuples():
        limit = "" if pd.isna(r.role_limit) else f" / {r.role_limit}"
        rows.append(f"<tr><td>{html.escape(r.app or r.database)}</td><td>{r.connections}{limit}</td>"
                    f"<td>{r.active}</td><td>{r.idle}</td><td>{r.idle_in_transaction}</td></tr>")
    return (_CELLS + "<table class='labdeploy-monitor-connections labdeploy-monitor-table' style='font-size:90%'>"
            "<tr><th align=left>app</th>"
            "<th>connections / limit</th><th>active</th><th>idle</th><th>idle in tx</th></tr>"
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


def _only(df: pd.DataFrame, app: Optional[str]) -> pd.DataFrame:
    """The rows of one app (all rows for the view of all apps)."""
    return df if app is None or df.empty else df[df["app"] == app]


def render_chart(sampler, focus: Optional[str] = None) -> bytes:
    """The connections chart as PNG bytes (the legend outside the plot, kept in the picture)."""
    from matplotlib.figure import Figure  # object API: no pyplot global state across threads

    fig = Figure(figsize=(8.5, 2.8), dpi=80)
    sampler.plot(ax=fig.subplots(), focus=focus)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


class MonitorPanel(Panel):
    """Live monitor of one server. `MonitorPanel(remote)` or `MonitorPanel("lab-server")`."""

    def __init__(self, server=None, *, app: Optional[str] = None, refresh: float = 5.0, interval: float = 5.0,
                 container: str = layout.POSTGRES_CONTAINER, threshold: float = DEFAULT_THRESHOLD,
                 autostart: bool = True) -> None:
        self.refresh, self.interval, self.container, self.threshold = refresh, interval, container, threshold
        self.remote = None
        self._connections = ssh_pool.kernel().lease()  # the notebook's, shared by its panels
        self.sampler: Optional[monitor.Sampler] = None
        self.last_task: Optional[threading.Thread] = None
        self.status_df = pd.DataFrame()
        self._backup_health, self._backup_read = None, 0.0  # read at most every BACKUP_EVERY seconds
        self._working, self._working_read = None, 0.0  # read at most every PARTICIPANTS_EVERY seconds
        self._stop = threading.Event()
        self._ctl = threading.Lock()  # orders connect's background start against stop()
        self._timer: Optional[threading.Thread] = None
        self._follow_stop: Optional[threading.Event] = None
        self._follow_task: Optional[threading.Thread] = None
        self._servers: dict = {}
        self._wanted_app = app  # the focus: this app, else the one this notebook deployed, else all apps
        self._build(server)
        if autostart and server is not None:
            self.connect(server)

    # ------------------------------------------------------------------ layout

    def _button(self, label: str, action: str, **kw) -> W.Button:
        b = W.Button(description=label, layout=W.Layout(width="auto"), **kw)  # labels never cut
        b.add_class(f"labdeploy-monitor-{action}")
        return b

    def _build(self, server) -> None:
        options = self._server_options(server)
        self.server_picker = choice_field(W.Dropdown(options=options, value=options[0] if options else None,
                                                     description="Server"))
        self.server_picker.observe(self._on_server, names="value")
        self.app_picker = choice_field(W.Dropdown(options=[ALL_APPS], value=ALL_APPS, description="App"))
        self.app_picker.observe(lambda _: self._focus_changed(), names="value")
        self.stop_button = self._button("Stop monitoring", "stop", icon="stop")
        self.stop_button.on_click(lambda _: self.stop())
        self.start_button = self._button("Start monitoring", "start", icon="play")
        self.start_button.on_click(lambda _: self.connect())
        self.warnings = W.HTML()
        self.warnings.add_class("labdeploy-monitor-warnings")
        self.message = Message()
        self._build_status()
        self._build_logs()
        self._build_restart()
        self._build_exec()
        self.maintenance = MaintenanceBox(self)
        self.widget = self._lay_out()

    def _server_options(self, server) -> list:
        options = []
        if server is not None and not isinstance(server, str):
            label = getattr(server, "label", None) or getattr(server, "name", None) or str(server)
            self._servers[label] = server
            options.append(label)
        try:
            from ..ssh import servers as _servers

            for s in _servers.list_servers():
                self._servers.setdefault(s.name, s.name)
                options.append(s.name) if s.name not in options else None
        except Exception:  # no registry yet: the passed server is enough
            pass
        if isinstance(server, str):
            self._servers.setdefault(server, server)
            options.append(server) if server not in options else None
        return options

    def _build_status(self) -> None:
        self.status_table = W.HTML("<i>Loading…</i>")
        self.refresh_button = self._button("Refresh", "refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.in_background(self._refresh_status, exclusive=False))
        self.updated = W.Label("")

        self.stats_button = self._button("Resource use", "stats", icon="tachometer")
        self.stats_button.on_click(lambda _: self.in_background(self._show_stats, exclusive=False))
        self.stats_table = W.HTML()

        self.gauge = W.FloatProgress(value=0, min=0, max=100, description="Connections",
                                     style={"description_width": "initial"}, layout=W.Layout(width="60%"))
        self.gauge_label = W.Label("")
        self.chart = W.Image(format="png", layout=W.Layout(width="100%", max_width="860px", display="none"))
        self.summary = W.HTML()

    def _build_logs(self) -> None:
        self.log_service = choice_field(W.Dropdown(options=[ALL], value=ALL, description="Service"))
        self.log_tail = choice_field(W.BoundedIntText(value=200, min=0, max=100000, description="Last lines"))
        self.logs_button = self._button("Show logs", "logs", icon="file-text")
        self.logs_button.on_click(lambda _: self.in_background(self._show_logs, exclusive=False))
        self.follow = W.ToggleButton(value=False, description="Follow", icon="play")
        self.follow.add_class("labdeploy-monitor-follow")
        self.follow.observe(self._on_follow, names="value")
        self.log_pane = LogPane(max_lines=2000, layout=W.Layout(width="100%", height="240px"))

    def _build_restart(self) -> None:
        self.restart_services = choice_field(W.SelectMultiple(options=list(layout.PROCESS_SERVICES),
                                                              value=list(layout.PROCESS_SERVICES),
                                                              description="Services", rows=3))
        self.restart_button = self._button("Restart…", "restart", icon="repeat", button_style="warning")
        self.restart_button.on_click(self._ask_restart)
        self.confirm_text = W.HTML()
        self.confirm_yes = self._button("Yes, restart", "restart-confirm", button_style="danger")
        self.confirm_no = self._button("Cancel", "restart-cancel")
        self.confirm_yes.on_click(lambda _: self.in_background(self._do_restart, exclusive=False))
        self.confirm_no.on_click(lambda _: self._hide_confirm())
        self.confirm_row = W.HBox([self.confirm_text, self.confirm_yes, self.confirm_no])
        self.confirm_row.layout.display = "none"

    def _build_exec(self) -> None:
        self.exec_service = choice_field(W.Dropdown(options=list(layout.PROCESS_SERVICES), description="In service"))
        self.exec_command = text_field("Command", "", "e.g. ls -la /tmp", wide=True)
        self.exec_button = self._button("Run", "exec", icon="terminal")
        self.exec_button.on_click(lambda _: self.in_background(self._run_exec, exclusive=False))
        self.exec_output = W.Textarea(disabled=True, layout=W.Layout(width="100%", height="120px"))
        self.exec_output.add_class("labdeploy-monitor-exec-output")

    def _lay_out(self) -> W.VBox:
        section = lambda t: W.HTML(f"<b>{html.escape(t)}</b>")  # noqa: E731
        return titled(
            "Monitor", self.server_picker, self.app_picker, self.actions(self.start_button, self.stop_button),
            self.warnings, self.message_slot(),
            section("Containers"), self.actions(self.refresh_button, self.stats_button, self.updated),
            self.status_table, self.stats_table,
            section("Database connections"), W.HBox([self.gauge, self.gauge_label]), self.chart, self.summary,
            section("Logs"), self.log_service, self.log_tail, self.actions(self.logs_button, self.follow),
            self.log_pane,
            section("Restart (the usual remedy when an app holds too many connections)"),
            self.restart_services, self.actions(self.restart_button), self.confirm_row,
            section("Maintenance page (new arrivals wait; participants already in go on)"),
            self.maintenance.widget,
            section("Run a command in a container"),
            self.exec_service, self.exec_command, self.actions(self.exec_button), self.exec_output,
            subtitle="Status, logs, database connections of the app chosen above (or of all apps); refreshes "
                     "by itself until you stop it.")

    # ------------------------------------------------------------------ background work

    @property
    def focus(self) -> Optional[str]:
        """The app the panel is about, or None in the "all apps" view."""
        value = self.app_picker.value
        return None if value in (None, ALL_APPS) else value

    def _need_app(self) -> str:
        app = self.focus
        if not app:
            raise LabdeployError("Logs, restarts and commands act on one app, and none is chosen (all apps are shown).",
                                 "Choose your app in the App list at the top.", code="panel.no_app")
        return app

    def _focus_changed(self) -> None:
        """Another app (or all apps) chosen: the tables show it at once, from the last reading."""
        self._update_services()
        df = self.status_df
        if not df.empty:
            self.status_table.value = status_html(_only(df, self.focus))
        self.stats_table.value = ""

    def _choose_focus(self, apps: list) -> str:
        latest = changes.latest_deployed(self.remote.host) if self.remote is not None else None
        return changes.focus(self.focus, self._wanted_app, latest, apps) or ALL_APPS

    def connect(self, server=None) -> None:
        """(Re)start monitoring a server: status timer and connection sampler."""
        self._stop_work()
        stop = self._stop = threading.Event()
        target = self._servers.get(self.server_picker.value) if server is None else server

        def work():
            remote = self._connections.pool.get(target)
            with self._ctl:
                if stop.is_set():  # stopped (or switched server) while connecting
                    return
                self.remote = remote
            self._refresh_status()
            with self._ctl:
                if stop.is_set():
                    return
                self.sampler = monitor.Sampler(remote, interval=self.interval, container=self.container,
                                               threshold=self.threshold, on_sample=self._on_sample,
                                               reporter=widget_reporter(message=None)).start()
                self._timer = threading.Thread(target=self._timer_loop, args=(stop,), daemon=True,
                                               name="labdeploy-monitor-refresh")
                self._timer.start()

        self.message.show_info("Connecting…")
        self.in_background(work, exclusive=False, name="monitor-connect")

    def _on_server(self, change) -> None:
        if change["new"]:
            self.connect()

    def _timer_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.refresh):
            try:
                self._refresh_status()
            except Exception as exc:  # noqa: BLE001 - shown; the timer keeps going (e.g. SSH dropped)
                # Above the last table, and gone with the next good refresh.
                self.status_table.value = error_html(exc) + status_html(self.status_df) \
                    if not self.status_df.empty else error_html(exc)

    def _refresh_status(self) -> None:
        df = monitor.status(self.remote, jobs=True)
        # Backups change once a minute at most: not one more round trip on every refresh.
        if self._backup_health is None or time.monotonic() - self._backup_read >= BACKUP_EVERY:
            self._backup_health, self._backup_read = backup_health.read(self.remote), time.monotonic()
        df = backup_health.attach(df, self._backup_health)
        if self._working is None or time.monotonic() - self._working_read >= PARTICIPANTS_EVERY:
            self._working, self._working_read = participants.read(self.remote), time.monotonic()
        df = participants.attach(df, self._working)
        self.status_df = df
        apps = sorted(set(df["app"]))
        focus = self._choose_focus(apps)
        if list(self.app_picker.options) != [ALL_APPS, *apps]:
            self.app_picker.options = [ALL_APPS, *apps]
        self.app_picker.value = focus
        self.status_table.value = status_html(_only(df, self.focus))
        self._update_services()
        self.updated.value = f"updated {pd.Timestamp.now().strftime('%H:%M:%S')}"
        if self.message.value and "Connecting" in self.message.value:
            self.message.clear()

    def _update_services(self) -> None:
        app = self.focus
        df = self.status_df
        services = sorted(set(df[df["app"] == app]["service"])) if app and not df.empty else []
        if services and list(self.exec_service.options) != services:
            self.exec_service.options = services
            self.log_service.options = [ALL, *services]
            # An app without a clock (Dallinger's clock_on off) offers only what it runs.
            processes = [s for s in layout.PROCESS_SERVICES if s in services]
            if processes and list(self.restart_services.options) != processes:
                self.restart_services.options = processes
                self.restart_services.value = processes

    def _on_sample(self, sampler, snap) -> None:
        msgs = []
        if snap is None:
            err = sampler.last_error
            hint = panel_hint(err) if isinstance(err, LabdeployError) else ""
            msgs.append(warning_html("No connection data: " + (getattr(err, "message", None) or str(err)), hint))
        else:
            used, limit = snap.total, snap.max_connections
            self.gauge.max = float(limit)
            self.gauge.value = float(used)
            self.gauge.bar_style = "danger" if used >= self.threshold * limit else "success"
            self.gauge_label.value = f"{used} / {limit} ({100 * used / limit:.0f}%)"
            self.summary.value = summary_html(snap.summary())
            for w in sampler.warnings:
                msgs.append(warning_html(w.message, w.hint))
        self.warnings.value = ("<div style='font-size:115%;font-weight:bold'>" + "".join(msgs) + "</div>"
                               if msgs else "")
        self.chart.value = render_chart(sampler, self.focus)
        self.chart.layout.display = ""

    def _show_stats(self) -> None:
        self.stats_table.value = "<i>Measuring (takes a second or two)…</i>"
        df = monitor.stats(self.remote)
        if self.focus is not None and not df.empty:  # the focused app and the shared services it uses
            df = df[(df["app"] == self.focus) | df["app"].isna() | (df["app"] == "")]
        self.stats_table.value = stats_html(df)

    # ------------------------------------------------------------------ logs

    def _service_choice(self) -> Optional[str]:
        return None if self.log_service.value == ALL else self.log_service.value

    def _show_logs(self) -> None:
        app = self._need_app()
        lines = monitor.logs(app, self.remote, self._service_choice(), tail=int(self.log_tail.value), as_frame=False)
        self.log_pane.clear()
        for line in lines:
            self.log_pane.append(line)
        if not lines:
            self.log_pane.append("(no log lines)")

    def _on_follow(self, change) -> None:
        if change["new"]:
            self.follow.icon = "pause"
            try:
                app = self._need_app()
            except LabdeployError as exc:
                self.message.show_error(exc)
                self.follow.value = False
                return
            stop = self._follow_stop = threading.Event()
            service = self._service_choice()

            def follow():
                # The last lines first, in time order across services (a follow sends each
                # service's backlog as a block), then new lines from that time on.
                df = monitor.logs(app, self.remote, service, tail=int(self.log_tail.value))
                self.log_pane.clear()
                for svc, line in zip(df["service"], df["line"]):
                    self.log_pane.append(f"{svc} | {line}")
                last = df["time"].max() if not df.empty else None

                def show(entry) -> None:
                    if last is None or pd.isna(entry.time) or entry.time > last:
                        self.log_pane.append(str(entry))

                monitor.logs(app, self.remote, service, tail="all" if last is not None else 0,
                             since=last, follow=True, on_line=show, stop=stop,
                             reporter=widget_reporter(logpane=self.log_pane))

            def done(_=None):
                self.follow.value = False

            self._follow_task = self.in_background(follow, done, on_error=lambda exc: done(), exclusive=False,
                                                   name="monitor-follow")
        else:
            self.follow.icon = "play"
            if self._follow_stop is not None:
                self._follow_stop.set()

    # ------------------------------------------------------------------ restart

    def _ask_restart(self, _=None) -> None:
        try:
            app = self._need_app()
        except LabdeployError as exc:
            self.message.show_error(exc)
            return
        services = list(self.restart_services.value)
        if not services:
            self.message.show_warning("Choose at least one service to restart.")
            return
        self.confirm_text.value = (f"<b>Restart {html.escape(', '.join(services))} of {html.escape(app)}?</b> "
                                   "Participants may see errors for a few seconds.")
        self._pending_restart = (app, services)
        self.confirm_row.layout.display = "flex"

    def _hide_confirm(self) -> None:
        self.confirm_row.layout.display = "none"
        self._pending_restart = None

    def _do_restart(self) -> None:
        pending = getattr(self, "_pending_restart", None)
        self._hide_confirm()
        if not pending:
            raise LabdeployError("Nothing to restart.", "Click Restart… and confirm.",
                                 code="panel.nothing_to_restart")
        app, services = pending
        self.message.show_info(f"Restarting {', '.join(services)} of {app}…")
        monitor.restart(app, self.remote, services)
        self.message.show_ok(f"{', '.join(services)} of {app} restarted and running again.")
        self._refresh_status()

    # ------------------------------------------------------------------ exec

    def _run_exec(self) -> None:
        app = self._need_app()
        command = self.exec_command.value.strip()
        if not command:
            raise LabdeployError("The command is empty.", "Type a command, e.g. 'ls -la' or 'env'.",
                                 code="invalid.exec.command")
        self.exec_output.value = f"$ {command}\n(running…)"
        res = monitor.exec_(app, self.remote, self.exec_service.value, command, timeout=120)
        self.exec_output.value = f"$ {command}\n{res.stdout}{res.stderr}\n[exit status {res.exit_status}]"

    # ------------------------------------------------------------------ stopping

    def _stop_work(self) -> None:
        with self._ctl:  # after this, a connect still in progress starts nothing more
            self._stop.set()
            sampler, remote, timer, follow_task = self.sampler, self.remote, self._timer, self._follow_task
        if self._follow_stop is not None:
            self._follow_stop.set()
        if sampler is not None:
            sampler.stop()
        if remote is not None:
            # The persistent psql is background work too; the next snapshot reopens it.
            from ..watch.pgactivity import persistent_psql

            persistent_psql(remote, self.container).close()
        for t in (timer, follow_task):
            if t is not None and t is not threading.current_thread():
                t.join(timeout=10)

    def stop(self) -> None:
        """Stop the refresh timer, the sampler and any log follow."""
        self._stop_work()
        self.follow.value = False
        self.message.show_info("Monitoring stopped. Click Start monitoring to go on.")

    def close(self) -> None:
        """Stop, and let go of the notebook's connections (the last panel closed closes them)."""
        self._stop_work()
        self._connections.release()

    @property
    def running(self) -> bool:
        return any(t is not None and t.is_alive() for t in (self._timer, self._follow_task)) or bool(
            self.sampler and self.sampler.running)


__all__ = ["MonitorPanel", "status_html", "summary_html", "stats_html"]
