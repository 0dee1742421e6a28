"""App commands: deploy, apps, status, logs, exec, restart, connections, export, destroy."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import click

from ..errors import ValidationError
from . import _swarm, _ui
from ._app import (CONTEXT_SETTINGS, app_option, cli, common_options, core, open_server, pick_server, server_option, service_option, with_hints, yes_option, _check_domain, _check_service)
from ._ui import STATE, NotReady, UsageProblem

TRANSFER_MODES = ("server-build", "ssh-copy", "registry")


def _pairs(values, what: str) -> dict:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageProblem(f"{what} {item!r} is not KEY=VALUE.", f"Write it as {what} KEY=VALUE.")
        out[key] = value
    return out


# ------------------------------------------------------------------ deploy


@cli.command("deploy", context_settings=CONTEXT_SETTINGS)
@app_option()
@click.argument("experiment", default=".", type=click.Path(file_okay=False))
@server_option
@click.option("--update", is_flag=True, help="Ship new code to an app that is deployed already (its data is kept; "
                                             "on a failure the previous version keeps running).")
@click.option("--mode", type=click.Choice(TRANSFER_MODES), default="server-build", show_default=True,
              help="How the image gets to the server: build there from changed files (server-build, needs no "
                   "Docker here), build here and copy over SSH (ssh-copy), or push/pull through a registry "
                   "(registry); the last two need Docker on this computer.")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Docker build argument.")
@click.option("--config", "config", multiple=True, metavar="KEY=VALUE",
              help="Experiment config value, given to the app as an environment variable.")
@click.option("--secret-env", "secret_env", multiple=True, metavar="KEY",
              help="Secret config value, read from this computer's environment variable KEY (never from the "
                   "command line); stored on the server in a 0600 file.")
@click.option("--domain", default=None, callback=_check_domain,
              help="Serve the app under this domain instead of the server's.")
@click.option("--redis-image", default=None, help="Redis image for the app (default redis:7).")
@click.option("--dockerfile", default="Dockerfile", show_default=True, metavar="NAME|generated",
              help="Dockerfile in the experiment folder. 'generated': labdeploy's own Dockerfile for a "
                   "Dallinger/PsyNet experiment, even when the folder has one (PsyNet's stock template is "
                   "replaced by it anyway; other Dockerfiles are used as they are).")
@click.option("--health-path", default=None, help="Path that must answer 200 after the launch (default /).")
@click.option("--connection-limit", type=int, default=None, help="Most database connections the app may open.")
@click.option("--memory-limit", default=None, metavar="SIZE",
              help="The app's memory, shared by its web, worker and clock processes, e.g. 4g (default: as "
                   "before; at first 5 GB, the rule of thumb per experiment).")
@click.option("--cpu-limit", type=float, default=None, metavar="CPUS",
              help="CPUs each of the app's processes may use, e.g. 1.5 (default: as before; at first the "
                   "server's CPUs in proportion to the app's memory, at least one).")
@click.option("--pooler/--no-pooler", default=None,
              help="Reach PostgreSQL through the app's own PgBouncer, which keeps the app within its connection "
                   "limit under load (default: as before; a new Dallinger/PsyNet app gets it, an app with its "
                   "own Procfile does not).")
@click.option("--pgbouncer-image", default=None,
              help="PgBouncer image for the app's pooler (default: the server's setting, else "
                   "ghcr.io/cloudnative-pg/pgbouncer).")
@click.option("--capacity", type=click.Choice(("warn", "refuse", "ignore")), default=None,
              help="When the server's memory has no room for another experiment: warn (default), refuse, ignore.")
@click.option("--start-timeout", type=float, default=None, help="Seconds to wait for the web process (default 120).")
@click.option("--launch/--no-launch", default=None,
              help="POST /launch after starting (default: on for a deploy, off for --update).")
@click.option("--image-base-name", default=None, metavar="REGISTRY/PATH",
              help="Image name prefix (default: docker_image_base_name in ~/.dallingerconfig).")
@click.option("--registry-user", default=None,
              help="With --mode registry: log in to the registry as this user here and on the server for "
                   "this deploy (password prompted, or --registry-password-stdin). Default: the logins "
                   "Docker already has.")
@click.option("--registry-password-stdin", is_flag=True, help="Read the registry password from stdin.")
@click.option("--logout-after-pull", is_flag=True,
              help="With --registry-user: the server's login lasts for this pull only (kept in a private "
                   "folder, deleted afterwards), so the server stores no registry password.")
@click.option("--unset-secret", "unset_secrets", multiple=True, metavar="KEY",
              help="Remove this secret from the app (secrets otherwise stay across updates).")
@click.option("--reuse-data", "existing_data", flag_value="reuse", default=None,
              help="The server holds data of an earlier app of this name (destroyed, data kept): continue with "
                   "it (its participants count as having taken part).")
@click.option("--replace-data", "existing_data", flag_value="replace",
              help="The server holds data of an earlier app of this name: delete it first (needs a fresh "
                   "export of it, as destroy --remove-data does).")
@click.option("--show-password", is_flag=True,
              help="Print the dashboard password even when the output is not a terminal (it is masked in "
                   "pipes, logs and --json otherwise).")
@click.option("--archive", "archive", default=None, metavar="FILE", type=click.Path(dir_okay=False),
              help="Start a new app from this data: an export zip (labdeploy's or Dallinger's) or a pulled backup "
                   ".dump, loaded before launch (like Dallinger's --archive).")
@click.option("--engine", type=click.Choice(("compose", "swarm")), default="compose", show_default=True,
              help="compose: the app on this one server; swarm: a stack on the Docker Swarm whose manager the "
                   "server is (replicas from num_dynos_web / num_dynos_worker; needs --mode registry).")
@click.option("--wait-idle", is_flag=True,
              help="With --update: wait until no participant is working before replacing anything.")
@click.option("--idle-timeout", type=float, default=None, metavar="SECONDS",
              help="The longest --wait-idle waits (default 600); then the update stops, nothing changed.")
@common_options
@with_hints
def deploy_cmd(app, experiment, server, update, mode, build_args, config, secret_env, domain, redis_image,
               dockerfile, health_path, connection_limit, capacity, start_timeout, launch, image_base_name,
               registry_user, registry_password_stdin, logout_after_pull, unset_secrets, existing_data,
               show_password, pooler, pgbouncer_image, archive, wait_idle, idle_timeout, memory_limit, cpu_limit, engine):
    """Deploy the experiment in EXPERIMENT (default: this folder) as app NAME
    (like `psynet deploy ssh --app NAME`).

    Eight steps with progress: preflight, lock, image, database, start, route, launch, record.
    Prints the app's URL and its dashboard login. A failed --update rolls back.

    \b
    Examples:
      labdeploy deploy --app stroop-pilot ./stroop
      labdeploy deploy --app stroop-pilot --update
      labdeploy deploy --app stroop-pilot --mode ssh-copy --build-arg BASE_IMAGE=python:3.11-slim
      API_TOKEN=... labdeploy deploy --app stroop-pilot --secret-env API_TOKEN --json
      labdeploy deploy --app stroop-pilot --update --show-password
      labdeploy deploy --app stroop-2 ./stroop --archive exports/stroop-pilot.zip
      labdeploy deploy --app stroop-3 ./stroop --server auto     # the registered server with the most room
      printf '%s\\n' "$TOKEN" | labdeploy deploy --app stroop-pilot --mode registry \\
          --image-base-name registry.gitlab.com/lab/images --registry-user alice --registry-password-stdin \\
          --logout-after-pull
    """
    deploy = core("deploy")
    experiment = Path(experiment)
    if not experiment.is_dir():
        raise UsageProblem(f"The experiment folder {experiment} does not exist.",
                           "Give the folder that holds the experiment's Dockerfile.")
    secrets = _secrets_from_environment(secret_env)
    kwargs = {"mode": mode, "build_args": _pairs(build_args, "--build-arg") or None,
              "config": _pairs(config, "--config") or None, "secrets": secrets or None,
              "dockerfile": dockerfile, "unset_secrets": list(unset_secrets), "existing_data": existing_data,
              "archive": archive, "engine": engine}
    for key, value in (("domain", domain), ("redis_image", redis_image), ("health_path", health_path),
                       ("connection_limit", connection_limit), ("launch", launch), ("capacity", capacity),
                       ("start_timeout", start_timeout), ("pooler", pooler), ("pgbouncer_image", pgbouncer_image),
                       ("idle_timeout", idle_timeout), ("memory_limit", memory_limit), ("cpu_limit", cpu_limit)):
        if value is not None:
            kwargs[key] = value
    if image_base_name is not None:
        kwargs["base_name"] = image_base_name
    if (wait_idle or idle_timeout is not None) and not update:
        raise UsageProblem("--wait-idle and --idle-timeout are for --update (a new app has no participants yet).",
                           "Add --update, or leave them out.")
    kwargs["wait_idle"] = wait_idle
    if (registry_user or registry_password_stdin) and mode != "registry":
        raise UsageProblem("--registry-user and --registry-password-stdin are for --mode registry.",
                           "Add --mode registry, or leave them out.")
    if registry_password_stdin and not registry_user:
        raise UsageProblem("--registry-password-stdin needs --registry-user.", "Add --registry-user USER.")
    if logout_after_pull and not registry_user:
        raise UsageProblem("--logout-after-pull needs --registry-user (a login of this deploy's own).",
                           "Add --registry-user USER, or leave --logout-after-pull out.")
    with _ui.usage_errors(ValidationError):  # every input checked before anything connects
        options = deploy.DeployOptions.of(**kwargs)
        deploy.check_inputs(experiment, app, options)
    placement = None
    if server == "auto" and not update:  # the registered server with the most room
        with _ui.usage_errors(ValidationError):
            core("fleet").check_server_argument(server)
        placement = core("fleet").place()
        _ui.info(f"Placed on {placement.reason}")
        server = placement.server
    name = pick_server(server)
    creds = None
    if registry_user:
        creds = _registry_credentials(image_base_name, registry_user, registry_password_stdin)
        options = deploy.DeployOptions.of(options, credentials=creds, logout_after_pull=logout_after_pull)
    remote = open_server(name)
    fn = deploy.update if update else deploy.deploy
    with _ui.reporting() as reporter:
        if creds is not None:
            # for the push, this process only
            core("registry").login_local(creds, reporter=_ui.without_warnings(reporter))
        result = fn(experiment, app, remote, reporter=reporter, options=options)
    if placement is not None:
        result.placement = placement.reason
    _show_deployed(result, name, show_password)


def _secrets_from_environment(keys) -> dict:
    """--secret-env KEY: the value from this process's environment (never a command-line argument)."""
    secrets = {}
    for key in keys:
        if key not in os.environ:
            raise UsageProblem(f"--secret-env {key}: the environment variable {key} is not set.",
                               f"Set it first, e.g. `read -s {key}; export {key}`.")
        secrets[key] = os.environ[key]
    return secrets


