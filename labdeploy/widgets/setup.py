"""The server setup panel: key, agent, host key, copy key, verify, register, readiness, prepare.

Each button runs one core call in a background thread and shows its step's state. Passwords
and passphrases are read from their boxes once, the boxes are cleared at once, and the values
live only in memory (never in a widget value that a saved notebook could keep).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable, Optional

import ipywidgets as W

from .. import demo
from ..ssh import keys, servers
from ..server import readiness, stack
from ..images import localdocker
from ..errors import ChangedHostKey, LabdeployError
from ..progress import Collector
from .remedies import words as panel_words
from ..ssh import hostkeys
from .setup_actions import ServerRemoval, prepare_start, prepare_swarm
from .common import (LogPane, Message, Panel, StepList, choice_field, form_beside_steps, info_html, plural, text_field,
                     titled)

STEPS = ("SSH key", "ssh-agent", "Host key", "Copy key", "Verify login", "Register", "Readiness", "Prepare server")


def _button(label: str, action: str, style: str = "") -> W.Button:
    b = W.Button(description=label, button_style=style, layout=W.Layout(width="auto"))
    b.add_class(f"labdeploy-setup-{action}")
    return b


# Where a step's verdict no longer holds once the server's address changes.
ABOUT_THE_ADDRESS = ("Host key", "Copy key", "Verify login", "Register", "Readiness", "Prepare server")


class SetupPanel(Panel):
    """Guided server setup. `SetupPanel()` fills its fields from `labdeploy.demo.defaults()`."""

    def __init__(self, *, server_name: Optional[str] = None, host: Optional[str] = None, port: Optional[int] = None,
                 user: Optional[str] = None, key_path: Optional[str] = None, known_hosts: Optional[str] = None,
                 stack_settings: Optional[stack.StackSettings] = None, jump: Optional[str] = None) -> None:
        d = demo.defaults()
        self.known_hosts = known_hosts  # None = ~/.ssh/known_hosts
        self._images = d.get("images") or {}
        self._stack_settings = stack_settings
        self._passphrase: Optional[str] = None  # memory only
        self.asking = None  # the host key status waiting for the researcher's answer (Trust), else None
        self.remote = None
        self.server: Optional[servers.Server] = None
        self.readiness_table = None
        self.local_docker: Optional[localdocker.LocalDocker] = None
        self.prepare_result = None
        self.last_task = None
        self.events = Collector()

        self.name_box = text_field("Server name", server_name or d["server_name"], "lab-server")
        self.host_box = text_field("Server address", host or d["host"], "lab.example.org", address=True)
        self.port_box = choice_field(W.IntText(value=int(port or d["port"] or 22), description="SSH port",
                                               continuous_update=False))
        self.user_box = text_field("User name", user or d["user"], "your login on the server")
        self.jump_box = text_field("Jump host", jump or "", "user@bastion.example.org (optional)", address=True)
        self.key_box = text_field("Key file", key_path or str(keys.default_key_path()), wide=True)  # paths are long
        self.passphrase_box = text_field("Key passphrase", password=True)
        self.password_box = text_field("Account password", password=True)
        self.given_fingerprint_box = text_field("Admin's fingerprint", "",
                                                "paste the fingerprint your administrator gave you", wide=True)
        self.email_box = text_field("Contact email", "", "for HTTPS certificates (optional)")
        self.domain_box = text_field("Domain", d.get("domain", ""), "experiments.example.org")
        self.acme_ca_box = text_field("ACME directory", "", "empty: Let's Encrypt; 'staging' for dry runs; or a URL",
                                      wide=True)
        self.acme_ca_root_box = text_field("ACME CA root", "", "PEM file of your CA (optional)", wide=True)
        self.replace_box = W.Checkbox(value=False, description="Replace a registered server of the same name",
                                      indent=False, layout=W.Layout(width="auto"))
        self.compare_html = W.HTML("")
        self.compare_html.add_class("labdeploy-setup-compare")

        self.steps = StepList(STEPS)
        self.steps.set("ssh-agent", "optional", "only needed if your key has a passphrase")
        self.message = Message()
        self.log = LogPane(max_lines=300)
        self.fingerprint_html = W.HTML("")
        self.table_html = W.HTML("")
        self.table_html.add_class("labdeploy-setup-readiness")

        self.create_key_button = _button("Create new key", "create-key", "primary")
        self.use_key_button = _button("Use this key", "use-key")
        self.agent_button = _button("Add key to ssh-agent", "add-agent")
        self.check_host_button = _button("Check host key", "check-host")
        self.trust_host_button = _button("Trust this fingerprint", "trust-host", "warning")
        self.trust_host_button.layout.display = "none"
        self.copy_button = _button("Copy key to server", "copy-key")
        self.verify_button = _button("Verify key login", "verify")
        self.register_button = _button("Register server", "register")
        self.readiness_button = _button("Check readiness", "readiness")
        self.prepare_button = _button("Prepare server", "prepare", "success")
        self.swarm_button = _button("Prepare as a Swarm manager", "prepare-swarm")  # the server manages a Swarm
        self.removal = ServerRemoval(self)  # "Remove server…" with its confirmation

        self.widget = self._lay_out()
        self._wire()
        self.render()

    # ------------------------------------------------------------------ display

    def _wire(self) -> None:
        for box in (self.host_box, self.port_box, self.user_box, self.key_box, self.jump_box):
            box.observe(lambda _: self._forget_connection(), names="value")
        for box in (self.host_box, self.port_box, self.jump_box):
            box.observe(lambda _: self._address_changed(), names="value")
        self.given_fingerprint_box.observe(lambda _: self._show_comparison(), names="value")

        self.create_key_button.on_click(lambda _: self.create_key())
        self.use_key_button.on_click(lambda _: self.use_key())
        self.agent_button.on_click(lambda _: self.add_to_agent())
        self.check_host_button.on_click(lambda _: self.check_host())
        self.trust_host_button.on_click(lambda _: self.trust_host())
        self.copy_button.on_click(lambda _: self.copy_key())
        self.verify_button.on_click(lambda _: self.verify())
        self.register_button.on_click(lambda _: self.register())
        self.readiness_button.on_click(lambda _: self.check_readiness())
        self.prepare_button.on_click(lambda _: self.prepare())
        self.swarm_button.on_click(lambda _: prepare_swarm(self))

    def _lay_out(self) -> W.VBox:
        def section(title: str, *children: W.Widget) -> W.VBox:
            return W.VBox([W.HTML(f"<b>{html.escape(title)}</b>"), *children],
                          layout=W.Layout(margin="6px 0 0 0"))

        return titled(
            "Set up a server",
            form_beside_steps([self.name_box, self.host_box, self.port_box, self.user_box, self.jump_box],
                              self.steps),
            section("1. Your SSH key", self.key_box, self.passphrase_box,
                    self.actions(self.create_key_button, self.use_key_button, self.agent_button)),
            section("2. The server's identity", self.actions(self.check_host_button, self.trust_host_button),
                    self.fingerprint_html, self.given_fingerprint_box, self.compare_html),
            section("3. Passwordless login", self.password_box,
                    self.actions(self.copy_button, self.verify_button)),
            section("4. Register and check", self.replace_box,
                    self.actions(self.register_button, self.readiness_button, self.removal.remove_button),
                    self.actions(self.removal.html, self.removal.confirm_button, self.removal.cancel_button),
                    self.table_html),
            section("5. Shared services (PostgreSQL, Caddy)", self.email_box, self.domain_box, self.acme_ca_box,
                    self.acme_ca_root_box, self.actions(self.prepare_button, self.swarm_button)),
            self.message_slot(), self.log,
            subtitle="Each step runs in the background; a failed step says what to do next.")

    # ------------------------------------------------------------------ plumbing

    def _take_passphrase(self) -> Optional[str]:
        """Read the passphrase box once, keep the value in memory, clear the box."""
        if self.passphrase_box.value:
            self._passphrase = self.passphrase_box.value
            self.passphrase_box.value = ""
        return self._passphrase or None

    def _start(self, step: str, work: Callable[[], object], done: Callable[[object], str]) -> None:
        """A setup step in the background. done() returns the step's detail (also the success
        message), or (state, detail) when the step is not simply done."""

        def finished(result):
            outcome = done(result)
            if not isinstance(outcome, tuple):
                self.message.show_ok(f"{step}: {outcome}")
            return outcome

        self.in_background(work, finished, step=step, name=f"setup-{step}")

    def close(self) -> None:
        """Close the connection this panel verified (its own: it may hold a passphrase, so it is
        never shared with other panels)."""
        self._forget_connection()

    @property
    def pending_fingerprint(self) -> Optional[str]:
        """The fingerprint waiting for the researcher's answer, else None."""
        return self.asking.fingerprint if self.asking is not None else None

    def draw(self) -> None:
        """The host key question, the comparison with a pasted fingerprint and the readiness
        table, drawn from what the panel last read (`asking`, `readiness_table`) alone."""
        status = self.asking
        self.trust_host_button.layout.display = "" if status is not None else "none"
        self.fingerprint_html.value = _fingerprint_html(status, self._fields()[0]) if status is not None else ""
        self._show_comparison()
        self.removal.draw()
        df = self.readiness_table
        self.table_html.value = "" if df is None else _table_html(df) + (
            info_html(f"This computer: {self.local_docker.summary()}.") if self.local_docker is not None else "")

    def _address_changed(self) -> None:
        """Another address: the host key question and every verdict about the old server no longer
        hold. The steps go back to pending (the host key step says to check again); nothing runs
        by itself, so a check the researcher starts next is never refused as "still running"."""
        checked = self.steps.state("Host key") != "pending" or self.asking is not None
        self.asking, self.readiness_table = None, None
        self.render()
        for step in ABOUT_THE_ADDRESS:
            self.steps.set(step, "pending")
        if checked:
            self.steps.set("Host key", "pending", "the address changed: click 'Check host key' again")

    def _show_comparison(self) -> Optional[str]:
        """The administrator's fingerprint against the one the server presents (when both are there)."""
        given, presented = self.given_fingerprint_box.value.strip(), self.pending_fingerprint
        if not given or not presented:
            self.compare_html.value = ""
            return None
        verdict = hostkeys.compare_fingerprint(given, presented)
        color, text = _VERDICTS[verdict]
        self.compare_html.value = f"<div style='color:{color};margin-left:148px'>{html.escape(text)}</div>"
        return verdict

    def _forget_connection(self) -> None:
        """Another server, user or key was typed: the verified connection no longer applies."""
        if self.remote is not None:
            self.remote.close()
            self.remote = None

    def _fields(self):
        return self.host_box.value.strip(), int(self.port_box.value), self.user_box.value.strip()

    def _jump(self) -> Optional[str]:
        """The jump host field: None when empty (then ~/.ssh/config decides)."""
        return self.jump_box.value.strip() or None

    def _key_path(self) -> Path:
        return Path(self.key_box.value.strip() or keys.default_key_path()).expanduser()

    # ------------------------------------------------------------------ steps

    def create_key(self) -> None:
        path, passphrase = self._key_path(), self._take_passphrase()
        self._start("SSH key", lambda: keys.generate_key(path, passphrase),
                    lambda k: f"created {k.path.name} ({k.fingerprint})")

    def use_key(self) -> None:
        path, passphrase = self._key_path(), self._take_passphrase()

        def work():
            keys.load_private_key(path, passphrase)  # proves the file opens (and the passphrase)
            keys.public_key_line(path)
            return path

        self._start("SSH key", work, lambda p: f"using {p}")

    def add_to_agent(self) -> None:
        path, passphrase = self._key_path(), self._take_passphrase()
        def optional(exc: BaseException) -> None:
            # The agent is a convenience (a key with a passphrase): without one the journey goes on.
            text = exc.message if isinstance(exc, LabdeployError) else str(exc)
            self.steps.set("ssh-agent", "optional", f"not added: {text}")
            self.message.show_warning(f"ssh-agent (optional): {text}",
                                      panel_words(getattr(exc, "remedy", None), getattr(exc, "hint", "")))

        def done(fp):
            self.message.show_ok(f"ssh-agent: agent holds {fp}")
            return f"agent holds {fp}"

        self.in_background(lambda: keys.add_to_agent(path, passphrase), done, step="ssh-agent", on_error=optional,
                           name="setup-ssh-agent")

    def _host_key_status(self, host: str, port: int, jump: Optional[str], key_path: Path):
        """The first-contact question (behind a jump host: the first hop not known yet); a
        changed key is refused here."""
        status = keys.host_key_status(host, port, self.known_hosts, jump=jump, key_path=key_path,
                                      passphrase=self._passphrase)
        if status.state == "changed":
            who = status.host or host
            raise ChangedHostKey(
                f"The {status.role} {who} presents a different host key ({status.fingerprint}) than the one stored "
                f"({status.expected_fingerprint}). labdeploy refuses to connect.",
                f"Usually the {status.role} was rebuilt. Ask its administrator; only then remove the old key "
                f"deliberately (`ssh-keygen -R {who}`) and check again. If nobody changed it, "
                "do not connect: someone may be intercepting the connection.",
                host=who, port=status.port or port, fingerprint=status.fingerprint,
                expected_fingerprint=status.expected_fingerprint, role=status.role)
        return status

    def _ask_about(self, status, host: str):
        """An unknown key: the panel asks about it (fingerprint and Trust button); the step waits."""
        self.asking = status
        self.render()
        self.message.show_info("Compare the fingerprint (paste your administrator's below), then click "
                               "'Trust this fingerprint'.")
        hop = ("the jump host " if status.role != "server" else "") + (status.host or host)
        return "pending", f"confirm {status.fingerprint}" + (f" ({hop})" if status.role != "server" else "")

    def check_host(self) -> None:
        host, port, _ = self._fields()
        jump, path = self._jump(), self._key_path()
        self.asking = None
        self.render()
        self._take_passphrase()  # behind a jump host, logging in there may need it

        def done(status):
            if status.state == "known":
                return f"known ({status.fingerprint})"
            return self._ask_about(status, host)  # not done until confirmed

        self._start("Host key", lambda: self._host_key_status(host, port, jump, path), done)

    def trust_host(self) -> None:
        host, port, _ = self._fields()
        jump, path = self._jump(), self._key_path()
        fp = self.pending_fingerprint
        if not fp:
            self.message.show_warning("Check the host key first.", "Click 'Check host key'.")
            return
        if self.given_fingerprint_box.value.strip() and self._show_comparison() != "match":
            self.message.show_warning("The fingerprint you pasted is not the one the server presents; nothing "
                                      "was trusted.", "Ask your administrator for the fingerprint again.")
            return

        def work():
            keys.trust_host_key(host, port, fp, self.known_hosts, jump=jump, key_path=path,
                                passphrase=self._passphrase)
            # Read again what is trusted now (behind a jump host: the next hop's key is asked for).
            return self._host_key_status(host, port, jump, path)

        def done(status):
            self.asking = None  # answered: the step shows the key
            self.render()
            if status.state != "known":
                return self._ask_about(status, host)
            return f"trusted {fp}"

        self._start("Host key", work, done)

    def copy_key(self) -> None:
        host, port, user = self._fields()
        password = self.password_box.value
        self.password_box.value = ""  # never left in a widget
        path, jump = self._key_path(), self._jump()
        self._start("Copy key", lambda: keys.copy_key(host, user, password, path, port=port,
                                                      known_hosts=self.known_hosts, jump=jump),
                    lambda added: "key added to authorized_keys" if added else "key was already there")

    def verify(self) -> None:
        host, port, user = self._fields()
        path, passphrase, jump = self._key_path(), self._take_passphrase(), self._jump()

        def work():
            r = keys.verify_key_login(host, user, path, port=port, passphrase=passphrase,
                                      known_hosts=self.known_hosts, jump=jump)
            if self.remote is not None:
                self.remote.close()
            self.remote = r
            return r

        self._start("Verify login", work, lambda r: f"logged in as {r.label} with the key alone")

    def register(self) -> None:
        host, port, user = self._fields()
        name, path, replace = self.name_box.value.strip(), self._key_path(), self.replace_box.value
        jump = self._jump()

        def work():
            self.server = servers.add(name, host, user, port=port, key=path, jump=jump, replace=replace)
            return self.server

        self._start("Register", work, lambda s: f"registered as {s.name!r}")

    def _remote(self):
        if self.remote is not None:
            return self.remote
        host, port, user = self._fields()
        server = servers.Server(self.name_box.value.strip() or "server", host, port, user, str(self._key_path()),
                                self._jump())
        self.remote = servers.resolve(server, known_hosts=self.known_hosts, passphrase=self._passphrase)
        return self.remote

    def check_readiness(self) -> None:
        self._take_passphrase()
        self.readiness_table = None  # a verdict about the server read now, or none at all
        self.render()

        def work():
            # The domain typed below counts before the server is prepared with it.
            df = readiness.check(self._remote(), known_hosts=self.known_hosts,
                                 domain=self.domain_box.value.strip() or None)
            self.readiness_table = df
            self.local_docker = localdocker.probe()  # this computer's side: which transfer modes it allows
            return df

        def done(df):
            self.render()
            failed = df[~df["ok"]]
            if len(failed):
                need = f"{plural(len(failed), 'check')} need{'s' if len(failed) == 1 else ''} attention"
                self.message.show_warning(f"{need}.",
                                          " ".join(failed["hint"].tolist()[:3]))
                return "failed", need
            return f"all checks passed; room for about {readiness.experiments_that_fit(df)} more experiments"

        self._start("Readiness", work, done)

    def settings(self) -> stack.StackSettings:
        if self._stack_settings is not None:
            return self._stack_settings
        return stack.StackSettings.for_images(self._images, email=self.email_box.value.strip(),
                                              domain=self.domain_box.value.strip(),
                                              acme_ca=self.acme_ca_box.value.strip(),
                                              acme_ca_root=self.acme_ca_root_box.value.strip())

    def prepare(self) -> None:
        self._take_passphrase()
        started = prepare_start(self)
        if started is None:
            return
        settings, reporter = started

        def work():
            self.prepare_result = stack.prepare(self._remote(), settings, reporter)
            return self.prepare_result

        def done(res):
            detail = "started PostgreSQL and Caddy" if res.changed else "already prepared; nothing changed"
            self.message.show_ok(f"Prepare server: {detail}. The server is ready: next, open deploy.ipynb to "
                                 "deploy an experiment.")
            return "done", detail

        self._start("Prepare server", work, done)


