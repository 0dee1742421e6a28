"""The deploy panel: pick a folder, an app name, a server; Deploy / Update; watch the steps and
the log; get the URL and dashboard login (password masked until revealed); list the server's
apps; open one through an SSH tunnel; destroy one after a confirmation step.

All work runs in background threads (Panel.in_background); this module only
lays out controls and calls labdeploy.deploy / labdeploy.app.apps.
"""

from __future__ import annotations

import html
import threading
from typing import Optional

import ipywidgets as W

from ..app import apps as apps_core
from ..app import appdata, deploy as deploy_core, fleet
from .. import demo
from ..ssh import pool as ssh_pool, servers
from ..images import localdocker, transfer
from ..errors import LabdeployError, Remedy
from ..progress import Collector
from ..app import changes
from .common import (LogPane, Message, Panel, ProgressRow, StepList, choice_field, form_beside_steps, plural,
                     text_field, titled, warning_html, widget_reporter)
from .remedies import words as panel_words
from .deploy_options import more_options, options_of
from .lock import LockBreaker

REVEAL_SECONDS = 30  # a revealed password hides itself again, so a saved notebook rarely keeps it
MASK = "••••••••"
_LINK = "target='_blank' style='color:#1a73e8;text-decoration:underline'"  # Lab shows bare links as plain text


def _button(label: str, action: str, style: str = "", icon: str = "") -> W.Button:
    b = W.Button(description=label, button_style=style, icon=icon, layout=W.Layout(width="auto"))
    b.add_class(f"labdeploy-deploy-{action}")
    return b


_text = text_field


def _html(css_class: str) -> W.HTML:
    box = W.HTML("")
    box.add_class(css_class)
    return box