def _registry_credentials(image_base_name, registry_user: str, from_stdin: bool):
    """The registry login of this deploy (--registry-user): the registry from the image name."""
    images = core("images")
    base = image_base_name or core("dallingerconfig").get_base_name() or ""
    address = images.registry_of(base) if base else None
    if not address:
        raise UsageProblem("The registry mode needs an image name that starts with a registry "
                           f"(now {base or 'none'!r}).",
                           "Pass --image-base-name REGISTRY/PATH, or set docker_image_base_name in "
                           "~/.dallingerconfig (`labdeploy registry login --image-base-name ...`).")
    return _ui.read_credentials(address, registry_user, from_stdin=from_stdin, flag="--registry-password-stdin")


def _show_deployed(result, name: str, show_password: bool) -> None:
    _ui.ok(f"{result.app} ({result.version}) is live at {result.url}")
    if getattr(result, "engine", "") == "swarm":  # no dashboard: the stack's own summary
        _ui.output({"app": result.app, "server": name, "url": result.url, "version": result.version,
                    "image": result.image, "engine": "swarm", "replicas": result.replicas,
                    "data_node": result.data_node, "duration_s": result.duration_s})
        return
    # Shown to a person at a terminal; masked in logs and pipes unless asked for.
    reveal = show_password or (sys.stdout.isatty() and not STATE.json)
    if not reveal:
        _ui.info("The dashboard password is masked; pass --show-password to print it.")
    data = {"app": result.app, "server": name, "url": result.url, "version": result.version,
            "image": result.image, "image_id": result.image_id, "dashboard_url": result.dashboard_url,
            "dashboard_user": result.dashboard_user,
            "dashboard_password": result.dashboard_password.reveal() if reveal else str(result.dashboard_password),
            "operation": result.operation, "duration_s": result.duration_s, "warnings": result.warnings,
            "secret_names": result.secret_names, "data": result.data, "placement": result.placement}

    def render(d):
        _ui.output({"app": d["app"], "url": d["url"], "version": d["version"], "dashboard": d["dashboard_url"],
                    "dashboard user": d["dashboard_user"], "dashboard password": d["dashboard_password"],
                    "secrets": ", ".join(d["secret_names"]) or "none", "data": d["data"],
                    "took": f"{d['duration_s']:.1f} s"})

    _ui.output(data, render=render)


