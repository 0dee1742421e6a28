"""The registry panel: log in here and on the chosen server, set the base image name, see who is
logged in. How images travel (the transfer mode) is the deploy panel's choice; its registry mode
uses these logins.

The password box is read once per click and cleared at once; the value lives only in memory
(a saved notebook keeps widget values, so the box must never hold it afterwards).
"""

from __future__ import annotations

import html
from typing import Optional

import ipywidgets as W

from ..experiment import dallingerconfig
from .. import demo
from ..images import registry
from ..errors import LabdeployError, ValidationError
from ..progress import Collector, WarningEvent
from ..ssh import pool as ssh_pool
from .common import (LogPane, Message, Panel, StepList, choice_field, form_beside_steps, ok_html, server_choices,
                     text_field, titled, warning_html, widget_reporter)

STEPS = ("log in here", "log in on the server", "base image name")
TITLES = {"log in here": "Log in here", "log in on the server": "Log in on the server",
          "base image name": "Base image name"}


def _button(label: str, action: str, style: str = "") -> W.Button:
    b = W.Button(description=label, button_style=style, layout=W.Layout(width="auto"))
    b.add_class(f"labdeploy-registry-{action}")
    return b


_text = text_field


def state_html(state: Optional[registry.LoginState], server_label: str = "", problem: str = "") -> str:
    """Who holds a login to the registry, in words (pure); `problem`: why the server could not be asked."""
    if state is None:
        return ""
    here = {"this session": "logged in (kept for this session)",
            "Docker's config": "logged in (Docker's own login)"}.get(state.here, "not logged in")
    lines = [f"This computer: {here}."]
    if problem:
        lines.append(f"Server {server_label}: not checked ({problem})")
    elif state.server is not None:
        lines.append(f"Server {server_label}: " + ("logged in." if state.server else "not logged in."))
    return ("<div class='labdeploy-registry-state' style='color:#333;line-height:1.5;margin-left:148px'>"
            f"<b>{html.escape(state.registry)}</b><br>" + "<br>".join(html.escape(x) for x in lines) + "</div>")


