"""The "all servers" view: every registered server's room for experiments and its apps'
containers in two tables with a `server` column, asked at the same time; a server that does
not answer is a row saying so (the others still show).

Thin over `labdeploy.app.fleet` (the monitor panel watches one server; this one the fleet).
"""

from __future__ import annotations

import html
import threading
from typing import Optional

import ipywidgets as W
import pandas as pd

from ..app import changes, fleet
from .common import Message, Panel, info_html, titled
from .parts import BAD, frame_html

USAGE_SHOWN = ["server", "host", "memory_total_gb", "memory_free_gb", "disk_free_gb", "apps", "apps_running", "room",
               "error"]
STATUS_SHOWN = ["server", "app", "service", "state", "health", "restarts", "image", "error"]


def _silent(row) -> str:
    return "" if bool(row.get("answered", True)) else BAD


def _explained(df: pd.DataFrame) -> pd.DataFrame:
    """A server that did not answer says so in its error cell."""
    out = df.copy()
    out["error"] = [("did not answer: " + e) if not ok else "" for ok, e in zip(out["answered"], out["error"])]
    return out


class FleetPanel(Panel):
    """`FleetPanel()`: all registered servers; `FleetPanel(["lab-1", "lab-2"])`: those named.

    It shows what it last read (`usage`, `status`, when) and nothing else: `draw()` makes the
    tables from them. A destroy announced in this notebook takes the app's rows out at once,
    then the fleet is asked again (its counts change)."""

    def __init__(self, servers: Optional[list] = None, *, autoload: bool = True) -> None:
        self.servers = list(servers) if servers is not None else None
        self.usage: Optional[pd.DataFrame] = None
        self.status: Optional[pd.DataFrame] = None
        self.updated_at = ""
        self.asking = False  # a reading is under way (the tables say so until it is back)
        self.last_task: Optional[threading.Thread] = None
        self.message = Message()
        self.refresh_button = W.Button(description="Refresh", icon="refresh", layout=W.Layout(width="auto"))
        self.refresh_button.add_class("labdeploy-fleet-refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.updated = W.Label("")
        self.usage_html, self.status_html = W.HTML(), W.HTML()
        self.usage_html.add_class("labdeploy-fleet-usage")
        self.status_html.add_class("labdeploy-fleet-status")
        section = lambda t: W.HTML(f"<b>{html.escape(t)}</b>")  # noqa: E731
        self.widget = titled(
            "All servers", self.actions(self.refresh_button, self.updated), self.message_slot(),
            section("Room for experiments (about 5 GB of memory each)"), self.usage_html,
            section("Apps' containers"), self.status_html,
            subtitle="Every registered server, asked at the same time; one that does not answer is shown as such.")
        changes.subscribe(self._on_app_change)  # a destroy in another panel of this notebook
        if autoload:
            self.refresh()

    def draw(self) -> None:
        """The tables from what was last read (or that it is being read)."""
        if self.usage is None:
            self.usage_html.value = info_html("Asking every server…") if self.asking else ""
        else:
            self.usage_html.value = frame_html(_explained(self.usage), "labdeploy-fleet-usage-table", USAGE_SHOWN,
                                               row_style=_silent)
        if self.status is None:
            self.status_html.value = ""
        else:
            shown = [c for c in STATUS_SHOWN if c in self.status.columns]
            self.status_html.value = frame_html(_explained(self.status), "labdeploy-fleet-status-table", shown,
                                                row_style=_silent, empty="No app runs on any server.")
        self.updated.value = f"updated {self.updated_at}" if self.updated_at else ""

    def refresh(self) -> None:
        self.asking = True
        self.render()

        def work():
            return fleet.usage(self.servers), fleet.status(self.servers)

        def done(found) -> None:
            self.usage, self.status = found
            self.asking, self.updated_at = False, pd.Timestamp.now().strftime("%H:%M:%S")
            silent = self.usage.attrs.get("not_answering", [])
            if silent:
                self.message.show_warning(f"Did not answer: {', '.join(silent)}.",
                                          "Check that the server is on and reachable; the others are shown.")

        def failed(_exc) -> None:
            self.asking = False
            self.render()

        self.in_background(work, done, on_error=failed, disable=[self.refresh_button], name="fleet-refresh")

    def _on_app_change(self, operation: str, app: str, host: str) -> None:
        """An app was deployed or destroyed in this notebook: a destroyed one's rows go now; then ask again."""
        if operation == "destroy" and self.status is not None and "app" in self.status.columns:
            self.status = self.status[self.status["app"] != app]
        self.render()
        if self.usage is not None and not self.busy:
            self.refresh()


__all__ = ["FleetPanel"]