# ------------------------------------------------------------------ apps / status


@cli.command("apps", context_settings=CONTEXT_SETTINGS)
@server_option
@common_options
def apps_cmd(server):
    """List the apps on the server: state, version, URL, when and by whom deployed.

    \b
    Examples:
      labdeploy apps
      labdeploy apps --server lab --json
    """
    apps = core("apps")
    remote = open_server(server)
    df = apps.apps(remote)
    _ui.output(df, render=lambda d: _ui.table(d, columns=["app", "state", "version", "url", "deployed_at", "who",
                                                          "running", "locked"],
                                              empty="No apps on this server yet."))


def _limits_text(memory, cpus) -> str:
    """'2.5 GB, 1 CPU' for a container's limits ('' when it has none)."""
    parts = []
    if str(memory) not in ("<NA>", "nan", "None"):
        parts.append(f"{int(memory) / 1024 ** 3:.2g} GB")
    if cpus == cpus and cpus is not None:  # NaN: no CPU limit
        parts.append(f"{cpus:g} CPU{'' if cpus == 1 else 's'}")
    return ", ".join(parts)


@cli.command("status", context_settings=CONTEXT_SETTINGS)
@app_option(required=False)
@server_option
@click.option("--participants", is_flag=True,
              help="Also show how many participants are working in each app right now ('?' when unknown).")
