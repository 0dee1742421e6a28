"""The registry panel: log in here and on the server, set the base image name, choose a transfer mode.

The password box is read once per click and cleared at once; the value lives only in memory
(a saved notebook keeps widget values, so the box must never hold it afterwards).
"""

from __future__ import annotations

import html
from typing import Optional

import ipywidgets as W

from ..experiment import dallingerconfig
from .. import demo
from ..images import registry, transfer
from ..errors import ValidationError
from ..progress import Collector, WarningEvent
from .common import (LogPane, Message, Panel, StepList, form_beside_steps, ok_html, text_field, titled, warning_html,
                     widget_reporter)

STEPS = ("log in here", "log in on the server", "base image name")
STYLE = {"description_width": "150px"}


def _button(label: str, action: str, style: str = "") -> W.Button:
    b = W.Button(description=label, button_style=style, layout=W.Layout(width="auto"))
    b.add_class(f"labdeploy-registry-{action}")
    return b


_text = text_field


class RegistryPanel(Panel):
    """Registry logins, `docker_image_base_name` and the transfer mode for the next deploys.

    `remote` (a connected `labdeploy.remote.Remote`) is needed for "log in on the server"; it
    may be set later as `panel.remote`. After a login, `panel.credentials` holds the
    credentials in memory for `transfer.deliver(..., credentials=panel.credentials)`.
    """

    def __init__(self, remote=None, *, registry_address: Optional[str] = None, user: Optional[str] = None,
                 mode: str = "server-build", server_docker_config: Optional[str] = None) -> None:
        d = demo.defaults()
        self.remote = remote
        # None: the server user's own ~/.docker (as `docker login` there would do).
        self.server_docker_config = server_docker_config
        self.credentials: Optional[registry.Credentials] = None  # memory only
        self.last_task = None
        self.events = Collector()

        self.registry_box = _text("Registry address", registry_address or d.get("registry") or "",
                                  "registry.gitlab.com")
        self.user_box = _text("User", user or d.get("registry_user") or "", "your registry user name")
        self.password_box = text_field("Password / token", password=True)
        self.password_box.add_class("labdeploy-registry-password")
        base = dallingerconfig.get_base_name() or (f"{d['registry']}/experiments" if d.get("registry") else "")
        self.base_box = _text("Base image name", base, "registry.gitlab.com/my-group/experiment-images", wide=True)
        self.mode_box = W.RadioButtons(options=[(m, m) for m in transfer.MODES], value=mode,
                                       description="Transfer mode", style=STYLE)
        self.mode_box.add_class("labdeploy-registry-mode")
        self.mode_help = W.HTML(self._mode_help_html(mode))
        self.logout_box = W.Checkbox(value=True, indent=False,
                                     description="Log out on the server after each pull (registry mode)",
                                     layout=W.Layout(width="auto"))  # the whole label, never cut

        self.login_here_button = _button("Log in here", "login-here", "primary")
        self.login_server_button = _button("Log in on the server", "login-server")
        self.save_base_button = _button("Save base image name", "save-base")

        self.steps = StepList(STEPS)
        self.message = Message()
        self.log = LogPane(max_lines=200, layout=W.Layout(width="100%", height="100px"))
        self._reporter = widget_reporter(self.steps, self.log, None, self.message)

        self.login_here_button.on_click(lambda _b: self.login_here())
        self.login_server_button.on_click(lambda _b: self.login_server())
        self.save_base_button.on_click(lambda _b: self.save_base_name())
        self.mode_box.observe(lambda ch: setattr(self.mode_help, "value", self._mode_help_html(ch["new"])),
                              names="value")

        self.widget = titled(
            "Images and registry",
            form_beside_steps([self.registry_box, self.user_box, self.password_box], self.steps),
            self.actions(self.login_here_button, self.login_server_button),
            self.base_box, self.actions(self.save_base_button),
            self.mode_box, self.mode_help, self.logout_box,
            self.message_slot(), self.log,
            subtitle="Where experiment images go, and how they reach your server.")

    # ------------------------------------------------------------------ state

    @property
    def mode(self) -> str:
        return self.mode_box.value

    @property
    def logout_after_pull(self) -> bool:
        return bool(self.logout_box.value)

    @staticmethod
    def _mode_help_html(selected: str) -> str:
        rows = []
        for m in transfer.MODES:
            weight = "bold" if m == selected else "normal"
            rows.append(f"<div style='font-weight:{weight}'>{html.escape(m)}: {html.escape(transfer.MODE_HELP[m])}</div>")
        return "<div class='labdeploy-registry-mode-help' style='margin-left:150px;color:#444'>" + "".join(rows) + "</div>"

    def _take_credentials(self) -> registry.Credentials:
        """Read the password box once and clear it; reuse kept credentials when it is empty."""
        password = self.password_box.value
        self.password_box.value = ""
        address, user = self.registry_box.value.strip(), self.user_box.value.strip()
        if not password and self.credentials is not None and \
                (self.credentials.registry, self.credentials.username) == (address, user):
            return self.credentials
        if not password:
            raise ValidationError("The password / token box is empty.",
                                  "Type the registry password or paste an access token, then click again.",
                                  code="invalid.registry.password")
        return registry.Credentials(address, user, password)

    # ------------------------------------------------------------------ actions

    def _start(self, step_name: str, fn, done_text) -> None:
        """A step in the background; its success message lists any warning it gave (e.g.
        "stored unencrypted") below it."""
        first_event = len(self.events.events)

        def done(result) -> None:
            warnings = [e for e in self.events.events[first_event:] if isinstance(e, WarningEvent)]
            self.message.value = ok_html(done_text(result)) + "".join(
                warning_html(w.message, w.hint) for w in warnings)

        self.in_background(fn, done, step=step_name, status=f"{step_name} …", name=step_name)

    def _report(self, event) -> None:
        self.events(event)
        self._reporter(event)

    def login_here(self) -> None:
        try:
            creds = self._take_credentials()
        except Exception as exc:  # shown, never swallowed
            self.steps.set("log in here", "failed")
            self.message.show_error(exc)
            return

        def work():
            result = registry.login_local(creds, reporter=self._report)
            self.credentials = creds
            return result

        self._start("log in here", work, lambda r: f"Logged in to {r.registry} as {r.username} here; kept in {r.stored}.")

    def login_server(self) -> None:
        try:
            creds = self._take_credentials()
            if self.remote is None:
                raise ValidationError("No server is connected to this panel.",
                                      "Connect to your server first (setup panel), then pass it: "
                                      "RegistryPanel(remote) or panel.remote = remote.",
                                      code="invalid.panel.no_server")
        except Exception as exc:
            self.steps.set("log in on the server", "failed")
            self.message.show_error(exc)
            return
        remote = self.remote

        def work():
            registry.login_server(remote, creds, docker_config=self.server_docker_config, reporter=self._report)
            self.credentials = creds
            return creds

        self._start("log in on the server", work,
                    lambda c: f"The server {remote.label} is logged in to {c.registry} as {c.username}.")

    def save_base_name(self) -> None:
        name = self.base_box.value.strip()
        self._start("base image name", lambda: dallingerconfig.set_base_name(name),
                    lambda path: f"Saved docker_image_base_name = {name} in {path}.")

    # ------------------------------------------------------------------ display
