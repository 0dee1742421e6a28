"""The export panel: pick a server and an app, see its tables with row counts, export them
(regular, anonymous or both) into DataFrames and onto disk, optionally then destroy the app.

Thin over `labdeploy.export` (and `labdeploy.app.apps.destroy` with a final export for "Export,
then destroy"): every button runs its core call in a background thread. The DataFrames end up
in `panel.data` (`panel.data["responses"]`), the anonymised ones in `panel.anonymous`.
"""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Optional

import ipywidgets as W
import pandas as pd

from .. import export as export_core
from ..app import apps as apps_core
from ..data.archive import ExportData
from ..errors import LabdeployError, ValidationError
from ..ssh import pool as ssh_pool
from ..app import changes
from .common import (LogPane, Message, Panel, ProgressRow, StepList, about_this_server, button_row, choice_field,
                     draw_options, draw_tabs, info_html, name_in_notebook, plural, server_choices, text_field, titled,
                     widget_reporter)

STEPS = ["Read the tables", "Check row counts", "Anonymise", "Write the archive", "Download files", "Download logs"]
MODES = [("As stored", "regular"), ("Anonymised", "anonymous"), ("Both", "both")]
PREVIEW_ROWS = 5


def summary_html(data: ExportData, anonymous: Optional[ExportData] = None) -> str:
    """One row per table: rows, columns, memory, and which columns were anonymised (pure)."""
    rows = []
    anon_cols = anonymous.anonymised_columns if anonymous is not None else {}
    for table, frame in data.items():
        changed = ", ".join(anon_cols.get(table, []))
        rows.append(f"<tr class='labdeploy-export-row' data-table='{html.escape(table)}' data-rows='{len(frame)}'>"
                    f"<td>{html.escape(table)}</td><td align=right>{len(frame):,}</td>"
                    f"<td align=right>{len(frame.columns)}</td>"
                    f"<td align=right>{frame.memory_usage(deep=True).sum() / 1e6:.1f}</td>"
                    f"<td>{html.escape(changed)}</td></tr>")
    when = f" taken {data.exported_at:%Y-%m-%d %H:%M:%S} UTC" if data.exported_at else ""
    return (f"<div>{html.escape(data.app)}{when}: {len(data)} tables, verified against the database's row "
            f"counts in one snapshot.</div>"
            "<div class='jp-RenderedHTMLCommon' style='padding:0'>"  # JupyterLab's table look, where it applies
            "<table class='labdeploy-export-summary' style='border-collapse:collapse;font-size:90%;margin:4px 0'>"
            "<tr><th align=left>table</th><th>rows</th><th>columns</th><th>MB in memory</th>"
            "<th align=left>anonymised columns</th></tr>" + "".join(rows) + "</table></div>")


def preview_html(frame: pd.DataFrame, rows: int = PREVIEW_ROWS) -> str:
    dtypes = ", ".join(f"{html.escape(str(c))}: {html.escape(str(t))}" for c, t in frame.dtypes.items())
    body = frame.head(rows).to_html(max_cols=30, escape=True, border=0)
    body = body.replace("<table ", "<table style='margin:4px 0' ", 1)  # left-aligned, not centred by Lab
    return (f"<div class='jp-RenderedHTMLCommon' style='overflow-x:auto;font-size:85%;padding:0'>{body}</div>"
            f"<div style='color:#666;font-size:80%'>{len(frame):,} rows. Types: {dtypes}</div>")