@common_options
@with_hints
def status_cmd(app, server, participants):
    """Show the containers of every app (or one app): state, health, uptime, restarts.

    With --app, exits with 3 when one of the app's containers is not running (or unhealthy).

    \b
    Examples:
      labdeploy status
      labdeploy status --app stroop-pilot
      labdeploy status --participants
      labdeploy status --app stroop-pilot --json
    """
    monitor = core("monitor")
    remote = open_server(server)
    rec = _swarm.record(remote, app)
    if rec is not None:  # deployed with --engine swarm: its tasks, with their nodes
        return _swarm.show_status(remote, app, rec)
    df = monitor.status(remote, app, jobs=True, backups=True, participants=participants)
    if app is None and core("swarm").apps(remote):  # this server is also a Swarm's manager
        if not STATE.json and len(df):
            _status_render(df)
        return _swarm.show_status(remote, None, None, single=df)

    _ui.output(df, render=_status_render)
    if app is not None:
        bad = df[(df["state"] != "running") | (df["health"].isin(["unhealthy"]))]
        if len(bad):
            raise NotReady(f"{app}: not running: " + ", ".join(f"{r.service} ({r.state}{', ' + r.health if r.health else ''})"
                                                             for r in bad.itertuples()) + ".",
                           f"Read the logs: `labdeploy logs --app {app} --service {bad.iloc[0]['service']}`.")


def _status_render(d) -> None:
    """The single-server status table (and its backups), as `labdeploy status` prints it."""
    d = d.copy()
    if "uptime" in d:
        d["uptime"] = d["uptime"].map(_duration)
    columns = ["app", "service", "state", "health", "uptime", "restarts", "exit_code", "limits", "image"]
    if "memory_limit" in d:
        d["limits"] = [_limits_text(m, c) for m, c in zip(d["memory_limit"], d["cpu_limit"])]
    if "jobs_queued" in d and d["jobs_queued"].notna().any():
        # rq's counts for Dallinger/PsyNet workers: queued jobs waiting, failed ones kept
        d["jobs"] = [f"{q} queued, {f} failed" if str(q) != "<NA>" else ""
                     for q, f in zip(d["jobs_queued"], d["jobs_failed"])]
        columns.insert(6, "jobs")
    if "working" in d:
        d["working"] = ["?" if str(n) == "<NA>" else str(n) for n in d["working"]]
        columns.insert(2, "working")
    _ui.table(d, columns=columns, empty="No app containers on this server.")
    for name, why in sorted(d.attrs.get("working_unknown", {}).items()):
        _ui.info(f"{name}: working participants unknown: {why}.")
    if "backup_warning" in d:
        per_app = d.drop_duplicates("app")
        if len(per_app):
            _ui.table(per_app.assign(last_backup=per_app["last_backup"], last_good_drill=per_app["last_good_drill"]),
                      columns=["app", "last_backup", "last_good_drill", "backup_warning"], title="Backups")
        for row in per_app.itertuples():
            if row.backup_warning:
                _ui.warn(f"{row.app}: {row.backup_warning}", "See `labdeploy backups --app " + row.app + "`.")


