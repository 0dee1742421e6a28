"""The backups panel: an app's backups on the server (list, back up now, drill, pull a copy to
this computer, restore side by side or in place, the schedule). Thin over `labdeploy.backup`;
the list is in `panel.backups` as a DataFrame."""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Optional

import ipywidgets as W
import pandas as pd

from .. import backup as backup_core
from .. import export as export_core
from ..data.backups import COLUMNS as BACKUP_COLUMNS
from ..errors import LabdeployError, ValidationError
from ..progress import human_bytes
from ..ssh import pool as ssh_pool
from ..app import changes
from .common import (LogPane, Message, Panel, ProgressRow, StepList, about_this_server, choice_field, draw_options,
                     form_beside_steps, info_html, plural, text_field, titled, widget_reporter)

STEPS = ["Back up the database", "Restore drill", "Pull the backups", "Upload the dump",
         "Restore into a new database", "Stop the app", "Swap the databases", "Start the app"]
EVERY = [("off", "off"), ("every 15 min", "15"), ("every 30 min", "30"), ("every hour", "60"),
         ("every 2 hours", "120"), ("every 6 hours", "360"), ("daily", "1440")]


def backups_html(df: pd.DataFrame, warning: str = "") -> str:
    """The backups as a small table, newest first (pure)."""
    if df.empty:
        body = "<div>No backups yet.</div>"
    else:
        rows = []
        for r in df.iloc[::-1].itertuples():
            check = {True: "✓", False: "✗ damaged"}.get(r.checksum_ok, "")
            drill = {True: "✓ restores", False: "✗ failed"}.get(r.drill, "")
            when = r.time.strftime("%Y-%m-%d %H:%M") if r.time is not None else ""
            rows.append(f"<tr class='labdeploy-backups-row' data-id='{html.escape(r.id)}'>"
                        f"<td>{html.escape(r.id)}</td><td>{when}</td><td>{html.escape(str(r.kind))}</td>"
                        f"<td align=right>{human_bytes(float(r.size or 0))}</td><td align=right>{int(r.rows):,}</td>"
                        f"<td>{check}</td><td>{drill}</td></tr>")
        body = ("<div class='jp-RenderedHTMLCommon' style='padding:0;overflow-x:auto'>"
                "<table class='labdeploy-backups-table' style='border-collapse:collapse;font-size:90%;margin:4px 0'>"
                "<tr><th align=left>id</th><th align=left>time (UTC)</th><th align=left>kind</th><th>size</th>"
                "<th>rows</th><th align=left>checksum</th><th align=left>drill</th></tr>" + "".join(rows) +
                "</table></div>")
    warn = (f"<div class='labdeploy-backups-warning' style='color:#a40000;font-weight:600'>⚠ "
            f"{html.escape(warning)}</div>") if warning else ""
    return warn + body


