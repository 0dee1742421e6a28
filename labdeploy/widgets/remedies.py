"""How the panels word an error's remedy: panels and buttons (see labdeploy.remedies).

Every way out is a button or a field of a panel; none is a Python call or a labdeploy/docker
command (tests/test_remedies_unit.py checks). Only what is done outside labdeploy altogether
(reading a fingerprint on the server, starting an ssh-agent before Jupyter) names a command, in
backticks.
"""

from __future__ import annotations

from ..errors import LabdeployError
from ..remedies import render

SETUP = "the Set up a server panel"
_BUG = "This is a bug in labdeploy (a panel passed a wrong value); please report it."

PANELS: dict[str, str] = {
    # --- confirmations
    "confirm": "Confirm in the panel, then click again.",
    "restore.confirm": ("Tick 'replace the data of an existing app' in the Backups section and click Restore "
                        "again, or type a new app name."),
    "destroy.confirm": "Click Destroy… in the Deploy panel, then Yes, destroy.",
    "destroy.confirm.data": "Tick 'also delete its data', click Destroy… in the Deploy panel, then Yes, destroy.",
    "lock.break.confirm": ("Only do this when no deploy of this app is running anywhere; then click Yes, break "
                           "the lock."),
    "server.remove.confirm": f"Click Remove server… in {SETUP} with {{server}} as Server name, then Yes, remove.",
    # --- servers and SSH
    "server.register": f"Register it first: Register server in {SETUP}.",
    "server.exists": "Choose another name, or tick 'Replace a registered server of the same name'.",
    "ssh.host_key.confirm": (
        "Check this fingerprint with the server's administrator (or on the server: "
        f"`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then click Trust this fingerprint in {SETUP}."),
    "ssh.host_key.confirm.jump": (
        "Check this fingerprint with the jump host's administrator (or on the jump host: "
        f"`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then click Trust this fingerprint in {SETUP}; "
        "the key of the server behind it is asked for next."),
    "ssh.host_key.changed": (
        "Usually the server was rebuilt or reinstalled. Ask its administrator whether that is so and what the "
        "new fingerprint is. Only then remove the old key deliberately (`ssh-keygen -R {name}` in a terminal) "
        "and confirm the new one (Check host key, then Trust this fingerprint). If nobody changed the server, "
        "do not connect: someone may be intercepting the connection."),
    "ssh.key.make": ("Check the path of your SSH key (e.g. ~/.ssh/id_ed25519), or make one first: Create new key "
                     f"in {SETUP}."),
    "ssh.key.copy": (f"Check the user name; copy your public key to the server (Copy key to server in {SETUP}); "
                     "or add your key to the ssh-agent (Add key to ssh-agent)."),
    "ssh.login_method": f"Choose a key (Use this key in {SETUP}), or add it to an ssh-agent (Add key to ssh-agent).",
    "ssh.agent.start": (
        "Start an agent before starting Jupyter (`eval $(ssh-agent)` in the terminal you start it from; on macOS "
        "and most desktops one runs already). Without an agent, give the key's passphrase when connecting "
        "instead."),
    # --- the server's shared stack
    "swarm.prepare": (f"Prepare the Swarm's manager first: Prepare as a Swarm manager in {SETUP}, with the "
                      "manager's address, labels the data node and starts the ingress Caddy."),
    "stack.prepare": f"Prepare the server first: Prepare server in {SETUP} (it also starts the shared services again).",
    "stack.postgres.start": (f"Start it again: Prepare server in {SETUP} starts the shared services; if it stops "
                             "again, Check readiness there says what is wrong."),
    "stack.postgres.check": (f"Check that the shared PostgreSQL is running: Check readiness in {SETUP} shows the "
                             "shared services, and Prepare server starts them again."),
    "lock.wait_or_break": (
        "Wait for it to finish and try again.{expires} If you are sure nothing is running (e.g. a laptop closed "
        "mid-deploy), break the lock deliberately: Break the lock… in the Deploy panel, then Yes, break the lock."),
    "pooler.off": ("Report this as a bug; meanwhile choose Pooler: off under More options in the Deploy panel and "
                   "deploy again."),
    "pooler.image": (
        "Give an image the server has or can pull, with pgbouncer and sh on its PATH, in PgBouncer image under "
        "More options in the Deploy panel; or choose Pooler: off there (the app's connections are then limited "
        "only by its role, and a busy app may see refused connections)."),
    "docker.local": (
        "Install Docker on this computer and start it (Docker Desktop, or `sudo systemctl start docker` "
        "on Linux) and check that your user may use it; or choose server-build as the Transfer mode in the "
        "Deploy panel, which builds the image on the server and needs no Docker here."),
    "registry.login_server": (
        "Log in on the server first: Log in on the server in the Images and registry panel. Check the user name "
        "and password; for GitLab/GitHub use a personal access token with the read_registry (or packages) "
        "permission as the password."),
    # --- deploying
    "app.exists": ("To ship new code to it, click Update; to start a separate copy, choose another app name; to "
                   "remove it, click Destroy… first."),
    "app.update_unknown": "Check the name (List apps shows them), or click Deploy to deploy it first.",
    "data.kept": ("Click Reuse that data to continue with it (its participants count as having taken part), or "
                  "Replace it (needs a fresh export) to delete it first; or choose another app name."),
    "deploy.capacity": "{advice}",
    # --- watching and restarting
    "service.start": ("Start it again (Restart… in the Monitor panel, with {service} chosen) and read its logs "
                      "(Show logs)."),
    "service.crashing": ("Read its logs (Show logs in the Monitor panel, service {service}) for the error that makes "
                         "it crash, then start it again (Restart…)."),
    "restart.services": "Choose the services to restart (Restart… in the Monitor panel).",
    "restart.timeout": ("Read the logs (Show logs in the Monitor panel) for the error; a service that keeps "
                        "restarting usually fails on start (configuration or database)."),
    "connections.restart_busiest": ("Restart the web/worker/clock of the app holding most connections: the Monitor "
                                    "panel shows it; Restart… restarts it."),
    "maintenance.paths": ("Type the app's entry paths (its first page and the request that creates a participant) "
                          "in the Monitor panel's maintenance box, e.g. / /api/participants."),
    "destroy.participants_working": ("Wait until they have finished (the Monitor panel's status shows working "
                                     "participants), then destroy again; to destroy while they work, tick 'destroy "
                                     "even though participants are working' under Destroy… in the Deploy panel "
                                     "(they lose their session)."),
    "participants.wait_timeout": ("Try again at a quieter time; the Monitor panel's status shows how many "
                                  "participants are working now."),
    # --- data out
    "export.before_destroy": ("Export first (Export in the Export data panel), then destroy; or use Export, then "
                              "destroy there (stops the app, exports, then deletes)."),
    "export.again_before_destroy": ("Export again (Export in the Export data panel), then destroy; or use Export, "
                                    "then destroy."),
    "destroy.final_export": ("Use Export, then destroy in the Export data panel to destroy the app with its data; "
                             "to keep a copy of a running app instead, use Export there."),
    "export.tables": "Select tables from the panel's list (it shows the app's tables), or select them all.",
    "file.overwrite": "Choose another folder in Save to, or move the old file away.",
    "query.params": "Give a value for each of {names}.",
    "query.one_select": "Send one SELECT without ';' or backslashes.",
    # --- only a wrong call from Python gets these
    "api.app_first": _BUG,
    "api.server_argument": _BUG,
    "database.scram_verifier": _BUG,
    "registry.temporary_login": _BUG,
}

PLACEHOLDERS = {"app": "the app", "server": "the server", "service": "the service", "registry": "the registry",
                "expires": ""}


def hint(exc: BaseException, **context) -> str:
    """What to do, in the panels' words: the error's remedy (missing args from the panel's
    own `context`, e.g. app=the chosen app), else its plain hint."""
    if not isinstance(exc, LabdeployError):
        return ""
    return render(PANELS, exc.remedy, context=context, placeholders=PLACEHOLDERS, fallback=exc.plain_hint)


def words(remedy, fallback: str = "", **context) -> str:
    """A remedy carried by data rather than an error (a readiness row), in the panels' words."""
    return render(PANELS, remedy, context=context, placeholders=PLACEHOLDERS, fallback=fallback)