def _duration(value) -> str:
    try:
        import pandas as pd

        if value is None or value is pd.NaT or pd.isna(value):
            return ""
        secs = int(value.total_seconds())
    except Exception:  # noqa: BLE001
        return str(value)
    d, rem = divmod(secs, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}d {h}h" if d else f"{h}h {m}m" if h else f"{m}m {s}s" if m else f"{s}s")


# ------------------------------------------------------------------ logs / exec / restart


@cli.command("logs", context_settings=CONTEXT_SETTINGS)
@app_option()
@service_option(default=None)
@server_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--tail", "-n", default="200", show_default=True, help="Lines per service to start with, or 'all'.")
@click.option("--since", default=None, help="Only lines since this time or duration, e.g. 10m, 2h, 2026-01-01T12:00.")
@common_options
@with_hints
def logs_cmd(app, service, server, follow, tail, since):
    """Print an app's container logs (like `docker compose logs` in ~/dallinger/<app>).

    All services unless --service is given. With --json, one JSON object per line
    (time, service, line).

    \b
    Examples:
      labdeploy logs --app stroop-pilot
      labdeploy logs --app stroop-pilot --service web -f
      labdeploy logs --app stroop-pilot --since 10m --tail all
    """
    import json

    monitor = core("monitor")
    if tail != "all":
        try:
            tail = int(tail)
        except ValueError:
            raise UsageProblem(f"--tail {tail!r} is not a line count.", "Use a number such as 200, or 'all'.") from None
    remote = open_server(server)
    if _swarm.record(remote, app) is not None:  # deployed with --engine swarm: every node's lines
        return _swarm.show_logs(remote, app, service, tail, follow, since)
    lock = threading.Lock()

    def show(entry) -> None:
        with lock:
            if STATE.json:
                click.echo(json.dumps({"time": None if entry.time is None or str(entry.time) == "NaT"
                                       else entry.time.isoformat(), "service": entry.service, "line": entry.line}))
            else:
                click.echo(f"{entry.service:<7}| {entry.line}")
            sys.stdout.flush()

    stop = threading.Event()
    kwargs = {"tail": tail, "since": since, "on_line": show, "as_frame": False}
    if follow:
        kwargs.update(follow=True, stop=stop)
    try:
        with _ui.reporting() as reporter:
            monitor.logs(remote, app, service, reporter=reporter, **kwargs)
    except KeyboardInterrupt:
        stop.set()
        if follow:
            return 0  # Ctrl-C is how a follow ends
        raise


@cli.command("exec", context_settings={**CONTEXT_SETTINGS, "ignore_unknown_options": True})
@app_option()
@service_option(default="web")
@server_option
@click.option("--stdin", "send_stdin", is_flag=True, help="Send this command's stdin to the remote command.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds before the command is stopped.")
@common_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@with_hints
def exec_cmd(app, service, server, send_stdin, timeout, command):
    """Run a command in a service's container (like `docker compose exec web CMD`).

    Put the command after `--`. Its output is printed as it is, and labdeploy exits with the
    command's own exit status (with --json: the output and status as JSON, exit 0 or 1).
    There is no terminal (no interactive shells).

    \b
    Examples:
      labdeploy exec --app stroop-pilot -- ls -la /app
      labdeploy exec --app stroop-pilot --service worker -- python -c 'print(42)'
      labdeploy exec --app stroop-pilot -- sh -c 'echo $DATABASE_URL | cut -d@ -f2'
    """
    monitor = core("monitor")
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageProblem("No command given.", "Put the command after --, e.g. `labdeploy exec --app X -- ls`.")
    remote = open_server(server)
    stdin = sys.stdin.buffer.read() if send_stdin else None
    res = monitor.exec_(remote, app, service, argv, stdin=stdin, timeout=timeout)
    if STATE.json:
        _ui.emit_json({"app": res.app, "service": res.service, "command": res.command,
                       "exit_status": res.exit_status, "stdout": res.stdout, "stderr": res.stderr})
        return 0 if res.exit_status == 0 else _ui.EXIT_FAILED
    sys.stdout.write(res.stdout)
    sys.stdout.flush()
    sys.stderr.write(res.stderr)
    sys.stderr.flush()
    return res.exit_status


