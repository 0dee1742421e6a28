"""The monitor panel's maintenance page controls: on / off for the app in focus."""

from __future__ import annotations

import html

import ipywidgets as W

from ..app import maintenance
from ..errors import LabdeployError
from ..server.maintenance import DEFAULT_MESSAGE
from .common import choice_field, text_field


class MaintenanceBox:
    """Entry paths (empty for Dallinger/PsyNet), the page's text, On and Off. `panel` gives the
    app in focus (`_need_app`), the connection (`remote`), `in_background` and `message`."""

    def __init__(self, panel) -> None:
        self.panel = panel
        self.paths = text_field("Entry paths", "", "Dallinger/PsyNet: leave empty; else e.g. / /api/p")
        self.text = choice_field(W.Textarea(value=DEFAULT_MESSAGE, description="Page text", rows=3), wide=True)
        self.on_button = W.Button(description="Maintenance page on", icon="pause", button_style="warning",
                                  layout=W.Layout(width="auto"))
        self.off_button = W.Button(description="Off", icon="play", layout=W.Layout(width="auto"))
        self.on_button.add_class("labdeploy-monitor-maintenance-on")
        self.off_button.add_class("labdeploy-monitor-maintenance-off")
        self.state = W.HTML()
        self.state.add_class("labdeploy-monitor-maintenance-state")
        self.on_button.on_click(lambda _: panel.in_background(lambda: self._set(True), exclusive=False))
        self.off_button.on_click(lambda _: panel.in_background(lambda: self._set(False), exclusive=False))
        panel.app_picker.observe(self._on_app, names="value")
        self.widget = W.VBox([self.paths, self.text, panel.actions(self.on_button, self.off_button, self.state)])

    def _set(self, on: bool) -> None:
        app = self.panel._need_app()
        paths = self.paths.value.split() or None
        maintenance.check_inputs(paths, self.text.value)  # a typo is refused before connecting
        result = maintenance.maintenance(app, self.panel.remote, on, paths=paths, message=self.text.value)
        self.show(result.on, result.summary())
        self.panel.message.show_ok(result.summary())

    def show(self, on: bool, text: str = "") -> None:
        colour = "#b45309" if on else "#15803d"
        self.state.value = f"<span style='color:{colour}'>{html.escape(text or ('on' if on else 'off'))}</span>"

    def _on_app(self, change) -> None:
        app = self.panel.focus  # None in the view of all apps: no one page to show
        self.state.value = ""
        if app and self.panel.remote is not None:
            self.panel.in_background(lambda: self.read(app), exclusive=False, name="maintenance-read")

    def read(self, app: str) -> None:
        """The page's state for the app now in focus."""
        try:
            on = maintenance.is_on(app, self.panel.remote)
        except LabdeployError:  # no web address (yet): nothing to say
            self.state.value = ""
            return
        self.show(on, f"maintenance page {'on' if on else 'off'} for {app}")
