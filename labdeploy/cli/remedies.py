"""How the command line words an error: its remedy as commands and flags, and its exit code.

The core's errors carry a stable `code` and, when the way out is an action in a front end, a
`Remedy` (key + args); see labdeploy.remedies. This module holds the CLI's words for every
remedy key and the exit code of every error code. Nothing here looks at an error's class
name or at the words of its message or hint.
"""

from __future__ import annotations

import textwrap

from ..errors import LabdeployError
from ..remedies import render

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_READY = 3
EXIT_NEEDS_CONFIRMATION = 4
EXIT_INTERRUPTED = 130

# Error code (or the start of one, up to a dot) -> exit code; the longest match wins, and
# every other code exits with 1. `labdeploy --help` lists this table.
EXIT_CODES: dict[str, int] = {
    "invalid": EXIT_USAGE,  # a name, path, option or setting that can't be used
    "cli.usage": EXIT_USAGE,
    "app.unknown": EXIT_USAGE,
    "server.unknown": EXIT_USAGE,
    "service.unknown": EXIT_USAGE,
    "cli.not_ready": EXIT_NOT_READY,
    "server.not_ready": EXIT_NOT_READY,
    "service.not_running": EXIT_NOT_READY,
    "service.crashing": EXIT_NOT_READY,
    "service.restart_timeout": EXIT_NOT_READY,
    "participants.working": EXIT_NOT_READY,
    "participants.wait_timeout": EXIT_NOT_READY,
    "cli.needs_confirmation": EXIT_NEEDS_CONFIRMATION,
    "confirmation.required": EXIT_NEEDS_CONFIRMATION,
    "ssh.host_key.unknown": EXIT_NEEDS_CONFIRMATION,
    "ssh.host_key.not_trusted": EXIT_NEEDS_CONFIRMATION,
}


def exit_code(code: str) -> int:
    """The exit code for an error code: its own entry, else its nearest parent's
    ("invalid.app_name" -> "invalid"), else 1."""
    parts = (code or "").split(".")
    for n in range(len(parts), 0, -1):
        found = EXIT_CODES.get(".".join(parts[:n]))
        if found is not None:
            return found
    return EXIT_FAILED


_MEANING = {
    EXIT_USAGE: "usage error: unknown option, bad name, unknown server or app",
    EXIT_NOT_READY: "not ready: a check failed or the app is not (fully) running",
    EXIT_NEEDS_CONFIRMATION: "needs confirmation or input a non-interactive run cannot give",
}


def exit_codes_help() -> str:
    """The "Exit codes:" section of `labdeploy --help`, from EXIT_CODES."""
    lines = ["\b", "Exit codes:", "  0    ok", "  1    the operation failed (the message says why and what to do)"]
    for exit_ in (EXIT_USAGE, EXIT_NOT_READY, EXIT_NEEDS_CONFIRMATION):
        lines.append(f"  {exit_:<4} {_MEANING[exit_]}")
        if exit_ == EXIT_NEEDS_CONFIRMATION:
            lines.append("       (pass --yes, --password-stdin or --trust-host-key SHA256:...)")
        codes = sorted(c + (".*" if c == "invalid" else "") for c, e in EXIT_CODES.items() if e == exit_)
        lines += textwrap.wrap("errors: " + ", ".join(codes), 92, initial_indent=" " * 7,
                               subsequent_indent=" " * 15, break_on_hyphens=False)
    lines.append("  130  interrupted (Ctrl-C)")
    lines.append("A failure's error code is in --json output ({\"error\": {\"code\": ...}}).")
    return "\n".join(lines)


# What this command-line user can do, for every remedy key of the core (and the CLI's own).
_BUG = "This is a bug in labdeploy (a wrong value reached the core from the command line); please report it."