@cli.command("restart", context_settings=CONTEXT_SETTINGS)
@app_option()
@click.argument("services", nargs=-1, callback=_check_service)
@server_option
@click.option("--timeout", type=float, default=120, show_default=True, help="Seconds to wait until they are up.")
@click.option("--wait-idle", is_flag=True,
              help="First wait until no participant is working (at most --idle-timeout seconds).")
@click.option("--idle-timeout", type=float, default=600, show_default=True,
              help="With --wait-idle: the longest wait for participants to finish, in seconds.")
@common_options
@with_hints
def restart_cmd(app, services, server, timeout, wait_idle, idle_timeout):
    """Restart an app's processes (default: web, worker and clock) and wait until they are up.

    The seed's remedy when an app holds too many database connections. It first says how
    many participants are working; --wait-idle waits until none is.

    \b
    Examples:
      labdeploy restart --app stroop-pilot
      labdeploy restart --app stroop-pilot web worker
      labdeploy restart --app stroop-pilot --wait-idle --idle-timeout 900
    """
    monitor = core("monitor")
    remote = open_server(server)
    with _ui.reporting() as reporter:
        df = monitor.restart(remote, app, list(services) or None, timeout=timeout, wait_idle=wait_idle,
                             idle_timeout=idle_timeout, reporter=reporter)
    _ui.ok(f"Restarted {', '.join(services) if services else 'web, worker, clock'} of {app}; they are up.")

    def render(d):
        d = d.copy()
        if "uptime" in d:
            d["uptime"] = d["uptime"].map(_duration)
        _ui.table(d, columns=["app", "service", "state", "health", "uptime", "restarts"])

    _ui.output(df, render=render)


# ------------------------------------------------------------------ connections


@cli.command("connections", context_settings=CONTEXT_SETTINGS)
@server_option
@click.option("--all", "show_all", is_flag=True, help="One row per connection (pg_stat_activity) instead of the summary.")
@click.option("--check", is_flag=True,
              help="Exit with 3 when the server or an app is near its connection limit (for cron/monitoring).")
@click.option("--threshold", type=float, default=None, metavar="FRACTION",
              help="What counts as near the limit, e.g. 0.8 for 80% (the default).")
@common_options
def connections_cmd(server, show_all, check, threshold):
    """Who is using the shared PostgreSQL's connections (the seed's pg_stat_activity query).

    The summary has one row per database/app: its connections by state, against its own
    limit and the server's max_connections (100 by default). Near the limit, new connections
    fail; a warning names the apps holding most (restart them: `labdeploy restart --app NAME`).

    \b
    Examples:
      labdeploy connections
      labdeploy connections --all
      labdeploy connections --check --threshold 0.9 --json
    """
    monitor = core("monitor")
    remote = open_server(server)
    swarm_rows = _swarm.connections(remote, show_all)
    try:
        snap = monitor.snapshot(remote, persistent=False)
    except core("pgactivity").PostgresUnavailable:
        if swarm_rows is None:
            raise
        # a Swarm's manager with no shared PostgreSQL: each Swarm app's own one, with its node
        return _ui.output(swarm_rows, render=lambda r: _ui.table(
            r, title="Swarm apps' own PostgreSQL (each on its node)", empty="No client connections."))
    warnings = monitor.connection_warnings(snap, *( [threshold] if threshold is not None else []))
    if show_all:
        _ui.output(snap.activity, render=lambda d: _ui.table(d, empty="No client connections."))
    else:
        summary = monitor.pg_summary(snap)
        result = {"time": snap.time, "total": snap.total, "max_connections": snap.max_connections,
                  "databases": summary, "warnings": [{"kind": w.kind, "message": w.message, "hint": w.hint,
                                                      "used": w.used, "limit": w.limit, "apps": list(w.apps)}
                                                     for w in warnings]}
        _ui.output(result, render=lambda r: _ui.table(
            r["databases"], title=f"{r['total']} of {r['max_connections']} connections in use"))
    if swarm_rows is not None and not STATE.json:
        _ui.table(swarm_rows, title="Swarm apps' own PostgreSQL (each on its node)", empty="No client connections.")
    for w in warnings:
        _ui.warn(w.message, w.hint)
    if check and warnings:
        raise NotReady(f"{len(warnings)} connection warning(s).", warnings[0].hint)


# ------------------------------------------------------------------ export


@cli.command("export", context_settings=CONTEXT_SETTINGS)
@app_option()
@server_option
@click.option("--anonymous", is_flag=True, help="Replace participant identifiers (worker ids, IPs...) in the export.")
@click.option("--both", is_flag=True, help="Save the regular and the anonymised export.")
@click.option("--out", "out", type=click.Path(), default=None,
              help="Zip file to write, or a folder (time-stamped names). Default: the current folder.")
