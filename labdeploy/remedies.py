"""What to do after an error, as a key each front end words its own way; the API's words.

An error (labdeploy.errors) says what went wrong in front-end-neutral words (its message) and
carries a stable `code` ("app.unknown", "ssh.host_key.changed"). When the way out is an
action the researcher takes *in* a front end (prepare the server, export first, pass
--overwrite / overwrite=True, press Restart…), the error also carries a `Remedy`: a key and
the values its words need (app, server, service, ...). Each front end holds its own words
for every key and renders them:

* the Python API / notebook cells: `API` below, which is what `exc.hint` and `str(exc)` show;
* the command line: `labdeploy.cli.remedies.CLI` (commands and flags);
* the panels: `labdeploy.widgets.remedies.PANELS` (panels and buttons).

Advice that reads the same everywhere ("Check the host name and your network") stays a plain
hint at the raise; tests/test_remedies_unit.py checks that such hints name no Python call,
no command-line flag and no panel, and that every key has words in every front end.

Why the words live with each front end rather than in one table here: the core would
otherwise name the CLI's flags and the panels' buttons, which belong to the layers above it
(a renamed flag would be an edit in the ground layer). The core keeps only its own words.
"""

from __future__ import annotations

from typing import Mapping, Optional

from .redaction import redact


class Remedy:
    """A remedy key and the values its words need, e.g. Remedy("stack.prepare", server="lab").

    Values are kept as text, redacted like every error message."""

    __slots__ = ("key", "args")

    def __init__(self, key: str, **args: object) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "args", {k: redact(str(v)) for k, v in args.items() if v is not None})

    def __setattr__(self, name, value):  # a remedy, like the error that carries it, is fixed once made
        raise AttributeError("Remedy is immutable")

    def __reduce__(self):
        return _remedy, (self.key, dict(self.args))

    def __eq__(self, other) -> bool:
        return isinstance(other, Remedy) and (self.key, self.args) == (other.key, other.args)

    def __hash__(self) -> int:
        return hash((self.key, tuple(sorted(self.args.items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"Remedy({self.key!r}{', ' + args if args else ''})"


def _remedy(key: str, args: dict) -> Remedy:
    return Remedy(key, **args)


class _Filled(dict):
    def __init__(self, values: Mapping[str, str], placeholders: Mapping[str, str]) -> None:
        super().__init__(values)
        self.placeholders = placeholders

    def __missing__(self, key: str) -> str:
        return self.placeholders.get(key, key.upper())


def render(words: Mapping[str, str], remedy: Optional[Remedy], *, context: Optional[Mapping[str, object]] = None,
           placeholders: Mapping[str, str] = {}, fallback: str = "") -> str:
    """`remedy` in one front end's `words` (key -> template using the remedy's args).

    A value the raise did not know is taken from `context` (the front end's own: the CLI
    command's --app, the panel's chosen app), else the front end's placeholder ("NAME").
    Without a remedy, or without words for its key, `fallback` (the error's plain hint).
    The text is redacted, like the message."""
    if remedy is None or remedy.key not in words:
        return redact(fallback) or ""
    values = {k: str(v) for k, v in (context or {}).items() if v not in (None, "", ())}
    values.update(remedy.args)
    return redact(words[remedy.key].format_map(_Filled(values, placeholders)))


# In a notebook or a script: Python calls. Keys are grouped by subject; `{name}` are the
# remedy's args. (The CLI's and the panels' words for the same keys live with them.)
API: dict[str, str] = {
    # --- confirmations
    "confirm": "Call {call}(..., confirm=True) to go ahead.",
    "restore.confirm": ("Call backup.restore(..., into='{app}', confirm=True) to replace its data (a backup "
                        "of it is taken first), or restore into a new name with into=."),
    "destroy.confirm": "Call destroy('{app}', server, confirm=True) to go ahead.",
    "destroy.confirm.data": "Call destroy('{app}', server, confirm=True, remove_data=True) to go ahead.",
    "lock.break.confirm": "Only do this when no deploy of this app is running anywhere; then pass confirm=True.",
    "server.remove.confirm": "Call remove('{server}', confirm=True).",
    # --- servers and SSH
    "server.register": "Register it first: labdeploy.ssh.servers.add('{server}', host, user).",
    "server.exists": "Choose another name, or pass replace=True to update it.",
    "ssh.host_key.confirm": (
        "Check this fingerprint with the server's administrator (or on the server: "
        "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then trust it: "
        "remote.trust_host_key('{fingerprint}')."),
    "ssh.host_key.confirm.jump": (
        "Check this fingerprint with the jump host's administrator (or on the jump host: "
        "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then trust it: "
        "remote.trust_host_key('{fingerprint}'); the key of the server behind it is asked for next."),
    "ssh.host_key.changed": (
        "Usually the server was rebuilt or reinstalled. Ask its administrator whether that is so and what the "
        "new fingerprint is. Only then remove the old key deliberately (remote.forget_host_key(), or "
        "`ssh-keygen -R {name}`) and confirm the new one. If nobody changed the server, do not connect: "
        "someone may be intercepting the connection."),
    "ssh.key.make": ("Check the path of your SSH key (e.g. ~/.ssh/id_ed25519), or make a key first: "
                     "labdeploy.ssh.keys.generate_key() (or `ssh-keygen`)."),
    "ssh.key.copy": ("Check the user name; copy your public key to the server: "
                     "labdeploy.ssh.keys.copy_key('{host}', '{user}', password) (or `ssh-copy-id`); or add your "
                     "key to the ssh-agent."),
    "ssh.login_method": ("Give a key file (key_filename=...), start an ssh-agent with your key added (`ssh-add`), "
                         "or give the password."),
    "ssh.agent.start": (
        "Start an agent before starting Jupyter (`eval $(ssh-agent)` in the terminal you start it from; on macOS "
        "and most desktops one runs already), or use labdeploy.ssh.keys.start_agent() for this session. Without "
        "an agent, give the key's passphrase when connecting instead."),
    # --- the server's shared stack
    "swarm.prepare": ("Prepare the Swarm's manager first: labdeploy.app.swarm.prepare(server, settings) labels the "
                      "data node and starts the one ingress Caddy (safe to run again)."),
    "stack.prepare": ("Prepare the server first: labdeploy.server.stack.prepare(remote) (it also starts the shared "
                      "services again)."),
    "stack.postgres.start": ("Start it again on the server: `cd ~/dallinger && docker compose up -d postgresql` (or "
                             "labdeploy.server.stack.prepare(remote)), then look at its logs."),
    "stack.postgres.check": ("Check that the shared PostgreSQL is running: labdeploy.server.readiness.check(server) "
                             "shows the shared services, and labdeploy.server.stack.prepare(remote) starts them "
                             "again."),
    "lock.wait_or_break": (
        "Wait for it to finish and try again.{expires} If you are sure nothing is running (e.g. a laptop closed "
        "mid-deploy), break the lock deliberately: labdeploy.server.locks.break_lock(server, '{app}', "
        "confirm=True)."),
    "pooler.off": "Redeploy without the pooler (pooler=False), or report this as a bug.",
    "pooler.image": (
        "Give an image the server has or can pull, with pgbouncer and sh on its PATH: pgbouncer_image=... for "
        "this app, or StackSettings(pgbouncer_image=...) for every app on the server. Or deploy without the "
        "pooler: pooler=False; the app's connections are then limited only by its role, and a busy app may see "
        "refused connections."),
    "docker.local": (
        "Install Docker on this computer and start it (Docker Desktop, or `sudo systemctl start docker` "
        "on Linux) and check that your user may use it; or deploy with mode='server-build', which builds "
        "the image on the server and needs no Docker here."),
    "registry.login_server": (
        "Log in on the server first: labdeploy.images.registry.login_server(remote, credentials), or pass "
        "credentials= to the deploy. Check the user name and password; for GitLab/GitHub use a personal access "
        "token with the read_registry (or packages) permission as the password."),
    # --- deploying (labdeploy.app.deploy)
    "app.exists": ("To ship new code to it, use update(); to start a separate copy, choose another name; to "
                   "remove it, destroy('{app}', server) first."),
    "app.update_unknown": "Check the name (labdeploy.apps.apps(server) lists them), or deploy() it first.",
    "data.kept": (
        "Deploy again choosing what happens to it: existing_data='reuse' continues with that data, so its "
        "participants count as having taken part; existing_data='replace' deletes it first and needs a fresh "
        "export of it (export it first). Or deploy under another name."),
    "deploy.capacity": "{advice} (or deploy with capacity='warn' to go ahead anyway)",
    # --- watching and restarting
    "service.start": ("Start it again (labdeploy.monitor.restart('{app}', server, ['{service}'])) and read its logs "
                      "(labdeploy.monitor.logs('{app}', server, '{service}'))."),
    "service.crashing": ("Read its logs (labdeploy.monitor.logs('{app}', server, '{service}')) for the error that "
                         "makes it crash, then start it again (labdeploy.monitor.restart('{app}', server, "
                         "['{service}']))."),
    "restart.services": "Name the services to restart, e.g. labdeploy.monitor.restart('{app}', server, ['web']).",
    "restart.timeout": ("Read their logs (labdeploy.monitor.logs('{app}', server, service)) for the error; a "
                        "service that keeps restarting usually fails on start (configuration or database)."),
    "connections.restart_busiest": (
        "Restart the web/worker/clock of the app holding most connections: labdeploy.monitor.pg_summary(server) "
        "shows it, labdeploy.monitor.restart(app, server) restarts it."),
    "maintenance.paths": ("Give the app's entry paths (its first page and the request that creates a participant), "
                          "e.g. labdeploy.maintenance.maintenance(app, server, paths=['/', '/api/participants'])."),
    "destroy.participants_working": (
        "Wait until they have finished (labdeploy.monitor.wait_idle('{app}', server) waits for it), then destroy "
        "again; or pass force=True to destroy while they work (they lose their session)."),
    "participants.wait_timeout": (
        "Try again at a quieter time or wait longer (a larger idle_timeout); "
        "labdeploy.monitor.working('{app}', server) shows how many are working now."),
    # --- data out
    "export.before_destroy": (
        "Export first (labdeploy.export.export('{app}', server, save_to='exports')), then destroy; or destroy "
        "with final_export='exports' (stops the app, exports, then deletes); or pass export_check=False if the "
        "data really is not needed."),
    "export.again_before_destroy": (
        "Export again (labdeploy.export.export('{app}', server, save_to='exports')), then destroy; or destroy "
        "with final_export='exports'; or pass export_check=False if the new rows are not needed."),
    "destroy.final_export": ("Add remove_data=True to destroy the app with its data; to keep a copy of a running "
                             "app instead, export it: labdeploy.export.export('{app}', server, save_to='exports')."),
    "export.tables": ("Leave `tables` empty to export every table, or check the names "
                      "(labdeploy.export.table_counts('{app}', server) lists them)."),
    "file.overwrite": "Choose another name, or pass overwrite=True to replace it deliberately.",
    "query.params": "Pass params={{{given}}}.",
    "query.one_select": ("Send one SELECT without ';' or '\\' (use chr(92) for a backslash in a string); for an "
                         "app's data use labdeploy.export.query()."),
    # --- only a wrong call from Python gets these (the CLI and the panels never pass such values)
    "api.app_first": "Call {call}('my-app', server, ...).",
    "api.server_argument": "Pass a registered server's name, a labdeploy.ssh.servers.Server or a Remote.",
    "database.scram_verifier": "Use database.scram_verifier(password).",
    "registry.temporary_login": "Pass docker_config= (it is deleted after use), or leave temporary off.",
}

API_PLACEHOLDERS = {"app": "APP", "server": "server", "service": "web"}


def api_hint(remedy: Optional[Remedy], fallback: str = "") -> str:
    """The remedy in the Python API's words (what `exc.hint` shows)."""
    return render(API, remedy, placeholders=API_PLACEHOLDERS, fallback=fallback)
