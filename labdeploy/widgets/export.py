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
from .common import (LogPane, Message, Panel, ProgressRow, StepList, button_row, choice_field, name_in_notebook,
                     plural, text_field, titled, widget_reporter)

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
    """Export an app's data. `ExportPanel(remote)` or `ExportPanel("lab-server", app="stroop")`."""

    def __init__(self, server=None, *, app: Optional[str] = None, folder: str = "exports",
                 autoload: bool = True) -> None:
        self.data: ExportData = ExportData()
        self.anonymous: Optional[ExportData] = None
        self.last_task: Optional[threading.Thread] = None
        self.paths: list = []
        self._connections = ssh_pool.kernel().lease()  # the notebook's, shared by its panels
        self._servers: dict = {}
        self._wanted_app = app
        self._build(server, folder)
        if autoload and self.server_picker.value is not None:
            self.load_apps()

    # ------------------------------------------------------------------ layout

    def _button(self, label: str, action: str, **kw) -> W.Button:
        b = W.Button(description=label, layout=W.Layout(width="auto"), **kw)  # labels never cut
        b.add_class(f"labdeploy-export-{action}")
        return b

    def _build(self, server, folder: str) -> None:
        options = []
        if server is not None and not isinstance(server, str):
            label = getattr(server, "label", None) or str(server)
            self._servers[label] = server
            options.append(label)
        try:
            from ..ssh import servers as _servers

            for s in _servers.list_servers():
                if s.name not in self._servers:
                    self._servers[s.name] = s.name
                    options.append(s.name)
        except Exception:  # no registry yet: the passed server is enough
            pass
        if isinstance(server, str) and server not in self._servers:
            self._servers[server] = server
            options.append(server)
        self.server_picker = choice_field(W.Dropdown(options=options, value=options[0] if options else None,
                                                     description="Server"))
        self.app_picker = choice_field(W.Dropdown(options=[], description="App"))
        self.reload_button = self._button("Reload", "reload", icon="refresh")
        self.reload_button.on_click(lambda _: self.load_apps())
        self.server_picker.observe(lambda change: self.load_apps(), names="value")
        self.app_picker.observe(lambda change: self.load_tables() if change["new"] else None, names="value")

        self.tables = choice_field(W.SelectMultiple(options=[], description="Tables", rows=8))
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
            self.mode, button_row(self.save, self.parquet), button_row(self.files, self.logs), self.folder,
            self.actions(self.export_button, self.destroy_button, self.confirm_destroy),
            self.message_slot(), self.steps, self.progress, self.summary, self.previews, self.log,
            subtitle="Every table of the app, streamed over SSH and checked against the database's row counts.")

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

    def _show(self, data: ExportData, mode: str) -> None:
        """Summary, previews and `panel.data` for an export (called from the worker thread:
        widget values only)."""
        if mode == "anonymous" and data.anonymous is not None:  # "both" was needed for destroy
            data = data.anonymous
        self.data = data  # what was asked for: the anonymised tables in "anonymous" mode
        self.anonymous = data if data.anonymised else data.anonymous
        self.paths = list(data.paths)
        self.summary.value = summary_html(data, self.anonymous)
        titles = list(data)
        # "Both": the preview shows what was anonymised (under the summary that names those columns).
        shown = self.anonymous if mode == "both" and self.anonymous is not None else data
        self.previews.children = [W.HTML(preview_html(shown[t] if t in shown else data[t])) for t in titles]
        for i, t in enumerate(titles):
            self.previews.set_title(i, t)

    def load_apps(self) -> threading.Thread:
        """List the apps that have a database on the chosen server."""
        server = self.server

        def work():
            if server is None:
                raise ValidationError("No server chosen.", "Register one first (Register server in the Set up a server panel).",
                                      code="invalid.panel.no_server")
            return export_core.list_app_databases(server)

        def done(apps):
            self.app_picker.options = apps
            if self._wanted_app in apps:
                self.app_picker.value = self._wanted_app
            elif not apps:
                self.message.show_info("No app on this server has data yet.")
                self.tables.options = []

        return self.in_background(work, done, exclusive=False, name="export-apps")

    def load_tables(self) -> threading.Thread:
        """Every table of the chosen app with its row count, all selected."""
        server, app = self.server, self.app_picker.value

        def done(counts: pd.DataFrame):
            self.tables.options = [(f"{r.table} ({plural(int(r.rows), 'row')})", r.table) for r in counts.itertuples()]
            self.tables.value = tuple(counts["table"])
            self.message.show_info(f"{app}: {plural(len(counts), 'table')}, {plural(int(counts['rows'].sum()), 'row')}.")

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
            self._show(data, mode)  # the DataFrames are there even if a later step fails
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
                                      logs=self.logs.value, on_exported=lambda data: self._show(data, mode))

        def work():
            _need_app(app)
            if not confirmed:
                raise ValidationError("Destroying needs your confirmation.",
                                      "Tick 'I understand: destroy deletes the app and its data', then click again.",
                                      code="confirmation.required")
            if not every:
                raise ValidationError("Only some tables are selected; destroy needs every table exported.",
                                      "Select every table, then click again.", code="invalid.panel.tables")
            return apps_core.destroy(app, server, confirm=True, remove_data=True, final_export=final, reporter=report)

        return self.in_background(work, lambda result: self._exported(app, destroyed=True), status="Exporting…",
                                  reset=apps_core.destroy_steps(final), disable=self._actions, name="export-destroy")

    def _exported(self, app: str, destroyed: bool = False) -> None:
        shown = self.data
        self.steps.skip_pending()
        where = f" Saved: {', '.join(str(Path(p)) for p in self.paths)}." if self.paths else ""
        gone = f" {app} was destroyed." if destroyed else ""
        name = name_in_notebook(self, "the panel")
        first = next(iter(shown), "<table>")
        self.message.show_ok(f"Exported {plural(len(shown), 'table')}, {plural(sum(len(f) for f in shown.values()), 'row')}."
                             f"{where}{gone} In the notebook: {name}.data['{first}']"
                             + (f" (anonymised: {name}.anonymous)." if self.anonymous is not None else "."))
        if destroyed:
            # Nothing picked afterwards and the tick cleared: the next app (and its destroy) is
            # chosen deliberately, and loading another app's tables can't hide this message.
            self.confirm_destroy.value = False
            self.app_picker.value = None
            self.tables.options = []
            self.app_picker.options = [a for a in self.app_picker.options if a != app]


def _need_app(app: Optional[str]) -> None:
    if not app:
        raise ValidationError("No app chosen.", "Pick an app (Reload lists them).", code="invalid.panel.no_app")