@click.option("--parquet", is_flag=True, help="Also write Parquet files next to the zip.")
@click.option("--overwrite", is_flag=True, help="Replace the --out file if it exists.")
@click.option("--table", "tables", multiple=True, metavar="TABLE", help="Only this table (repeatable). Default: all.")
@common_options
@with_hints
def export_cmd(app, server, anonymous, both, out, parquet, overwrite, tables):
    """Export every table of an app's database to a Dallinger-compatible zip
    (like `psynet export ssh --app NAME`).

    The tables are read in one consistent snapshot and their row counts checked.

    \b
    Examples:
      labdeploy export --app stroop-pilot
      labdeploy export --app stroop-pilot --out data/pilot.zip
      labdeploy export --app stroop-pilot --anonymous --out shared/
    """
    export = core("export")
    if anonymous and both:
        raise UsageProblem("--anonymous and --both exclude each other.", "Use one of them.")
    mode = "both" if both else "anonymous" if anonymous else "regular"
    target = Path(out) if out else Path.cwd()
    is_file = target.suffix.lower() == ".zip"
    if is_file and both:
        raise UsageProblem("--both writes two files; --out must be a folder.", "Give a folder, e.g. --out exports/.")
    if is_file and target.exists() and not overwrite:
        raise UsageProblem(f"{target} exists already.", "Pass --overwrite, or choose another file name.")
    remote = open_server(server)
    rec = _swarm.record(remote, app)
    with _ui.reporting() as reporter:
        if rec is not None:  # deployed with --engine swarm: from its own PostgreSQL on the data node
            data = _swarm.export(remote, app, list(tables), mode, target, is_file, parquet, overwrite, reporter)
        elif is_file:
            data = export.export(app, remote, list(tables) or None, mode=mode, reporter=reporter)
            export.save_archive(data, target, parquet=parquet, overwrite=overwrite, reporter=reporter)
        else:
            # export makes the folder itself, 0700 (it will hold participant data)
            data = export.export(app, remote, list(tables) or None, mode=mode, save_to=target, parquet=parquet,
                                 reporter=reporter)
    summary = data.summary()
    paths = list(dict.fromkeys(data.paths))
    for p in paths:
        _ui.ok(f"Saved {p}")
    result = {"app": app, "mode": mode, "paths": paths, "tables": summary,
              "exported_at": data.exported_at, "rows": int(summary["rows"].sum()) if len(summary) else 0}
    _ui.output(result, render=lambda r: _ui.table(r["tables"], title=f"{app}: {r['rows']} rows"))


# ------------------------------------------------------------------ destroy


@cli.command("destroy", context_settings=CONTEXT_SETTINGS)
@app_option()
@server_option
@click.option("--remove-data", is_flag=True,
              help="Also delete the app's database, Redis data and files (refused unless a fresh export "
                   "of its data was saved on this computer, or --no-export-check).")
@click.option("--no-export-check", is_flag=True, help="With --remove-data: delete the data even without a fresh export.")
@click.option("--final-export", "final_export", default=None, metavar="DIR", type=click.Path(file_okay=False),
              help="With --remove-data: stop the app, export every table into DIR, then delete (the safe order "
                   "for apps that write by themselves, such as PsyNet's status rows).")
@click.option("--export-mode", type=click.Choice(("regular", "anonymous", "both")), default="regular",
              show_default=True, help="With --final-export: also save the anonymised version (the regular one is "
                                      "always saved: it is the copy of the data that is kept).")
@click.option("--parquet", is_flag=True, help="With --final-export: also write Parquet files next to the zip.")
@click.option("--files", is_flag=True, help="With --final-export: also download the app's files (DIR/APP-files).")
@click.option("--logs", is_flag=True, help="With --final-export: also save its container logs (DIR/APP-logs.txt).")
@click.option("--remove-backups", is_flag=True,
              help="With --remove-data: also delete the app's backups on the server (kept otherwise).")
@click.option("--force", is_flag=True,
              help="Destroy even while participants are working (they lose their session); refused otherwise.")