class BackupsPanel(Panel):
    """`BackupsPanel("lab-server", app="stroop")`: an app's backups and what can be done with them.

    What it shows is drawn by `draw()` from what it last read: `apps` (the apps with data, None
    until read), `backups` with `backups_app` (the list of that app's backups), `warning` and
    `every` (the schedule as read, a value of EVERY). An action ends by reading the list again.
    """

    def __init__(self, server=None, *, app: Optional[str] = None, folder: str = "backups",
                 autoload: bool = True) -> None:
        self.backups: pd.DataFrame = pd.DataFrame(columns=BACKUP_COLUMNS)
        self.backups_app: Optional[str] = None
        self.apps: Optional[list] = None
        self.warning = ""
        self.every_read: Optional[str] = None
        self._every_drawn: Optional[tuple] = None  # (app, schedule) last put in the dropdown
        self.last_task: Optional[threading.Thread] = None
        self.last_result = None
        self._drawing = False
        self._connections = ssh_pool.kernel().lease()
        self._server = server
        self._wanted_app = app
        self._build(folder)
        changes.subscribe(self._on_app_change)  # a destroy in another panel of this notebook
        self.render()
        if autoload and server is not None:
            self.load_apps()

    def _button(self, label: str, action: str, **kw) -> W.Button:
        b = W.Button(description=label, layout=W.Layout(width="auto"), **kw)
        b.add_class(f"labdeploy-backups-{action}")
        return b

    def _build(self, folder: str) -> None:
        self.app_picker = choice_field(W.Dropdown(options=[], description="App"))
        self.app_picker.observe(self._app_picked, names="value")
        self.refresh_button = self._button("Refresh", "refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.now_button = self._button("Back up now", "now", icon="save", button_style="primary")
        self.now_button.on_click(lambda _: self.back_up_now())
        self.drill_button = self._button("Drill the newest", "drill", icon="check")
        self.drill_button.on_click(lambda _: self.drill())
        self.folder = text_field("Pull to", folder, "a folder on this computer")
        self.encrypt_to = text_field("Encrypt to", "", "optional: age1… or ssh-ed25519 … public key")
        self.pull_button = self._button("Pull new backups", "pull", icon="download")
        self.pull_button.on_click(lambda _: self.pull())
        self.source = choice_field(W.Dropdown(options=[("newest", "latest")], value="latest", description="Restore"))
        self.into = text_field("Into app", "", "<app>-restore")
        self.replace = W.Checkbox(value=False, description="replace the data of an existing app (it is backed up first)",
                                  indent=False, layout=W.Layout(width="auto"))
        self.replace.add_class("labdeploy-backups-replace")
        self.restore_button = self._button("Restore", "restore", icon="undo", button_style="warning")
        self.restore_button.on_click(lambda _: self.restore())
        self.every = choice_field(W.Dropdown(options=EVERY, value="60", description="Schedule"))
        self.schedule_button = self._button("Save schedule", "schedule", icon="clock-o")
        self.schedule_button.on_click(lambda _: self.save_schedule())
        self.table = W.HTML()
        self.table.add_class("labdeploy-backups-list")
        self.message = Message()
        self.steps = StepList(STEPS)
        self.progress = ProgressRow()
        self.log = LogPane(max_lines=200)
        # Each button row sits under the fields it uses; what a click says shows under its row.
        form = [self.actions(self.app_picker, self.refresh_button), self.table,
                self.actions(self.now_button, self.drill_button),
                self.folder, self.encrypt_to, self.actions(self.pull_button),
                self.source, self.into, self.actions(self.replace, self.restore_button),
                self.every, self.actions(self.schedule_button)]
        self.widget = titled(
            "Backups", form_beside_steps(form, self.steps), self.progress, self.message_slot(), self.log,
            subtitle="The server backs up every app's database on its schedule and checks once a day that "
                     "the newest backup restores.")

    @property
    def _actions(self) -> tuple:
        return (self.now_button, self.drill_button, self.pull_button, self.restore_button, self.schedule_button,
                self.refresh_button)

    @property
    def server(self):
        if isinstance(self._server, str):
            try:
                return self._connections.pool.get(self._server)
            except LabdeployError:
                return self._server
        return self._server

    def close(self) -> None:
        self._connections.release()

    def _reporter(self):
        return widget_reporter(self.steps, self.log, self.progress, self.message)

    # ------------------------------------------------------------------ the view

    def draw(self) -> None:
        """The apps, the chosen app's backups, restore sources and schedule, drawn from what was
        last read alone (a destroyed app leaves nothing behind)."""
        self._drawing = True  # the picker changed here is not the researcher's choice
        try:
            draw_options(self.app_picker, list(self.apps or []))
            app = self.app_picker.value
            listed = bool(app) and self.backups_app == app
            df = self.backups if listed else self.backups.iloc[0:0]
            if listed:
                self.table.value = backups_html(df, self.warning)
            else:
                self.table.value = info_html("No app on this server has data yet.") if self.apps == [] else ""
            draw_options(self.source, [("newest", "latest")] +
                         [(f"{r.id} ({r.kind})", r.id) for r in df.iloc[::-1].itertuples()])
            if self.source.value is None:
                self.source.value = "latest"
            if listed and self.every_read is not None and self._every_drawn != (app, self.every_read):
                # the server's schedule when it was read anew; a choice not yet saved stays otherwise
                self.every.value = self.every_read
                self._every_drawn = (app, self.every_read)
            self.into.placeholder = f"{app}-restore" if app else "<app>-restore"
        finally:
            self._drawing = False

    def _app_picked(self, change) -> None:
        if self._drawing:
            return
        if change["new"]:
            self.refresh()
        else:
            self.render()

    def _on_app_change(self, operation: str, app: str, host: str) -> None:
        """Another panel (or code) of this notebook deployed or destroyed an app: forget a
        destroyed one at once, then read the apps again (its data and backups may have been kept)."""
        if not about_this_server(host, self._server):
            return
        if operation == "destroy":
            shown = self.app_picker.value == app
            if self.apps is not None:
                self.apps = [a for a in self.apps if a != app]
            if self.backups_app == app:
                self.backups, self.backups_app = self.backups.iloc[0:0], None
            self.render()
            if shown and not self.busy:
                self.message.show_info(f"{app} was destroyed; its backups are no longer shown here.")
        if not self.busy and self._server is not None and self.apps is not None:
            self.load_apps()

    # ------------------------------------------------------------------ actions

    def load_apps(self) -> Optional[threading.Thread]:
        """The apps with data on the server (and the chosen one's backups again)."""
        server = self.server

        def done(apps):
            self.apps = list(apps)
            self.render()
            if self.app_picker.value is None and self._wanted_app in self.apps:
                self.app_picker.value = self._wanted_app  # its backups are read (the picker's observer)
            elif self.app_picker.value is not None:
                self.refresh()

        return self.in_background(lambda: export_core.list_app_databases(server), done, exclusive=False,
                                  name="backups-apps")

    def refresh(self) -> Optional[threading.Thread]:
        """Read the chosen app's backups and schedule again."""
        server, app = self.server, self.app_picker.value

        def done(result):
            self._read(app, result)
            self.render()

        return self.in_background(lambda: _read_backups(server, app), done, exclusive=False, name="backups-list")

    def _read(self, app: Optional[str], result) -> None:
        """Keep what `_read_backups` read about `app`."""
        df, health = result
        self.backups, self.backups_app = df, app
        self.warning = health.iloc[0]["warning"] if len(health) else ""
        if len(health) and health.iloc[0]["every_minutes"] is not None:
            every = str(health.iloc[0]["every_minutes"])
            self.every_read = every if every in dict((v, k) for k, v in EVERY) else None
        else:
            self.every_read = "off" if len(health) else None

    def _act(self, work, done_text, status: str, name: str) -> Optional[threading.Thread]:
        """An action, then the chosen app's backups read again in the same thread (what it changed)."""
        server, app = self.server, self.app_picker.value

        def then_read():
            result = work()
            try:  # a restore may have made an app: the apps too
                return result, _read_backups(server, app), list(export_core.list_app_databases(server))
            except LabdeployError:  # the action's outcome stands; the list is just not read now
                return result, None, None

        def finished(outcome):
            result, read, apps = outcome
            self.last_result = result
            if read is not None:
                self._read(app, read)
                self.apps = apps
            self.message.show_ok(done_text(result))

        return self.in_background(then_read, finished, status=status, reset=STEPS, disable=self._actions, name=name)

    def back_up_now(self) -> Optional[threading.Thread]:
        server, app, report = self.server, self.app_picker.value, self._reporter()
        return self._act(lambda: backup_core.now(self._app_of(app), server, reporter=report),
                         lambda m: f"Backed up {app}: {m['id']}, {human_bytes(float(m['size']))}.",
                         "Backing up…", "backups-now")

    def drill(self) -> Optional[threading.Thread]:
        server, app, report = self.server, self.app_picker.value, self._reporter()
        return self._act(lambda: backup_core.verify_backup(self._app_of(app), server, reporter=report),
                         lambda r: f"Backup {r['id']} restores: {r['detail']}.", "Restoring into a scratch database…",
                         "backups-drill")

    def pull(self) -> Optional[threading.Thread]:
        server, app, report = self.server, self.app_picker.value, self._reporter()
        folder = Path(self.folder.value).expanduser()
        key = self.encrypt_to.value.strip() or None
        return self._act(lambda: backup_core.pull(server, folder, self._app_of(app), encrypt_to=key, reporter=report),
                         lambda df: f"{plural(int(df['pulled'].sum()), 'new backup')} copied to {folder / app}.",
                         "Pulling…", "backups-pull")

    def restore(self) -> Optional[threading.Thread]:
        server, app, report = self.server, self.app_picker.value, self._reporter()
        source, into, replace = self.source.value, self.into.value.strip() or None, self.replace.value
        return self._act(lambda: backup_core.restore(self._app_of(app), server, source, into=into, confirm=replace,
                                                     reporter=report),
                         lambda r: f"Restored {r.source} into {r.app}: {int(r.counts['restored'].fillna(0).sum()):,} "
                                   "rows, counts checked" + (f"; its previous data is backup {r.pre_restore_backup}"
                                                             if r.pre_restore_backup else "") + ".",
                         "Restoring…", "backups-restore")

    def save_schedule(self) -> Optional[threading.Thread]:
        server, app, every = self.server, self.app_picker.value, self.every.value
        return self._act(lambda: backup_core.schedule(server, self._app_of(app), every=every),
                         lambda p: f"Backups of {app}: " + ("off." if p.every_minutes is None else
                                                            f"every {p.every_minutes} min."),
                         "Saving…", "backups-schedule")

    @staticmethod
    def _app_of(app: Optional[str]) -> str:
        if not app:
            raise ValidationError("No app chosen.", "Pick an app first.", code="invalid.panel.no_app")
        return app


def _read_backups(server, app: Optional[str]):
    """An app's backups and backup health, read now."""
    return backup_core.backups(app, server), backup_core.health(server, app)
