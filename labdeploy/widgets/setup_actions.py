"""Two actions of the setup panel kept out of its class: removing a registered server (after a
confirmation step; labdeploy.ssh.servers.remove) and preparing a Docker Swarm's manager for
experiments (labdeploy.app.swarm.prepare), beside Prepare server.
"""

from __future__ import annotations

import html
from typing import Optional

import ipywidgets as W

from ..app import swarm
from ..errors import LabdeployError
from ..ssh import servers
from .common import widget_reporter


def _button(label: str, action: str, style: str = "") -> W.Button:
    b = W.Button(description=label, button_style=style, layout=W.Layout(width="auto"))
    b.add_class(f"labdeploy-setup-{action}")
    return b


class ServerRemoval:
    """"Remove server…", then "Yes, remove" or Cancel. `asking` (the name asked about, else None)
    is its state; `draw()` shows the question from it, and the panel's `draw()` calls it."""

    def __init__(self, panel) -> None:
        self.panel = panel
        self.asking: Optional[str] = None
        self.html = W.HTML("")
        self.html.add_class("labdeploy-setup-remove-question")
        self.remove_button = _button("Remove server…", "remove-server", "danger")
        self.confirm_button = _button("Yes, remove", "confirm-remove", "danger")
        self.cancel_button = _button("Cancel", "cancel-remove")
        self.remove_button.on_click(lambda _: self.ask())
        self.confirm_button.on_click(lambda _: self.confirm())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.buttons = (self.remove_button, self.confirm_button, self.cancel_button)

    def ask(self) -> None:
        name = self.panel.name_box.value.strip()
        try:
            servers.get(name)  # refused here, before any question, when there is nothing to remove
        except LabdeployError as exc:
            self.panel.message.show_error(exc)
            return
        self.asking = name
        self.panel.render()

    def cancel(self) -> None:
        self.asking = None
        self.panel.render()

    def confirm(self) -> None:
        name = self.asking
        if name is None:
            self.panel.message.show_warning("Nothing to confirm.", "Click “Remove server…” first.")
            return
        self.asking = None
        self.panel.render()

        def done(server) -> tuple:
            if self.panel.server is not None and self.panel.server.name == name:
                self.panel.server = None
            self.panel.message.show_ok(f"Removed {name!r} from this computer's server list; nothing on the "
                                       "server changed. Register server adds it again.")
            return "pending", f"{name!r} removed from the server list"

        self.panel.in_background(lambda: servers.remove(name, confirm=True), done, step="Register",
                                 disable=self.buttons, name="setup-remove")

    def draw(self) -> None:
        asking = self.asking is not None
        self.html.value = (f"<span><b style='color:#c5221f'>Remove {html.escape(self.asking)}?</b> Only this "
                           "computer's entry goes (its address, user and key file); the server and its apps stay."
                           "</span>" if asking else "")
        self.remove_button.layout.display = "none" if asking else ""
        for b in (self.confirm_button, self.cancel_button):
            b.layout.display = "" if asking else "none"


def prepare_start(panel):
    """What both Prepare buttons start with: the settings checked (an error shows at the step,
    and None is returned) and a reporter that keeps each event and shows it in the log."""
    try:
        settings = panel.settings().validate()
    except LabdeployError as exc:
        panel.steps.set("Prepare server", "failed", exc.message)
        panel.message.show_error(exc)
        return None
    panel.log.clear()
    report = widget_reporter(logpane=panel.log, message=panel.message)

    def reporter(event) -> None:
        panel.events(event)
        report(event)

    return settings, reporter


def prepare_swarm(panel) -> None:
    """The server is a Docker Swarm's manager: label the data node, write the settings and start
    the one ingress Caddy (the fields of section 5 give its domain and images)."""
    started = prepare_start(panel)
    if started is None:
        return
    settings, reporter = started

    def done(facts: dict) -> str:
        detail = (f"Swarm manager {facts.get('hostname', '')} ready: data on {facts.get('data_node', '')}, "
                  "ingress Caddy started")
        panel.message.show_ok(f"Prepare server: {detail}. Next, open deploy.ipynb to deploy an experiment.")
        return detail

    panel.in_background(lambda: swarm.prepare(panel._remote(), settings, reporter=reporter), done,
                        step="Prepare server", name="setup-prepare-swarm")