@yes_option
@common_options
@with_hints
def destroy_cmd(app, server, remove_data, no_export_check, final_export, export_mode, parquet, files, logs,
                remove_backups, force, yes):
    """Stop and remove an app: its containers, its web address and its folder
    (like `psynet destroy ssh --app NAME`). Its data is kept unless --remove-data.

    Asks for confirmation; in scripts pass --yes (without it a non-interactive run refuses
    with exit status 4). Refused (exit status 3) while participants are working, unless --force.

    \b
    Examples:
      labdeploy destroy --app stroop-pilot
      labdeploy destroy --app stroop-pilot --yes
      labdeploy export --app stroop-pilot && labdeploy destroy --app stroop-pilot --remove-data --yes
      labdeploy destroy --app stroop-pilot --remove-data --final-export ./final --yes
      labdeploy destroy --app stroop-pilot --remove-data --final-export ./final --export-mode both --files --logs
    """
    if final_export and not remove_data:
        raise UsageProblem("--final-export is for destroying with --remove-data.",
                           "Add --remove-data, or export with `labdeploy export --app NAME` instead.")
    extras = [flag for flag, given in (("--export-mode", export_mode != "regular"), ("--parquet", parquet),
                                       ("--files", files), ("--logs", logs)) if given]
    if extras and not final_export:
        raise UsageProblem(f"{', '.join(extras)} go with --final-export DIR.", "Add --final-export DIR.")
    if remove_backups and not remove_data:
        raise UsageProblem("--remove-backups goes with --remove-data.", "Add --remove-data, or keep the backups.")
    apps = core("apps")
    name = pick_server(server)
    what = "its containers, web address and folder" + (" AND ALL ITS DATA (database, Redis, files)" if remove_data
                                                       else " (its data is kept)") + \
        (" AND ITS BACKUPS" if remove_backups else "")
    remote = open_server(name)
    if _swarm.record(remote, app) is not None:  # deployed with --engine swarm: its stack
        if remove_backups or logs or files:
            raise UsageProblem(f"{app} runs on a Docker Swarm: --remove-backups, --files and --logs are for apps "
                               "on one server.", "Leave them out.")
        _ui.confirm(f"Destroy {app!r} (a Swarm stack) on {name}: remove {what}?", yes=yes)
        with _ui.reporting() as reporter:
            done = _swarm.destroy(remote, app, remove_data, no_export_check, final_export, export_mode, parquet,
                                  reporter)
        for path in done["exported"]:
            _ui.ok(f"Saved {path}")
        _ui.ok(f"{app} was destroyed: removed {', '.join(done['removed'])}"
               + (f"; kept {', '.join(done['kept'])}" if done["kept"] else "") + ".")
        return _ui.output(done, render=lambda r: None)
    _ui.confirm(f"Destroy {app!r} on {name}: remove {what}?", yes=yes)
    with _ui.reporting() as reporter:
        final = apps.FinalExport(final_export, mode=export_mode, parquet=parquet, files=files,
                                 logs=logs) if final_export else None
        result = apps.destroy(app, remote, confirm=True, remove_data=remove_data,
                              export_check=not no_export_check, final_export=final, remove_backups=remove_backups,
                              force=force, reporter=reporter)
    for path in result.exported:
        _ui.ok(f"Saved {path}")
    _ui.ok(result.summary())
    _ui.output({"app": result.app, "removed": result.removed, "kept": result.kept, "exported": result.exported,
                "working": result.working, "working_note": result.working_note}, render=lambda r: None)


# ------------------------------------------------------------------ unlock


@cli.command("unlock", context_settings=CONTEXT_SETTINGS)
@app_option()
@server_option
@yes_option
@common_options
@with_hints
def unlock_cmd(app, server, yes):
    """Break an app's deploy lock, left by a deploy that was cut off (a laptop closed
    mid-deploy, a lost connection). Only when no deploy of this app runs anywhere.

    Asks for confirmation; in scripts pass --yes.

    \b
    Examples:
      labdeploy unlock --app stroop-pilot
    """
    lock = core("lock")
    name = pick_server(server)
    remote = open_server(name)
    info = lock.read_lock(remote, app)
    if info is None:
        _ui.ok(f"{app} on {name} has no deploy lock; nothing to do.")
        _ui.output({"app": app, "unlocked": False}, render=lambda r: None)
        return
    _ui.confirm(f"Break the lock of {app!r} on {name} ({info.describe()})? Only if nothing is deploying it.",
                yes=yes)
    lock.break_lock(remote, app, confirm=True)
    _ui.ok(f"The deploy lock of {app} on {name} was removed.")
    _ui.output({"app": app, "unlocked": True, "was": info.describe()}, render=lambda r: None)
