"""The monitor panel: container status, logs, connections, restart and exec for one server.

Thin over `labdeploy.monitor`: a refresh thread polls `status`, a `Sampler` feeds the
connections gauge, chart and warnings, and every button runs its core call in a background
thread. `stop()` (or the Stop button) ends all of that background work.

What it shows is drawn from what it last read (`monitor_view.draw`): the refresh timer, the
sampler and the buttons store the truth in plain attributes and call `render()`. It hears the
notebook's deploys and destroys (`app.changes`): a destroyed app leaves its focus, tables,
chart, log and pending actions at once.
"""

from __future__ import annotations

import html
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
from .common import LogPane, Message, Panel, choice_field, server_choices, text_field, titled, widget_reporter
from . import monitor_view
from .monitor_view import ALL, ALL_APPS, STATE_COLORS, render_chart, stats_html, status_html, summary_html  # noqa: F401
from .monitor_view import fmt_uptime as _fmt_uptime  # noqa: F401 - the name the tests know

BACKUP_EVERY = 30.0  # seconds between readings of the apps' backup health
PARTICIPANTS_EVERY = 15.0  # seconds between counts of the apps' working participants


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
        # The truth last read; monitor_view.draw turns it into the view.
        self.status_df, self.status_read, self.status_error, self.updated_at = pd.DataFrame(), False, None, ""
        self.snapshot, self.sample_error, self.sample_warnings = None, None, []
        self.stats_df: Optional[pd.DataFrame] = None
        self.stats_measuring = False
        self.pending_restart: Optional[tuple] = None  # (app, services) waiting for "Yes, restart"
        self.exec_run: Optional[tuple] = None  # (app, command, output; None while it runs)
        self.log_app: Optional[str] = None  # the app whose lines the log pane shows
        self.gone: set = set()  # apps destroyed since (announced in this notebook): never shown
        self._gone_at: dict = {}
        self._focus: Optional[str] = None
        self._picked = False  # the researcher chose in the App list (all apps included)
        self._draw_lock, self._drawing = threading.RLock(), None  # None, or the thread drawing now
        self._chart_key, self._chart_png = None, b""
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
        changes.subscribe(self._on_app_change)  # a deploy or destroy in another panel of this notebook
        if autostart and server is not None:
            self.connect(server)

    # ------------------------------------------------------------------ layout

    def _button(self, label: str, action: str, **kw) -> W.Button:
        b = W.Button(description=label, layout=W.Layout(width="auto"), **kw)  # labels never cut
        b.add_class(f"labdeploy-monitor-{action}")
        return b

    def _build(self, server) -> None:
        options, chosen = server_choices(server)
        self._servers.update(chosen)
        self.server_picker = choice_field(W.Dropdown(options=options, value=options[0] if options else None,
                                                     description="Server"))
        self.server_picker.observe(self._on_server, names="value")
        self.app_picker = choice_field(W.Dropdown(options=[ALL_APPS], value=ALL_APPS, description="App"))
        self.app_picker.observe(self._on_pick, names="value")
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
        self.confirm_no.on_click(lambda _: self._set(pending_restart=None))
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
        return self._focus

    def draw(self) -> None:
        monitor_view.draw(self)

    def _set(self, **truth) -> None:
        """Store what was read (or asked), then draw it."""
        for key, value in truth.items():
            setattr(self, key, value)
        self.render()

    def _need_app(self) -> str:
        app = self.focus
        if not app:
            raise LabdeployError("Logs, restarts and commands act on one app, and none is chosen (all apps are shown).",
                                 "Choose your app in the App list at the top.", code="panel.no_app")
        return app

    def _on_pick(self, change) -> None:
        """The researcher chose another app (or all apps): the tables show it at once, from the last reading."""
        if self._drawing != threading.get_ident():  # chosen, "all apps" too: the next refreshes keep it (not the one asked for)
            self._wanted_app, self._picked = None, True
            self._set(_focus=None if change["new"] in (None, ALL_APPS) else change["new"])

    def _on_app_change(self, operation: str, app: str, host: str) -> None:
        """An app was deployed or destroyed in this notebook: a destroyed one leaves every part of the view."""
        if self.remote is not None and host != getattr(self.remote, "host", host):
            return
        if operation != "destroy":
            self.gone.discard(app)
        else:
            self.gone.add(app)
            self._gone_at[app] = time.monotonic()
            if self.log_app == app and self._follow_stop is not None:
                self._follow_stop.set()
            for attr in ("_focus", "_wanted_app", "log_app"):
                if getattr(self, attr) == app:
                    setattr(self, attr, None)
        self.render()
        if self.remote is not None and not self._stop.is_set():
            self.in_background(self._refresh_status, exclusive=False, name="monitor-refresh")

    def _choose_focus(self, apps: list) -> Optional[str]:
        apps = [a for a in apps if a not in self.gone]
        latest = changes.latest_deployed(self.remote.host) if self.remote is not None and not self._picked else None
        return changes.focus(self.focus, self._wanted_app, latest, apps)

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
                self._set(status_error=exc)  # above the last table, and gone with the next good refresh

    def _refresh_status(self) -> None:
        began = time.monotonic()
        df = monitor.status(self.remote, jobs=True)
        # Backups change once a minute at most: not one more round trip on every refresh.
        if self._backup_health is None or time.monotonic() - self._backup_read >= BACKUP_EVERY:
            self._backup_health, self._backup_read = backup_health.read(self.remote), time.monotonic()
        df = backup_health.attach(df, self._backup_health)
        if self._working is None or time.monotonic() - self._working_read >= PARTICIPANTS_EVERY:
            self._working, self._working_read = participants.read(self.remote), time.monotonic()
        df = participants.attach(df, self._working)
        apps = set(df["app"])
        for app in [a for a in self.gone if a in apps and began > self._gone_at.get(a, 0)]:
            self.gone.discard(app)  # deployed again since (from elsewhere): shown again
        self._focus = self._choose_focus(sorted(apps))
        self._set(status_df=df, status_read=True, status_error=None,
                  updated_at=pd.Timestamp.now().strftime("%H:%M:%S"))
        if self.message.value and "Connecting" in self.message.value:
            self.message.clear()

    def _on_sample(self, sampler, snap) -> None:
        if snap is None:
            self._set(sample_error=sampler.last_error)
        else:
            self._set(snapshot=snap, sample_error=None, sample_warnings=list(sampler.warnings))

    def _show_stats(self) -> None:
        self._set(stats_measuring=True)
        try:
            df = monitor.stats(self.remote)
        finally:
            self.stats_measuring = False
        self._set(stats_df=df)

    # ------------------------------------------------------------------ logs

    def _service_choice(self) -> Optional[str]:
        return None if self.log_service.value == ALL else self.log_service.value

    def _show_logs(self) -> None:
        app = self._need_app()
        lines = monitor.logs(app, self.remote, self._service_choice(), tail=int(self.log_tail.value), as_frame=False)
        self.log_pane.clear()
        self.log_app = app
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
                self.log_app = app
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
        self._set(pending_restart=(app, services))

    def _do_restart(self) -> None:
        pending = self.pending_restart
        self._set(pending_restart=None)
        if not pending or pending[0] in self.gone:
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
        self._set(exec_run=(app, command, None))
        res = monitor.exec_(app, self.remote, self.exec_service.value, command, timeout=120)
        self._set(exec_run=(app, command, f"{res.stdout}{res.stderr}\n[exit status {res.exit_status}]"))

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