class ExportPanel(Panel):
    """Export an app's data. `ExportPanel(remote)` or `ExportPanel("lab-server", app="stroop")`.

    What it shows is drawn by `draw()` from what it last read: `apps` (the apps with data on the
    chosen server, None until read), `counts` (the chosen app's tables and row counts, for
    `counts_app`) and the last export (`data`, `anonymous`, `paths`, shown in `shown_mode` until
    its app is destroyed: the DataFrames stay in `data`, the view of an app that is gone does not).
    """

    def __init__(self, server=None, *, app: Optional[str] = None, folder: str = "exports",
                 autoload: bool = True) -> None:
        self.data: ExportData = ExportData()
        self.anonymous: Optional[ExportData] = None
        self.last_task: Optional[threading.Thread] = None
        self.paths: list = []
        self.apps: Optional[list] = None
        self.counts: Optional[pd.DataFrame] = None
        self.counts_app: Optional[str] = None
        self.shown_mode: Optional[str] = None
        self._drawing = False
        self._connections = ssh_pool.kernel().lease()  # the notebook's, shared by its panels
        self._servers: dict = {}
        self._wanted_app = app
        self._build(server, folder)
        changes.subscribe(self._on_app_change)  # a destroy in another panel of this notebook
        self.render()
        if autoload and self.server_picker.value is not None:
            self.load_apps()

    # ------------------------------------------------------------------ layout

    def _button(self, label: str, action: str, **kw) -> W.Button:
        b = W.Button(description=label, layout=W.Layout(width="auto"), **kw)  # labels never cut
        b.add_class(f"labdeploy-export-{action}")
        return b

    def _build(self, server, folder: str) -> None:
        options, self._servers = server_choices(server)
        self.server_picker = choice_field(W.Dropdown(options=options, value=options[0] if options else None,
                                                     description="Server"))
        self.app_picker = choice_field(W.Dropdown(options=[], description="App"))
        self.reload_button = self._button("Reload", "reload", icon="refresh")
        self.reload_button.on_click(lambda _: self.load_apps())
        self.server_picker.observe(lambda change: self._server_changed(), names="value")
        self.app_picker.observe(self._app_picked, names="value")

        self.tables = choice_field(W.SelectMultiple(options=[], description="Tables", rows=8))
        self.apps_note = W.HTML("")
        self.apps_note.add_class("labdeploy-export-apps-note")
        self.mode = W.ToggleButtons(options=MODES, value="regular", description="Participant data",
                                    style={"description_width": "140px"},
                                    tooltips=["every column as stored", "identifying columns replaced",
                                              "both versions"])
        self.save = W.Checkbox(value=True, description="Save a zip archive (Dallinger format)")
        self.parquet = W.Checkbox(value=False, description="Also save Parquet")
        self.files = W.Checkbox(value=False, description="Download the app's files")
        self.logs = W.Checkbox(value=False, description="Download the app's logs")
        self.folder = text_field("Save to", folder, "a folder on this computer")
        self.export_button = self._button("Export", "export", icon="download", button_style="primary")
        self.export_button.on_click(lambda _: self.run_export())
        self.confirm_destroy = W.Checkbox(value=False, description="I understand: destroy deletes the app and its data")
        self.confirm_destroy.add_class("labdeploy-export-confirm")
        for box in (self.save, self.parquet, self.files, self.logs, self.confirm_destroy):
            box.layout.width = "auto"  # the whole label, not "Save a zip archive (Dalling…"
        self.destroy_button = self._button("Export, then destroy", "destroy", icon="trash", button_style="danger")
        self.destroy_button.on_click(lambda _: self.run_export(destroy=True))

        self.steps = StepList(STEPS, titles=apps_core.DESTROY_STEP_TITLES)
        self.progress = ProgressRow()
        self.log = LogPane(max_lines=200)
        self.message = Message()
        self.summary = W.HTML()
        self.summary.add_class("labdeploy-export-summary")
        self.previews = W.Tab()
        self.widget = titled(
            "Export data", self.server_picker, self.actions(self.app_picker, self.reload_button), self.tables,
            self.apps_note, self.mode, button_row(self.save, self.parquet), button_row(self.files, self.logs),
            self.folder, self.actions(self.export_button, self.destroy_button, self.confirm_destroy),
            self.message_slot(), self.steps, self.progress, self.summary, self.previews, self.log,
            subtitle="Every table of the app, streamed over SSH and checked against the database's row counts.")

    # ------------------------------------------------------------------ the view

    def draw(self) -> None:
        """The apps, the chosen app's tables and the last export, drawn from what was last read
        alone (a destroyed app leaves nothing behind)."""
        self._drawing = True  # the pickers changed here are not the researcher's choice
        try:
            draw_options(self.app_picker, list(self.apps or []))
            app = self.app_picker.value
            counts = self.counts if self.counts is not None and app and self.counts_app == app else None
            options = [] if counts is None else \
                [(f"{r.table} ({plural(int(r.rows), 'row')})", r.table) for r in counts.itertuples()]
            if [tuple(o) for o in self.tables.options] != options:
                self.tables.options = options
                self.tables.value = tuple(v for _, v in options)  # a new listing: every table
            self.apps_note.value = _note_html(self.apps, app, counts)
            shown = self.shown_mode is not None and (self.apps is None or self.data.app in self.apps)
            self.summary.value = summary_html(self.data, self.anonymous) if shown else ""
            draw_tabs(self.previews, _pages(self.data, self.anonymous, self.shown_mode) if shown else [])
        finally:
            self._drawing = False

    # ------------------------------------------------------------------ actions

    @property
    def _actions(self) -> tuple:
        """The buttons that start an export, disabled while one runs."""
        return self.export_button, self.destroy_button, self.reload_button

    @property
    def server(self):
        """The chosen server: for a registered name the notebook's shared connection, else what
        was handed in."""
        choice = self._servers.get(self.server_picker.value)
        if isinstance(choice, str):
            try:
                return self._connections.pool.get(choice)
            except LabdeployError:  # e.g. no longer registered: the action given the name says so
                return choice
        return choice

    def close(self) -> None:
        """Let go of the notebook's connections (the last panel closed closes them)."""
        self._connections.release()

    def _keep(self, data: ExportData, mode: str) -> None:
        """An export's DataFrames, kept and drawn (called from the worker thread)."""
        if mode == "anonymous" and data.anonymous is not None:  # "both" was needed for destroy
            data = data.anonymous
        self.data = data  # what was asked for: the anonymised tables in "anonymous" mode
        self.anonymous = data if data.anonymised else data.anonymous
        self.paths = list(data.paths)
        self.shown_mode = mode
        self.render()

    def _server_changed(self) -> None:
        """Another server: what was read from the last one goes, and this one's apps are read."""
        self.apps, self.counts, self.counts_app = None, None, None
        self.render()
        self.load_apps()

    def _app_picked(self, change) -> None:
        if self._drawing:
            return
        if change["new"]:
            self.load_tables()
        else:
            self.render()

    def _on_app_change(self, operation: str, app: str, host: str) -> None:
        """Another panel (or code) of this notebook deployed or destroyed an app: forget a
        destroyed one at once, then read the apps again (its data may have been kept)."""
        if not about_this_server(host, self._servers.get(self.server_picker.value)):
            return
        if operation == "destroy":
            self._forget(app)
        if not self.busy and self.server_picker.value is not None and self.apps is not None:
            self.load_apps()

    def _forget(self, app: str) -> None:
        shown = self.app_picker.value == app or (self.shown_mode is not None and self.data.app == app)
        if self.apps is not None:
            self.apps = [a for a in self.apps if a != app]
        if self.counts_app == app:
            self.counts, self.counts_app = None, None
        if self.data.app == app:
            self.shown_mode = None  # its DataFrames stay in `data`; the view of a gone app does not
        self.render()
        if shown and not self.busy:
            self.message.show_info(f"{app} was destroyed; its tables and export summary are gone from this panel.")

    def load_apps(self) -> threading.Thread:
        """List the apps that have a database on the chosen server (and the chosen app's tables again)."""
        server = self.server

        def work():
            if server is None:
                raise ValidationError("No server chosen.", "Register one first (Register server in the Set up a server panel).",
                                      code="invalid.panel.no_server")
            return export_core.list_app_databases(server)

        def done(apps):
            self.apps = list(apps)
            self.render()
            if self.app_picker.value is None and self._wanted_app in self.apps:
                self.app_picker.value = self._wanted_app  # its tables are read (the picker's observer)
            elif self.app_picker.value is not None:
                self.load_tables()

        return self.in_background(work, done, exclusive=False, name="export-apps")

    def load_tables(self) -> threading.Thread:
        """Every table of the chosen app with its row count, all selected."""
        server, app = self.server, self.app_picker.value

        def done(counts: pd.DataFrame):
            self.counts, self.counts_app = counts, app
            self.render()

        return self.in_background(lambda: export_core.table_counts(app, server), done, exclusive=False,
                                  name="export-tables")

    def run_export(self, destroy: bool = False) -> Optional[threading.Thread]:
        """Export the chosen tables (the Export button); with destroy=True "Export, then destroy":
        the core's destroy with a final export (stop the app, export every table, then delete)."""
        start = self._export_then_destroy if destroy else self._export
        return start(self.server, self.app_picker.value, Path(self.folder.value).expanduser(),
                     widget_reporter(self.steps, self.log, self.progress, self.message))

    def _export(self, server, app: Optional[str], folder: Path, report) -> Optional[threading.Thread]:
        chosen = list(self.tables.value)
        every = set(chosen) == {v for _, v in self.tables.options}
        mode, save, parquet = self.mode.value, self.save.value, self.parquet.value
        files, logs = self.files.value, self.logs.value

        def work():
            _need_app(app)
            data = export_core.export(app, server, None if every else chosen, mode=mode,
                                      save_to=folder if save else None, parquet=parquet, reporter=report)
            self._keep(data, mode)  # the DataFrames are there even if a later step fails
            if files:
                export_core.download_files(app, server, folder / f"{app}-files", reporter=report)
            if logs:
                export_core.download_logs(app, server, folder, reporter=report)
            return data

        return self.in_background(work, lambda data: self._exported(app), status="Exporting…", reset=STEPS,
                                  disable=self._actions, name="export")

    def _export_then_destroy(self, server, app: Optional[str], folder: Path, report) -> Optional[threading.Thread]:
        every = set(self.tables.value) == {v for _, v in self.tables.options}
        confirmed, mode = self.confirm_destroy.value, self.mode.value
        final = apps_core.FinalExport(folder, mode=mode, parquet=self.parquet.value, files=self.files.value,
                                      logs=self.logs.value, on_exported=lambda data: self._keep(data, mode))

        def work():
            _need_app(app)
            if not confirmed:
                raise ValidationError("Destroying needs your confirmation.",
                                      "Tick 'I understand: destroy deletes the app and its data', then click again.",
                                      code="confirmation.required")
            if not every:
                raise ValidationError("Only some tables are selected; destroy needs every table exported.",
                                      "Select every table, then click again.", code="invalid.panel.tables")
            apps_core.destroy(app, server, confirm=True, remove_data=True, final_export=final, reporter=report)
            return _read_apps(server)  # what has data now, read again

        def done(apps) -> None:
            self._forget(app)
            if apps is not None:
                self.apps = apps
            self._exported(app, destroyed=True)

        return self.in_background(work, done, status="Exporting…", reset=apps_core.destroy_steps(final),
                                  disable=self._actions, name="export-destroy")

    def _exported(self, app: str, destroyed: bool = False) -> None:
        shown = self.data
        self.steps.skip_pending()
        where = f" Saved: {', '.join(str(Path(p)) for p in self.paths)}." if self.paths else ""
        gone = f" {app} was destroyed." if destroyed else ""
        name = name_in_notebook(self, "the panel")
        first = next(iter(shown), "<table>")
        if destroyed:
            # The tick cleared: the next app (and its destroy) is chosen deliberately.
            self.confirm_destroy.value = False
        self.render()
        self.message.show_ok(f"Exported {plural(len(shown), 'table')}, {plural(sum(len(f) for f in shown.values()), 'row')}."
                             f"{where}{gone} In the notebook: {name}.data['{first}']"
                             + (f" (anonymised: {name}.anonymous)." if self.anonymous is not None else "."))


def _read_apps(server) -> Optional[list]:
    """The apps with data on `server` read now, or None when they cannot be read."""
    try:
        return list(export_core.list_app_databases(server))
    except LabdeployError:
        return None


def _note_html(apps: Optional[list], app: Optional[str], counts: Optional[pd.DataFrame]) -> str:
    """What was read about the server's apps, in words: none with data, or the chosen app's size."""
    if apps is not None and not apps:
        return info_html("No app on this server has data yet.")
    if counts is None:
        return ""
    return info_html(f"{app}: {plural(len(counts), 'table')}, {plural(int(counts['rows'].sum()), 'row')}.")


def _pages(data: ExportData, anonymous: Optional[ExportData], mode: Optional[str]) -> list:
    """One preview per table; in "Both" mode the anonymised version (under the summary that names
    the columns it changed)."""
    shown = anonymous if mode == "both" and anonymous is not None else data
    return [(t, preview_html(shown[t] if t in shown else data[t])) for t in data]


def _need_app(app: Optional[str]) -> None:
    if not app:
        raise ValidationError("No app chosen.", "Pick an app (Reload lists them).", code="invalid.panel.no_app")