CLI: dict[str, str] = {
    # --- confirmations
    "confirm": "Answer yes at the prompt, or add --yes.",
    "restore.confirm": ("Run `labdeploy restore` again with --into {app} --yes to replace its data (a backup "
                        "of it is taken first), or give a new name with --into."),
    "destroy.confirm": "Run `labdeploy destroy --app {app}` and answer yes (or add --yes).",
    "destroy.confirm.data": "Run `labdeploy destroy --app {app} --remove-data` and answer yes (or add --yes).",
    "lock.break.confirm": ("Only do this when no deploy of this app is running anywhere; then answer yes at the "
                           "prompt (or add --yes)."),
    "server.remove.confirm": "Run `labdeploy servers remove {server}` and answer yes (or add --yes).",
    # --- servers and SSH
    "server.register": "Register it first: `labdeploy servers add {server} --host HOST --user USER`.",
    "server.exists": "Choose another name, or add --replace to update it.",
    "ssh.host_key.confirm": (
        "Check this fingerprint with the server's administrator (or on the server: "
        "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then confirm it: "
        "`labdeploy servers check --trust-host-key {fingerprint}`."),
    "ssh.host_key.confirm.jump": (
        "Check this fingerprint with the jump host's administrator (or on the jump host: "
        "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then confirm it: "
        "`labdeploy servers check --trust-host-key {fingerprint}`; the key of the server behind it is asked for "
        "next (--trust-host-key can be given once for each)."),
    "ssh.host_key.changed": (
        "Usually the server was rebuilt or reinstalled. Ask its administrator whether that is so and what the "
        "new fingerprint is. Only then remove the old key deliberately (`ssh-keygen -R {name}`) and confirm "
        "the new one (`labdeploy servers check --trust-host-key SHA256:...`). If nobody changed the server, do "
        "not connect: someone may be intercepting the connection."),
    "ssh.key.make": ("Check the path of your SSH key (e.g. ~/.ssh/id_ed25519), or make a key first "
                     "(`ssh-keygen`; `labdeploy servers add ... --copy-key` makes one when there is none)."),
    "ssh.key.copy": ("Check the user name; copy your public key to the server: `labdeploy servers add NAME --host "
                     "{host} --user {user} --copy-key --replace` (or `ssh-copy-id`); or add your key to the "
                     "ssh-agent."),
    "ssh.login_method": ("Register the server with a key (`labdeploy servers add NAME --host HOST --user USER --key "
                         "PATH --replace`), or start an ssh-agent with your key added (`ssh-add`)."),
    "ssh.agent.start": ("Start an agent in this terminal (`eval $(ssh-agent)`, then `ssh-add`); on macOS and most "
                        "desktops one runs already. Without an agent, give the key's passphrase when connecting "
                        "instead."),
    # --- the server's shared stack
    "swarm.prepare": ("Prepare the Swarm's manager first (the data node's label and the ingress Caddy): the command "
                      "line has no step for it yet, the Python API's swarm module does."),
    "stack.prepare": "Prepare the server first: `labdeploy servers prepare` (it also starts the shared services again).",
    "stack.postgres.start": ("Start it again on the server: `cd ~/dallinger && docker compose up -d postgresql` (or "
                             "`labdeploy servers prepare`), then look at its logs."),
    "stack.postgres.check": ("Check that the shared PostgreSQL is running: `labdeploy servers check` shows the shared "
                             "services, and `labdeploy servers prepare` starts them again."),
    "lock.wait_or_break": (
        "Wait for it to finish and try again.{expires} If you are sure nothing is running (e.g. a laptop closed "
        "mid-deploy), break the lock deliberately: `labdeploy unlock --app {app}`."),
    "pooler.off": "Redeploy with --no-pooler, or report this as a bug.",
    "pooler.image": (
        "Give an image the server has or can pull, with pgbouncer and sh on its PATH: --pgbouncer-image IMAGE for "
        "this app, or `labdeploy servers prepare --pgbouncer-image IMAGE` for every app on the server. Or deploy "
        "with --no-pooler; the app's connections are then limited only by its role, and a busy app may see "
        "refused connections."),
    "docker.local": (
        "Install Docker on this computer and start it (Docker Desktop, or `sudo systemctl start docker` "
        "on Linux) and check that your user may use it; or deploy with --mode server-build, which builds "
        "the image on the server and needs no Docker here."),
    "registry.login_server": (
        "Log in on the server first: `labdeploy registry login {registry} --username USER --server-only`, or "
        "deploy with --registry-user USER --registry-password-stdin. Check the user name and password; for "
        "GitLab/GitHub use a personal access token with the read_registry (or packages) permission as the "
        "password."),
    # --- deploying
    "app.exists": ("To ship new code to it, add --update; to start a separate copy, choose another --app name; to "
                   "remove it, run `labdeploy destroy --app {app}` first."),
    "app.update_unknown": "Check the name (`labdeploy apps` lists them), or deploy it first (without --update).",
    "data.kept": ("Run the deploy again with --reuse-data to continue with that data (its participants count as "
                  "having taken part), or with --replace-data to delete it first (export it first: `labdeploy "
                  "export --app {app}`); or choose another --app name."),
    "deploy.capacity": "{advice} (or deploy with --capacity warn to go ahead anyway)",
    # --- watching and restarting
    "service.start": ("Start it again (`labdeploy restart --app {app} {service}`) and read its logs "
                      "(`labdeploy logs --app {app} --service {service}`)."),
    "service.crashing": ("Read its logs (`labdeploy logs --app {app} --service {service}`) for the error that makes "
                         "it crash, then start it again (`labdeploy restart --app {app} {service}`)."),
    "restart.services": "Name the services to restart, e.g. `labdeploy restart --app {app} web`.",
    "restart.timeout": ("Read the logs (`labdeploy logs --app {app}`) for the error; a service that keeps "
                        "restarting usually fails on start (configuration or database)."),
    "connections.restart_busiest": ("Restart the web/worker/clock of the app holding most connections: "
                                    "`labdeploy connections` shows it, `labdeploy restart --app NAME` restarts it."),
    "maintenance.paths": ("Give the app's entry paths (its first page and the request that creates a participant), "
                          "e.g. `labdeploy maintenance on --app NAME --path / --path /api/participants`."),
    "destroy.participants_working": ("Wait until they have finished (`labdeploy status --app {app} --participants` "
                                     "shows how many), then destroy again; or add --force to destroy while they "
                                     "work (they lose their session)."),
    "participants.wait_timeout": ("Try again at a quieter time or wait longer (--idle-timeout SECONDS); "
                                  "`labdeploy status --app {app} --participants` shows how many are working now."),
    # --- data out
    "export.before_destroy": ("Export first (`labdeploy export --app {app}`), then destroy; or destroy with "
                              "--final-export DIR (stops the app, exports, then deletes); or add --no-export-check "
                              "if the data really is not needed."),
    "export.again_before_destroy": ("Export again (`labdeploy export --app {app}`), then destroy; or destroy with "
                                    "--final-export DIR; or add --no-export-check if the new rows are not needed."),
    "destroy.final_export": ("Add --remove-data to destroy the app with its data; to keep a copy of a running app "
                             "instead, export it: `labdeploy export --app {app}`."),
    "export.tables": "Leave out --table to export every table, or check the table names.",
    "file.overwrite": "Choose another name, or add --overwrite to replace it deliberately.",
    "query.params": "Give a value for each of {names}.",
    "query.one_select": "Send one SELECT without ';' or backslashes.",
    # --- only a wrong call from Python gets these
    "api.app_first": _BUG,
    "api.server_argument": _BUG,
    "database.scram_verifier": _BUG,
    "registry.temporary_login": _BUG,
}

PLACEHOLDERS = {"app": "NAME", "server": "NAME", "service": "web", "registry": "REGISTRY", "expires": ""}


def hint(exc: LabdeployError, **context) -> str:
    """What to do, in the CLI's words: the error's remedy (its args; missing ones from the
    command's own `context`, e.g. app=--app), else its plain hint."""
    return render(CLI, exc.remedy, context=context, placeholders=PLACEHOLDERS, fallback=exc.plain_hint)


def words(remedy, fallback: str = "", **context) -> str:
    """A remedy carried by data rather than an error (a readiness row), in the CLI's words."""
    return render(CLI, remedy, context=context, placeholders=PLACEHOLDERS, fallback=fallback)


def readiness_table(df):
    """The readiness table as the CLI shows it: hints in its words, no remedy objects."""
    out = df.copy()
    if "remedy" in out:
        out["hint"] = [words(r, h) for r, h in zip(out["remedy"], out["hint"])]
        out = out.drop(columns=["remedy"])
    return out