class RegistryPanel(Panel):
    """Registry logins (here and on the chosen server) and `docker_image_base_name`.

    `server` is a registered server's name, a `Server` or a connected `Remote`; the picker also
    lists every registered server. After a login, `panel.credentials` holds the credentials in
    memory for `transfer.deliver(..., credentials=panel.credentials)`.
    """

    def __init__(self, server=None, *, registry_address: Optional[str] = None, user: Optional[str] = None,
                 server_docker_config: Optional[str] = None) -> None:
        d = demo.defaults()
        self._connections = ssh_pool.kernel().lease()  # the notebook's, shared by its panels
        # None: the server user's own ~/.docker (as `docker login` there would do).
        self.server_docker_config = server_docker_config
        self.credentials: Optional[registry.Credentials] = None  # memory only
        # (server label or "", registry address) -> (LoginState, why the server was not asked),
        # as last checked; the view shows the chosen pair's and nothing older.
        self.logins: dict = {}
        self.last_task = None
        self.events = Collector()

        options, self._servers = server_choices(server)
        self.server_picker = choice_field(W.Dropdown(options=options, value=options[0] if options else None,
                                                     description="Server"))
        self.registry_box = _text("Registry address", registry_address or d.get("registry") or "",
                                  "registry.gitlab.com", address=True)
        self.user_box = _text("User", user or d.get("registry_user") or "", "your registry user name")
        self.password_box = text_field("Password / token", password=True)
        self.password_box.add_class("labdeploy-registry-password")
        base = dallingerconfig.get_base_name() or (f"{d['registry']}/experiments" if d.get("registry") else "")
        self.base_box = _text("Base image name", base, "registry.gitlab.com/my-group/experiment-images", wide=True)

        self.login_here_button = _button("Log in here", "login-here", "primary")
        self.login_server_button = _button("Log in on the server", "login-server")
        self.check_button = _button("Check logins", "check")
        self.save_base_button = _button("Save base image name", "save-base")

        self.steps = StepList(STEPS, titles=TITLES)
        self.message = Message()
        self.login_html = W.HTML("")
        self.log = LogPane(max_lines=200, layout=W.Layout(width="100%", height="100px"))
        self._reporter = widget_reporter(self.steps, self.log, None, self.message)

        self.login_here_button.on_click(lambda _b: self.login_here())
        self.login_server_button.on_click(lambda _b: self.login_server())
        self.check_button.on_click(lambda _b: self.check())
        self.save_base_button.on_click(lambda _b: self.save_base_name())
        self.server_picker.observe(lambda _c: self._server_changed(), names="value")
        self.registry_box.observe(lambda _c: self._registry_changed(), names="value")

        self.widget = titled(
            "Images and registry",
            form_beside_steps([self.server_picker, self.registry_box, self.user_box, self.password_box,
                               self.login_html], self.steps),
            self.actions(self.login_here_button, self.login_server_button, self.check_button),
            self.base_box, self.actions(self.save_base_button),
            self.message_slot(), self.log,
            subtitle="Only needed when the Deploy panel's Transfer mode is registry: the logins it uses, "
                     "and where images are named.")

    # ------------------------------------------------------------------ state

    @property
    def remote(self):
        """The chosen server's connection (the notebook's shared one), or None when none is chosen."""
        choice = self._servers.get(self.server_picker.value)
        return None if choice is None else self._connections.pool.get(choice)

    @remote.setter
    def remote(self, remote) -> None:
        """Hand in a connected server: it is added to the picker and chosen."""
        label = getattr(remote, "label", None) or str(remote)
        self._servers[label] = remote
        if label not in self.server_picker.options:
            self.server_picker.options = [label, *self.server_picker.options]
        self.server_picker.value = label

    def close(self) -> None:
        """Let go of the notebook's connections (the last panel closed closes them)."""
        self._connections.release()

    @property
    def login_state(self) -> Optional[registry.LoginState]:
        """Who was logged in to the chosen registry, here and on the chosen server, when last checked."""
        entry = self.logins.get(self._login_key())
        return entry[0] if entry is not None else None

    def _login_key(self) -> tuple:
        return self.server_picker.value or "", self.registry_box.value.strip()

    def draw(self) -> None:
        """The logins of the chosen server and registry as last checked (none shown before a check)."""
        entry = self.logins.get(self._login_key())
        self.login_html.value = state_html(entry[0], self.server_picker.value or "", entry[1]) if entry else ""

    def _server_changed(self) -> None:
        self.steps.set("log in on the server", "pending")  # that login was for the other server
        self.render()
        if self.logins:
            self.check()

    def _registry_changed(self) -> None:
        self.render()
        if self.logins:
            self.check()

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
        "stored unencrypted") below it; then the logins are read again (what the panel shows
        is what is true now)."""
        first_event = len(self.events.events)

        def done(result) -> None:
            warnings = [e for e in self.events.events[first_event:] if isinstance(e, WarningEvent)]
            self.message.value = ok_html(done_text(result)) + "".join(
                warning_html(w.message, w.hint) for w in warnings)
            if step_name != "base image name":
                self.check()

        self.in_background(fn, done, step=step_name, status=f"{TITLES[step_name]} …", name=step_name)

    def _report(self, event) -> None:
        self.events(event)
        self._reporter(event)

    def _chosen_remote(self):
        """The chosen server's connection (opened in the calling background thread)."""
        if self.server_picker.value is None:
            raise ValidationError("No server is chosen.", "Register your server first (Register server in the "
                                  "Set up a server panel), then choose it in Server.", code="invalid.panel.no_server")
        return self.remote

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
            if self.server_picker.value is None:
                self._chosen_remote()
        except Exception as exc:
            self.steps.set("log in on the server", "failed")
            self.message.show_error(exc)
            return
        label = self.server_picker.value

        def work():
            remote = self._chosen_remote()
            registry.login_server(remote, creds, docker_config=self.server_docker_config, reporter=self._report)
            self.credentials = creds
            return creds

        self._start("log in on the server", work,
                    lambda c: f"The server {label} is logged in to {c.registry} as {c.username}.")

    def check(self):
        """Read who is logged in to the registry (this computer, the chosen server) and show it."""
        address, label = self.registry_box.value.strip(), self.server_picker.value

        def work():
            if label is not None:
                try:
                    return registry.login_state(address, self._chosen_remote(),
                                                docker_config=self.server_docker_config), ""
                except LabdeployError as exc:  # this computer's line still shows; the server's says why not
                    return registry.login_state(address), exc.message
            return registry.login_state(address), ""

        def done(result) -> None:
            self.logins[(label or "", address)] = result  # (state, problem)
            self.render()

        return self.in_background(work, done, exclusive=False, name="registry-state")

    def save_base_name(self) -> None:
        name = self.base_box.value.strip()
        self._start("base image name", lambda: dallingerconfig.set_base_name(name),
                    lambda path: f"Saved docker_image_base_name = {name} in {path}.")