class DeployPanel(Panel):
    """`DeployPanel(experiment_dir, app=..., server=...)`; server may be a registered name, a
    `Server` or a connected `Remote`. Defaults come from `labdeploy.demo.defaults()`."""

    def __init__(self, experiment_dir: str = "", *, app: str = "", server=None, domain: str = "",
                 mode: str = "server-build", base_image: Optional[str] = None,
                 redis_image: Optional[str] = None, health_path: str = "/") -> None:
        d = demo.defaults()
        images = d.get("images") or {}
        self.result: Optional[deploy_core.DeployResult] = None
        self.apps_table = None
        self.destroy_result = None
        self.tunnel: Optional[apps_core.AppTunnel] = None
        self.events = Collector()
        self.health_path = health_path
        self._connections = ssh_pool.kernel().lease()  # the notebook's, shared by its panels
        self._hide_timer: Optional[threading.Timer] = None
        self._pending_destroy: Optional[tuple[str, bool]] = None
        self._local_docker: Optional[localdocker.LocalDocker] = None  # asked once, when a mode needs it

        self._build_fields(experiment_dir, app, server, domain, mode, base_image, redis_image, images)
        self.steps = StepList(deploy_core.STEPS)
        self.progress = ProgressRow()
        self.message = Message()
        self.log = LogPane(max_lines=500)
        self.result_html, self.apps_html, self.tunnel_html = (_html(f"labdeploy-deploy-{c}")
                                                              for c in ("result", "apps", "tunnel-url"))
        self.confirm_html = W.HTML("")

        self._revealed = False
        self._list_shown = False  # the apps table shows once asked for ("List apps")
        self._build_buttons()
        self._wire()
        self.widget = self._lay_out()
        changes.subscribe(self._on_app_change)  # a destroy in another panel of this notebook

    # ------------------------------------------------------------------ display

    def _build_fields(self, experiment_dir, app: str, server, domain: str, mode: str,
                      base_image: Optional[str], redis_image: Optional[str], images: dict) -> None:
        self.folder_box = _text("Experiment folder", str(experiment_dir), "path/to/experiment (with a Dockerfile)")
        self.app_box = _text("App name", app, "e.g. stroop-pilot (lowercase, digits, hyphens)")
        options = [(s.name, s.name) for s in servers.list_servers()]
        if server is not None and not isinstance(server, str):
            label = getattr(server, "name", None) or getattr(server, "label", None) or repr(server)
            options.insert(0, (label, server))
        elif isinstance(server, str) and server not in [o[1] for o in options]:
            options.insert(0, (server, server))
        options.append(("auto (the server with the most room)", fleet.AUTO))  # a new app only; deploy explains
        self.server_box = choice_field(W.Dropdown(options=options, value=server if server is not None or not options
                                                  else options[0][1], description="Server"))
        self.domain_box = _text("Domain", domain, "empty: the one the server was prepared with")
        self.mode_box = choice_field(W.Dropdown(options=[(f"{m}", m) for m in transfer.MODES], value=mode,
                                                description="Transfer mode"))
        self.mode_help = W.HTML("", layout=W.Layout(width="100%", max_width="640px"))  # wraps under its field
        self.base_image_box = _text("Base image", base_image if base_image is not None else images.get("python", ""),
                                    "empty: the Dockerfile's default (BASE_IMAGE build argument)")
        self.redis_image_box = _text("Redis image", redis_image or images.get("redis", ""),
                                     "empty: as last time (or the server's choice, else redis:7)")
        self.remove_data_box = W.Checkbox(value=False, indent=False,
                                          description="also delete its data (database, Redis, files)")
        self.force_box = W.Checkbox(value=False, indent=False, layout=W.Layout(width="auto"),
                                    description="destroy even though participants are working (they lose their session)")
        self.more = more_options()  # pooler on/off and its image, folded away

    def _build_buttons(self) -> None:
        self.deploy_button = _button("Deploy", "deploy", "success", "rocket")
        self.update_button = _button("Update", "update", "primary", "refresh")
        self.apps_button = _button("List apps", "apps", "", "list")
        self.tunnel_button = _button("Open via SSH tunnel", "tunnel", "", "external-link")
        self.close_tunnel_button = _button("Close tunnel", "close-tunnel")
        self.reveal_button = _button("Show password", "reveal", "", "eye")
        self.destroy_button = _button("Destroy…", "destroy", "danger", "trash")
        self.confirm_button = _button("Yes, destroy", "confirm-destroy", "danger")
        self.cancel_button = _button("Cancel", "cancel-destroy")
        # Asked when a deploy finds the data of an earlier, destroyed app of the same name.
        self.data_html = W.HTML("")
        self.reuse_button = _button("Reuse that data", "reuse-data", "warning")
        self.replace_button = _button("Replace it (needs a fresh export)", "replace-data", "danger")
        self.data_cancel_button = _button("Cancel", "cancel-data")
        self.data_actions = self.actions(self.data_html, self.reuse_button, self.replace_button,
                                         self.data_cancel_button)
        self.data_row = self.data_actions.children[0]  # hidden when not asked; the message under it stays
        self.data_row.layout.display = "none"
        self.lock_part = LockBreaker(self)  # offered when the app's deploy lock refuses an action
        for b in (self.close_tunnel_button, self.reveal_button, self.confirm_button, self.cancel_button,
                  self.remove_data_box, self.force_box):
            b.layout.display = "none"

    def _wire(self) -> None:
        self.deploy_button.on_click(lambda _: self.deploy())
        self.update_button.on_click(lambda _: self.update())
        self.apps_button.on_click(lambda _: self.list_apps())
        self.tunnel_button.on_click(lambda _: self.open_tunnel())
        self.close_tunnel_button.on_click(lambda _: self.close_tunnel())
        self.reveal_button.on_click(lambda _: self.toggle_password())
        self.destroy_button.on_click(lambda _: self.ask_destroy())
        self.confirm_button.on_click(lambda _: self.confirm_destroy())
        self.cancel_button.on_click(lambda _: self.cancel_destroy())
        self.reuse_button.on_click(lambda _: self.deploy(existing_data="reuse"))
        self.replace_button.on_click(lambda _: self.deploy(existing_data="replace"))
        self.data_cancel_button.on_click(lambda _: self._hide_data_choice())
        self.mode_box.observe(lambda _: self._show_mode_help(), names="value")
        self._show_mode_help()

    def _lay_out(self) -> W.VBox:
        return titled(
            "Deploy an experiment",
            form_beside_steps([self.folder_box, self.app_box, self.server_box, self.domain_box, self.mode_box,
                               self.mode_help, self.base_image_box, self.redis_image_box, self.more.widget],
                              self.steps),
            self.actions(self.deploy_button, self.update_button, self.apps_button, self.tunnel_button,
                         self.close_tunnel_button, self.destroy_button),
            self.actions(self.confirm_html, self.remove_data_box, self.force_box, self.confirm_button,
                         self.cancel_button),
            self.data_actions, self.lock_part.widget,
            self.progress, self.message_slot(), self.result_html, W.HBox([self.reveal_button]), self.tunnel_html,
            self.log, self.apps_html,
            subtitle="Deploy runs eight steps on the server; a failure after the image step puts the previous "
                     "version back.")

    # ------------------------------------------------------------------ plumbing

    def _show_mode_help(self) -> None:
        mode = self.mode_box.value
        text = (f"<div style='color:#444;margin-left:148px;font-size:90%;line-height:1.4'>"
                f"{html.escape(transfer.MODE_HELP[mode])}</div>")
        if mode in localdocker.NEEDS_LOCAL_DOCKER:  # said before a click, not after a refused deploy
            self._local_docker = self._local_docker or localdocker.probe(timeout=2)
            if not self._local_docker.engine:
                text += warning_html(f"This computer: {self._local_docker.summary()}. The {mode} mode builds the "
                                     "image here, so a deploy with it is refused.",
                                     panel_words(Remedy("docker.local", mode=mode)))
        self.mode_help.value = text

    def remote(self):
        """The connection for the chosen server: the notebook's, opened once and shared by every
        action and panel (a Remote handed in is used as it is)."""
        choice = self.server_box.value
        if choice == fleet.AUTO:
            raise LabdeployError("This acts on one server, and 'auto' is chosen.", "Choose the server in Server.",
                                 code="panel.server_auto")
        if choice is None:
            raise LabdeployError("No server is chosen.",
                                 "Register one first (Register server in the Set up a server panel), then "
                                 "choose it in Server.",
                                 code="panel.no_server")
        return self._connections.pool.get(choice)

    def _show_failure(self, exc: BaseException) -> None:
        """Besides the error: the data question a deploy asks, the way out of a held deploy lock,
        and the container logs of a failure."""
        self.lock_part.offer(exc, self.app_box.value.strip())
        if isinstance(exc, appdata.DataKept):
            self.data_html.value = ("<b>Data of an earlier app of this name is still on the server.</b> "
                                    "Reuse it, or replace it?")
            self.data_row.layout.display = ""
        logs = getattr(exc, "logs", "")
        if logs:
            for line in logs.splitlines()[-60:]:
                self.log.append(f"[logs] {line}")

    def _reporter(self):
        render = widget_reporter(steps=self.steps, logpane=self.log, progress=self.progress, message=self.message)

        def report(event) -> None:
            self.events(event)
            render(event)

        return report

    def _options(self, **extra) -> "deploy_core.DeployOptions":
        """The fields as the DeployOptions the API and the CLI use too (empty fields: remembered)."""
        base = self.base_image_box.value.strip()
        given = {"mode": self.mode_box.value, "health_path": self.health_path,
                 "redis_image": self.redis_image_box.value.strip() or None,
                 "build_args": {"BASE_IMAGE": base} if base else None,
                 "domain": self.domain_box.value.strip() or None, **options_of(self.more), **extra}
        return deploy_core.DeployOptions.of(**{k: v for k, v in given.items() if v is not None})

    # ------------------------------------------------------------------ deploy / update

    def deploy(self, existing_data: Optional[str] = None) -> None:
        """Deploy; `existing_data` ("reuse" / "replace") answers the question a deploy asks when
        a destroyed app of the same name left its data."""
        self._ship(deploy_core.deploy, "Deployed", existing_data=existing_data)

    def update(self) -> None:
        self._ship(deploy_core.update, "Updated")

    def _hide_data_choice(self) -> None:
        self.data_row.layout.display = "none"
        self.data_html.value = ""
        self.lock_part.offer(None, "")  # a new action: an earlier refusal is no longer the last word

    def _ship(self, fn, verb: str, **extra) -> None:
        folder, app = self.folder_box.value.strip(), self.app_box.value.strip()
        if not self.busy:
            self._hide_data_choice()
        reporter = self._reporter()

        def work():
            options = self._options(**extra).check()  # bad input is refused before connecting
            where = fleet.AUTO if self.server_box.value == fleet.AUTO else self.remote()
            result = fn(folder, app, where, reporter=reporter, options=options)
            return result, self._read_apps(result.placed_on or where)

        def done(outcome) -> None:
            result, df = outcome
            self.result, self._revealed = result, False
            if result.placed_on and result.placed_on in [o[1] for o in self.server_box.options]:
                self.server_box.value = result.placed_on  # what follows (list, tunnel, destroy) acts there
            self.progress.hide()
            self._show_apps(df)
            self.message.show_ok(f"{verb} {result.app} (version {result.version}) in {result.duration_s:.0f} s; "
                                 f"data {result.data}; secrets: {', '.join(result.secret_names)}.")
            for w in result.warnings:
                self.log.append(f"WARNING: {w}")

        self.in_background(work, done, on_error=self._show_failure, reset=deploy_core.STEPS, name="deploy")

    def draw(self) -> None:
        """The view of what this panel last read and did, drawn from `result`, `tunnel` and
        `apps_table` alone: an app they no longer hold leaves nothing behind."""
        self._draw_result()
        url = html.escape(self.tunnel.url) if self.tunnel is not None else ""
        self.tunnel_html.value = (f"<div>Open <a class='labdeploy-deploy-tunnel-link' href='{url}' {_LINK}>{url}</a> "
                                  "in this computer's browser (works while this notebook runs).</div>" if url else "")
        self.close_tunnel_button.layout.display = "" if self.tunnel is not None else "none"
        self.apps_html.value = _apps_html(self.apps_table) if self._list_shown and self.apps_table is not None else ""
        self.lock_part.draw()

    def _draw_result(self) -> None:
        """The last deploy's result, the password masked or not; the reveal button says the
        opposite of what is shown (one state, so the label can't disagree with the box)."""
        r = self.result
        self._revealed = bool(self._revealed and r is not None)
        self.reveal_button.description = "Hide password" if self._revealed else "Show password"
        self.reveal_button.layout.display = "" if r is not None else "none"
        if r is None:
            self.result_html.value = ""
            return
        self.result_html.value = _result_html(r, self._revealed)

    def _show_result(self, revealed: bool) -> None:
        self._revealed = revealed
        self.render()

    def toggle_password(self) -> None:
        """Show the dashboard password for REVEAL_SECONDS, or hide it again."""
        if self.result is None:
            return
        if self._hide_timer is not None:
            self._hide_timer.cancel()
            self._hide_timer = None
        if self._revealed:
            self._show_result(revealed=False)
            return
        self._show_result(revealed=True)
        self._hide_timer = threading.Timer(REVEAL_SECONDS, lambda: self._show_result(revealed=False))
        self._hide_timer.daemon = True
        self._hide_timer.start()

    # ------------------------------------------------------------------ the truth, re-read

    def _read_apps(self, where):
        """The server's apps read now (None when they cannot be read: the table is not shown then)."""
        if where == fleet.AUTO:
            return None
        try:
            return apps_core.apps(self._connections.pool.get(where) if isinstance(where, str) else where)
        except LabdeployError:
            return None

    def _forget_app(self, app: str) -> None:
        """`app` is not deployed any more: its address, dashboard, version, tunnel, what the
        message said about it and the steps of its last deploy go."""
        shown = (self.result is not None and self.result.app == app) or \
            (self.tunnel is not None and self.tunnel.app == app)
        if self.result is not None and self.result.app == app:
            self.result = None
        if self.tunnel is not None and self.tunnel.app == app:
            self.tunnel.close()
            self.tunnel = None
        self.render()
        if shown and not self.busy:
            self.message.show_info(f"{app} was destroyed; its address, dashboard and tunnel are gone.")
            if list(self.steps.states) == list(deploy_core.STEPS):
                self.steps.reset(deploy_core.STEPS)
                self.steps.set("preflight", "pending", f"{app} is not on the server now: it can be deployed")

    def _show_apps(self, df) -> None:
        """The server's apps as read now (None: unknown); what the panel shows about an app no
        longer there goes, and a deploy refused because the name was taken is no longer the last word."""
        self.apps_table = df
        self.render()
        if df is None:
            return
        deployed = set(df["app"]) if len(df) else set()
        for app in {getattr(self.result, "app", None), getattr(self.tunnel, "app", None)} - {None} - deployed:
            self._forget_app(app)
        app = self.app_box.value.strip()
        if self.steps.state("preflight") == "failed" and app not in deployed:
            self.steps.reset(deploy_core.STEPS)
            self.steps.set("preflight", "pending", f"{app} is not on the server now: it can be deployed")

    def _on_app_change(self, operation: str, app: str, host: str) -> None:
        """Another panel (or code) of this notebook deployed or destroyed an app: re-read."""
        if operation == "destroy":
            self._forget_app(app)
        if self.busy or self.server_box.value in (None, fleet.AUTO):
            return  # its own deploy or destroy reads the apps again when it ends; no one server: nothing to read
        if self.apps_table is not None or self.result is not None:
            self.in_background(lambda: apps_core.apps(self.remote()), self._show_apps, exclusive=False,
                               name="deploy-refresh")

    # ------------------------------------------------------------------ apps / tunnel

    def list_apps(self) -> None:
        def work():
            return apps_core.apps(self.remote())

        def done(df) -> None:
            self._list_shown = True
            self._show_apps(df)
            self.message.show_ok(f"{plural(len(df), 'app')} on this server.")

        self.in_background(work, done, on_error=self._show_failure, name="deploy")

    def open_tunnel(self) -> None:
        app = self.app_box.value.strip()

        def work():
            if self.tunnel is not None:
                self.tunnel.close()
                self.tunnel = None
            return apps_core.open_tunnel(self.remote(), app)

        def done(tunnel: apps_core.AppTunnel) -> None:
            self.tunnel = tunnel
            self.render()
            self.message.show_ok(f"Tunnel open: {tunnel.url}")

        self.in_background(work, done, on_error=self._show_failure, name="deploy")

    def close_tunnel(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        self.render()

    # ------------------------------------------------------------------ destroy (two steps)

    def ask_destroy(self) -> None:
        app = self.app_box.value.strip()
        self._pending_destroy = (app, False)
        self.confirm_html.value = (f"<b style='color:#c5221f'>Destroy {html.escape(app)}?</b> Its containers, web "
                                   "address and folder go; its data is kept unless ticked:")
        for w in (self.remove_data_box, self.force_box, self.confirm_button, self.cancel_button):
            w.layout.display = ""

    def cancel_destroy(self) -> None:
        self._pending_destroy = None
        self.confirm_html.value = ""
        self.remove_data_box.value = self.force_box.value = False
        for w in (self.remove_data_box, self.force_box, self.confirm_button, self.cancel_button):
            w.layout.display = "none"

    def confirm_destroy(self) -> None:
        if self._pending_destroy is None:
            self.message.show_warning("Nothing to confirm.", "Click “Destroy…” first.")
            return
        app, remove_data, force = self._pending_destroy[0], bool(self.remove_data_box.value), bool(self.force_box.value)
        self.cancel_destroy()
        reporter = self._reporter()

        def work():
            remote = self.remote()
            result = apps_core.destroy(app, remote, confirm=True, remove_data=remove_data, force=force,
                                       reporter=reporter)
            return result, self._read_apps(remote)  # what is deployed now, read again

        def done(outcome) -> None:
            result, df = outcome
            self.destroy_result = result
            self._forget_app(app)
            self.message.show_ok(result.summary())
            self._show_apps(df)

        self.in_background(work, done, on_error=self._show_failure, reset=apps_core.DESTROY_STEPS,
                           name="deploy-destroy")

    def close(self) -> None:
        """Close the tunnel and the connections this panel opened."""
        self.close_tunnel()
        if self._hide_timer is not None:
            self._hide_timer.cancel()
        # The last panel closed closes the notebook's connections (never a Remote handed in).
        self._connections.release()


def _result_html(r, revealed: bool) -> str:
    """A deploy's result: addresses, dashboard login (the password masked unless revealed), version."""
    password = html.escape(r.dashboard_password.reveal()) if revealed else MASK
    return (
        "<div style='border-left:3px solid #188038;padding:4px 8px;background:#f6fbf7;overflow-wrap:anywhere'>"
        f"<div><b>Experiment:</b> <a href='{html.escape(r.url)}' {_LINK}>{html.escape(r.url)}</a></div>"
        f"<div><b>Dashboard:</b> <a href='{html.escape(r.dashboard_url)}' {_LINK}>"
        f"{html.escape(r.dashboard_url)}</a> — user <code>{html.escape(r.dashboard_user)}</code>, "
        f"password <code class='labdeploy-deploy-password'>{password}</code></div>"
        f"<div style='color:#444'>version {html.escape(r.version)} · image {html.escape(r.image)}</div>"
        + (f"<div class='labdeploy-deploy-placement'><b>Placed on</b> {html.escape(r.placement)}</div>"
           if r.placement else "") +
        "<div style='color:#444'>No DNS record yet? Use “Open via SSH tunnel”.</div></div>")


def _apps_html(df) -> str:
    if df is None or not len(df):
        return "<div class='labdeploy-info'>No apps on this server yet.</div>"
    rows = []
    for r in df.itertuples():
        color = {"running": "#188038", "degraded": "#8a4b00"}.get(r.state, "#c5221f")
        when = "" if str(r.deployed_at) == "NaT" else str(r.deployed_at)[:19]
        rows.append(f"<tr><td>{html.escape(r.app)}</td><td style='color:{color}'>{html.escape(r.state)}</td>"
                    f"<td>{html.escape(str(r.version))}</td><td>{html.escape(r.running)}</td>"
                    f"<td><a href='{html.escape(r.url)}' {_LINK}>{html.escape(r.url)}</a></td>"
                    f"<td>{html.escape(when)}</td><td>{html.escape(str(r.who))}</td></tr>")
    # JupyterLab's table look where it applies (as a DataFrame), left-aligned rather than centred.
    return ("<div class='jp-RenderedHTMLCommon' style='padding:0'><table class='labdeploy-apps' style='margin:4px 0'>"
            "<tr><th>app</th><th>state</th><th>version</th><th>running</th>"
            "<th>url</th><th>deployed</th><th>by</th></tr>" + "".join(rows) + "</table></div>")