_VERDICTS = {"match": ("#188038", "✔ The same as the key the server presents: you can trust it."),
             "case": ("#c5221f", "✖ Not the same: the two differ in upper/lower case, which matters. "
                                 "Check with your administrator."),
             "different": ("#c5221f", "✖ Not the same key. Do not trust it; ask your administrator."),
             "malformed": ("#8a4b00", "This is not the shape of a fingerprint ('SHA256:' and 43 characters).")}


def _fingerprint_html(status, host: str) -> str:
    """The first-contact question about one host key: whose it is, its fingerprint, how to compare."""
    hop = ("the jump host " if status.role != "server" else "") + (status.host or host)
    behind = (" labdeploy reaches the server through it; the server's own key is asked for next."
              if status.role != "server" else "")
    return (f"<div class='labdeploy-setup-fingerprint'>First contact with <b>{html.escape(hop)}</b>. "
            f"Its {html.escape(status.key_type)} key fingerprint is <code>{html.escape(status.fingerprint)}"
            f"</code>. Compare it with the one its administrator gives you (on the {html.escape(status.role)}: "
            f"<code>ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub</code>), then trust it.{behind}</div>")


def _table_html(df) -> str:
    # Left-aligned, compact; the "what to do" column only when some check failed.
    cell = "style='text-align:left;padding:2px 10px 2px 0;vertical-align:top'"
    hints = bool((~df["ok"]).any())
    rows = []
    for row in df.itertuples():
        color = "#188038" if row.ok else "#c5221f"
        rows.append(f"<tr><td {cell}>{html.escape(row.check)}</td><td {cell}><span style='color:{color}'>"
                    f"{'✔' if row.ok else '✖'}</span></td><td {cell}>{html.escape(row.detail)}</td>"
                    + (f"<td {cell}>{html.escape(panel_words(getattr(row, 'remedy', None), row.hint)) if not row.ok else ''}"
                       "</td>" if hints else "") + "</tr>")
    head = "".join(f"<th {cell}>{h}</th>" for h in ("check", "ok", "detail") + (("what to do",) if hints else ()))
    return (f"<table class='labdeploy-readiness' style='border-collapse:collapse;margin:4px 0'><tr>{head}</tr>"
            + "".join(rows) + "</table>")
