"""An experiment on a Docker Swarm, through its manager over SSH: prepare (the one ingress),
deploy or update (labdeploy.app.swarmstack's stack file, `docker stack deploy
--with-registry-auth`), status (a `node` column) and destroy.

The image travels in registry mode only: every node pulls it, with the login the deploy sends
(the manager's own login lasts for the deploy only, in a private folder). The manager's files:
~/dallinger-swarm/settings.json, ingress/ (Caddyfile, caddy.d/<app>, stack.yml) and one folder
per app (stack.yml, secrets.env and postgres.env at 0600, deploy.json).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pandas as pd

from .. import names
from ..commands import files, swarm as swarm_commands
from ..errors import CommandFailed, LabdeployError, Remedy, UnknownApp, ValidationError
from ..images import registry, transfer
from ..progress import LogLine, Reporter, null_reporter, step
from ..server import database, stack, webcheck
from ..ssh import pool
from . import appcompose, swarmstack
from .options import DeployOptions

STATUS_COLUMNS = ["app", "service", "task", "node", "state", "desired", "image", "error"]


class SwarmError(LabdeployError):
    code = "swarm.failed"


@dataclass
class SwarmDeployResult:
    app: str
    url: str
    version: str
    image: str
    engine: str = "swarm"
    replicas: dict = field(default_factory=dict)  # service -> replicas asked for
    data_node: str = ""
    duration_s: float = 0.0

    def summary(self) -> str:
        counts = ", ".join(f"{s} x{n}" for s, n in self.replicas.items())
        return f"{self.app} ({self.version}) is live at {self.url} on a Swarm ({counts}; data on {self.data_node})"


def _facts(remote) -> dict:
    res = remote.run(swarm_commands.facts(), check=False, timeout=60)
    if res.exit_status == swarm_commands.NOT_MANAGER:
        raise SwarmError(f"The Docker engine on {remote.host} is not a Swarm manager.",
                         "Connect to a manager node of the Swarm (docker node ls works there).", code="swarm.not_manager")
    if res.exit_status != 0:
        raise SwarmError(f"The Swarm manager {remote.host} could not be asked about its nodes: {res.stderr.strip()}")
    return swarm_commands.parse_facts(res.stdout)


def _settings(remote) -> stack.StackSettings:
    res = remote.run(["cat", "--", f"{swarmstack.ROOT}/settings.json"], check=False)
    if res.exit_status != 0:
        raise SwarmError(f"The Swarm at {remote.host} has not been prepared for experiments yet.",
                         code="swarm.not_prepared", remedy=Remedy("swarm.prepare"))
    return stack.StackSettings.from_dict(json.loads(res.stdout))


def _write(remote, folder: str, name: str, text: str, mode: int = 0o644) -> None:
    remote.run(files.write(folder, name, mode), stdin=text.encode())


def prepare(server, settings: Optional[stack.StackSettings] = None, *, reporter: Optional[Reporter] = None) -> dict:
    """Make a Swarm's manager ready for experiments: the data node labelled (this manager's
    unless one is), the settings (images, domain), and the one ingress Caddy on this manager's
    node (host-mode ports). Safe to run again. Returns the manager's facts."""
    reporter = reporter or null_reporter
    settings = settings or stack.StackSettings()
    remote = pool.connect(server)
    with step(reporter, "swarm", remote.host):
        facts = _facts(remote)
    with step(reporter, "ingress", swarmstack.INGRESS_SERVICE):
        folder = swarmstack.ingress_dir()
        doc = swarmstack.ingress_document(settings.caddy_image, f"{remote.home}/{folder}", facts["node_id"],
                                          settings.http_port, settings.https_port)
        _write(remote, swarmstack.ROOT, "settings.json", json.dumps(settings.__dict__, indent=2) + "\n")
        _write(remote, folder, "Caddyfile", swarmstack.CADDYFILE)
        remote.makedirs(f"{folder}/caddy.d")
        _write(remote, folder, swarmstack.STACK_FILE, appcompose.app_compose_yaml(doc))
        remote.run(swarm_commands.deploy(folder, f"{remote.home}/.docker", swarmstack.STACK_FILE,
                                         swarmstack.INGRESS_STACK), timeout=300)
    return facts


def _secrets(remote, app: str, config_secrets: dict) -> tuple[str, str]:
    """(secrets.env, postgres.env): the database password kept across updates."""
    res = remote.run(["cat", "--", f"{swarmstack.app_dir(app)}/{swarmstack.POSTGRES_ENV}"], check=False)
    password = appcompose.parse_env(res.stdout).get("POSTGRES_PASSWORD") if res.exit_status == 0 else None
    password = password or database.random_password()
    app_env = appcompose.secrets_env({**config_secrets, "DATABASE_URL": swarmstack.database_url(password)})
    return app_env, appcompose.secrets_env({"POSTGRES_PASSWORD": password})


def _deploy_stack(remote, app: str, doc: dict, app_env: str, pg_env: str, credentials, reporter: Reporter) -> None:
    folder = swarmstack.app_dir(app)
    _write(remote, folder, appcompose.SECRETS_FILE, app_env, 0o600)
    _write(remote, folder, swarmstack.POSTGRES_ENV, pg_env, 0o600)
    _write(remote, folder, swarmstack.STACK_FILE, appcompose.app_compose_yaml(doc))
    # The nodes get the login with the stack (--with-registry-auth); the manager keeps none.
    login = f"{folder}/.registry-login"
    if credentials is not None:
        registry.login_server(remote, credentials, docker_config=login, reporter=reporter, temporary=True)
    try:
        config = f"{remote.home}/{login}" if credentials is not None else f"{remote.home}/.docker"
        res = remote.run(swarm_commands.deploy(folder, config, swarmstack.STACK_FILE, app), timeout=300)
        for line in (res.stdout + res.stderr).splitlines():
            if line.strip():
                reporter(LogLine(line.strip(), "start"))
    finally:
        if credentials is not None:
            registry.logout_server(remote, credentials.registry, docker_config=login)
            remote.run(files.remove(login), check=False)


def tasks(remote, app: str) -> pd.DataFrame:
    """The app's tasks that should run: service, task, node, state (docker stack ps)."""
    res = remote.run(swarm_commands.tasks(names.app_name(app)), check=False, timeout=60)
    rows = []
    for t in swarm_commands.parse_tasks(res.stdout) if res.exit_status == 0 else []:
        service = t.get("Name", "").split(".")[0]
        rows.append({"app": app, "service": service[len(app) + 1:] if service.startswith(app + "_") else service,
                     "task": t.get("Name", ""), "node": t.get("Node", ""), "state": t.get("CurrentState", ""),
                     "desired": t.get("DesiredState", ""), "image": t.get("Image", ""), "error": t.get("Error", "")})
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


def _wait_running(remote, app: str, want: dict, timeout: float, reporter: Reporter) -> pd.DataFrame:
    """Until each service runs as many tasks as asked (web ones healthy: Swarm counts a task
    running only once its health check passes)."""
    deadline = time.monotonic() + timeout
    while True:
        df = tasks(remote, app)
        running = df[df["state"].str.startswith("Running")]
        counts = running.groupby("service").size().to_dict() if len(running) else {}
        if all(counts.get(s, 0) >= n for s, n in want.items()):
            reporter(LogLine("running: " + ", ".join(f"{s} on {', '.join(sorted(running[running.service == s].node))}"
                                                     for s in want), "start"))
            return df
        if time.monotonic() > deadline:
            errors = "; ".join(sorted({e for e in df["error"] if e}))[:600]
            raise SwarmError(f"The app's services did not all run within {timeout:.0f} s "
                             f"(running: {counts or 'none'}; asked: {want}). {errors}",
                             "Read the services' logs; the stack stays as Swarm keeps it (destroy removes it).",
                             code="swarm.not_running")
        time.sleep(2)


def _update_states(remote, services: list) -> dict:
    res = remote.run(swarm_commands.update_status(services), check=False, timeout=60)
    return swarm_commands.parse_update_status(res.stdout) if res.exit_status == 0 else {}


_DONE = {"completed", "rollback_completed", "paused", "rollback_paused"}


def _wait_update(remote, app: str, before: dict, timeout: float, reporter: Reporter,
                 unchanged_after: float = 30) -> dict:
    """Until each service's rolling update (a new one: its start time differs from `before`'s)
    has ended. Swarm's own rollback_config brings a service whose new task failed its health
    check back to its previous version: then this raises, the previous version still serving.
    A service with no new update after `unchanged_after` s had nothing to change."""
    t0 = time.monotonic()
    while True:
        now = _update_states(remote, list(before))
        pending = [s for s in before if (now.get(s, {}).get("started") == before[s]["started"]
                                          and time.monotonic() - t0 < unchanged_after)
                   or (now.get(s, {}).get("started") != before[s]["started"]
                       and now.get(s, {}).get("state") not in _DONE)]
        if not pending:
            break
        if time.monotonic() - t0 > timeout:
            raise SwarmError(f"The update of {', '.join(pending)} did not end within {timeout:.0f} s.",
                             "Read the services' logs; Swarm goes on with the update or its rollback.",
                             code="swarm.update_slow")
        time.sleep(2)
    back = {s: v for s, v in now.items() if v.get("state", "").startswith("rollback") or v.get("state") == "paused"}
    for s, v in now.items():
        reporter(LogLine(f"{s}: update {v.get('state') or 'unchanged'}", "start"))
    if back:
        detail = "; ".join(f"{s[len(app) + 1:]}: {v['message'] or v['state']}" for s, v in back.items())
        raise SwarmError(f"The new version of {app} did not pass its health check, and Swarm rolled "
                         f"{', '.join(s[len(app) + 1:] for s in back)} back to the previous version, which kept "
                         f"serving ({detail}).",
                         "Read the new version's logs for why it did not start, fix it and update again.",
                         code="swarm.rolled_back")
    return now


def _route(remote, app: str, host: str) -> None:
    _write(remote, f"{swarmstack.ingress_dir()}/caddy.d", app, swarmstack.site(app, host))
    res = remote.run(swarm_commands.reload_caddy(swarmstack.INGRESS_SERVICE), check=False, timeout=120)
    if res.exit_status != 0:
        raise SwarmError(f"The ingress Caddy did not take the app's site: {res.stderr.strip()[:400]}",
                         code="swarm.route", remedy=Remedy("swarm.prepare"))


def _launch(remote, host: str, opts: DeployOptions, launch: bool, port: int, reporter: Reporter) -> None:
    from . import webprobe

    with remote.forward(remote.host, port) as local:
        webcheck.healthy(local, host, opts.health_path, 60)
        if launch:
            webprobe.launch(local, host, opts.launch_attempts, reporter)


def _start_route_launch(remote, checked, opts: DeployOptions, operation: str, stack_input: tuple, want: dict,
                        host: str, http_port: int, reporter: Reporter) -> None:
    """The stack deployed (and, on an update, Swarm's rolling update waited for), every service
    running as many tasks as asked, the app's site in the ingress, then its launch."""
    app = checked.app
    doc, app_env, pg_env = stack_input
    with step(reporter, "start", f"web x{want['web']}, worker x{want['worker']}"):
        rolling = [f"{app}_{p}" for p in ("web", "worker", "clock") if p in checked.processes]
        before = _update_states(remote, rolling) if operation == "update" else {}
        _deploy_stack(remote, app, doc, app_env, pg_env, opts.credentials, reporter)
        if operation == "update":
            _wait_update(remote, app, before, 4 * float(opts.start_timeout), reporter)
        _wait_running(remote, app, want, 2 * float(opts.start_timeout), reporter)
    with step(reporter, "route", host):
        _route(remote, app, host)
    with step(reporter, "launch"):
        launch = opts.launch if opts.launch is not None else operation == "deploy"
        _launch(remote, host, opts, launch, http_port, reporter)


def last_errors(remote, app: str, want: Optional[dict] = None) -> dict:
    """service -> the error of its newest task that ended with one (Swarm keeps a few ended
    tasks); a service of `want` short of tasks with no error yet -> its newest task's state (a
    web still "Starting" has not passed its health check)."""
    res = remote.run(swarm_commands.history(names.app_name(app)), check=False, timeout=60)
    out, newest = {}, {}
    for t in swarm_commands.parse_tasks(res.stdout) if res.exit_status == 0 else []:
        service = t.get("Name", "").split(".")[0]
        service = service[len(app) + 1:] if service.startswith(app + "_") else service
        newest.setdefault(service, t.get("CurrentState", ""))
        if t.get("Error") and service not in out:
            out[service] = f"{t['Error']} ({t.get('CurrentState', '')})".strip()
    running = tasks(remote, app) if want else None
    for s in [x.split()[0] for x in short(running, {"replicas": want})] if want else []:
        out.setdefault(s, f"no task error yet; its newest task is {newest.get(s) or 'not started'}"
                          + (" (not healthy yet)" if s == "web" else ""))
    return out


def _undo_first_deploy(remote, app: str, facts: dict, want: dict, exc: Exception, reporter: Reporter) -> None:
    """A first deploy that failed leaves nothing: its stack, site, folder (secrets, no record yet)
    and, as a brand-new app has no data yet, its volumes. Raises the error, saying why with the
    services' last task errors (read before the stack goes)."""
    errors = last_errors(remote, app, want)
    with step(reporter, "rollback", app):
        remote.run(swarm_commands.remove(app), check=False, timeout=120)
        if remote.run(files.remove(f"{swarmstack.ingress_dir()}/caddy.d/{app}"), check=False).exit_status == 0:
            remote.run(swarm_commands.reload_caddy(swarmstack.INGRESS_SERVICE), check=False, timeout=120)
        left = []
        if facts["data_node"] == facts["hostname"]:
            try:
                _remove_volumes(remote, app)
            except CommandFailed:
                left.append(f"its volumes on {facts['data_node']}")
        else:
            left.append(f"its volumes on {facts['data_node']} (not this manager's node)")
        remote.run(files.remove(swarmstack.app_dir(app)), check=False)
    said = "; ".join(f"{s}: {e}" for s, e in sorted(errors.items())) or "none recorded"
    kept = f" Left: {', '.join(left)}." if left else ""
    raise SwarmError(f"The first deploy of {app} failed, and it was removed again: nothing of it runs, no deploy "
                     f"record was written.{kept} What failed: {getattr(exc, 'message', None) or exc} "
                     f"The services' last task errors: {said}.",
                     "Read why the failing service did not start (its last task error above; a web that never "
                     "gets healthy does not answer its health check), fix the experiment and deploy again.",
                     code="swarm.first_deploy_failed") from exc


def deploy(checked, server, opts: DeployOptions, operation: str = "deploy",
           reporter: Optional[Reporter] = None) -> SwarmDeployResult:
    """Deploy (or update) an experiment whose input `checked` (labdeploy.app.deploy.Deploy after
    check_inputs) has been refused or accepted already, as a stack on the Swarm `server` manages."""
    reporter, t0 = reporter or null_reporter, time.monotonic()
    app, spec = checked.app, checked.spec
    web, workers = swarmstack.web_replicas(checked.config), checked.workers
    remote = pool.connect(server)
    with step(reporter, "preflight", remote.host):
        settings, facts = _settings(remote), _facts(remote)
        deployed = app in remote.run(swarm_commands.stacks()).stdout.split()
        if operation == "deploy" and deployed:
            raise SwarmError(f"An app named {app!r} is already deployed on the Swarm at {remote.host}.",
                             code="app.exists", remedy=Remedy("app.exists", app=app))
        if operation == "update" and not deployed:
            raise UnknownApp(f"There is no app named {app!r} on the Swarm at {remote.host} to update.",
                             remedy=Remedy("app.update_unknown", app=app))
    with step(reporter, "image"), tempfile.TemporaryDirectory(prefix="labdeploy-build-") as tmp:
        context = spec.write_context(Path(tmp) / "context") if spec is not None else checked.experiment_dir
        delivered = transfer.deliver(remote, context, app=app, mode="registry", build_args=opts.build_args,
                                     base_name=opts.base_name, credentials=opts.credentials,
                                     logout_after_pull=opts.credentials is not None,
                                     dockerfile=spec.dockerfile_name if spec is not None else opts.dockerfile)
    image = f"{delivered.ref}@{delivered.digest}" if delivered.digest else delivered.ref
    doc = swarmstack.stack_document(app, image, version=delivered.tag, commands=checked.commands,
                                    processes=checked.processes, environment=checked.config, web=web,
                                    workers=workers, postgres_image=settings.postgres_image,
                                    redis_image=opts.redis_image or settings.redis_image or
                                    appcompose.DEFAULT_REDIS_IMAGE, cpus=opts.cpu_limit, memory=opts.memory_limit)
    app_env, pg_env = _secrets(remote, app, dict(checked.secrets))
    want = {"web": web, "worker": workers, "postgresql": 1, "redis": 1}
    host = f"{app}.{opts.domain or settings.domain or 'localhost'}"
    try:
        _start_route_launch(remote, checked, opts, operation, (doc, app_env, pg_env), want, host, settings.http_port,
                            reporter)
    except Exception as exc:
        if operation != "deploy":
            raise  # an update: Swarm's rollback_config keeps (or brings back) the previous version
        _undo_first_deploy(remote, app, facts, want, exc, reporter)
    record = {"app": app, "engine": "swarm", "version": delivered.tag, "image": image, "replicas": want,
              "data_node": facts["data_node"], "deployed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with step(reporter, "record"):
        _write(remote, swarmstack.app_dir(app), "deploy.json", json.dumps(record, indent=2) + "\n")
    scheme = "http" if host.endswith("localhost") else "https"
    return SwarmDeployResult(app, f"{scheme}://{host}", delivered.tag, image, replicas=want,
                             data_node=facts["data_node"], duration_s=time.monotonic() - t0)


def record(server, app: str) -> Optional[dict]:
    """The Swarm deploy record of `app` on this server (None: not an app this Swarm manager
    deployed). What makes an app a Swarm app for status, logs, export and destroy."""
    remote = pool.connect(server)
    res = remote.run(["cat", "--", f"{swarmstack.app_dir(app)}/deploy.json"], check=False)
    if res.exit_status != 0:
        return None
    try:
        found = json.loads(res.stdout)
    except ValueError:
        return None
    return found if isinstance(found, dict) and found.get("engine") == "swarm" else None


def apps(server) -> list[str]:
    """The apps this server deployed as Swarm stacks (those with a deploy record), by name."""
    remote = pool.connect(server)
    res = remote.run(swarm_commands.records(), check=False, timeout=60)
    return sorted(line.strip() for line in res.stdout.splitlines() if line.strip()) if res.exit_status == 0 else []


def short(df: pd.DataFrame, record_: Optional[dict] = None) -> list[str]:
    """The services of one app that run fewer tasks than its record asked for ([] when all run)."""
    want = (record_ or {}).get("replicas") or {}
    running = df[df["state"].str.startswith("Running")].groupby("service").size().to_dict() if len(df) else {}
    return [f"{s} ({running.get(s, 0)} of {n} running)" for s, n in want.items() if running.get(s, 0) < n]


def status(server, app: Optional[str] = None) -> pd.DataFrame:
    """Every app's tasks on the Swarm (or one app's), with the node each runs on."""
    remote = pool.connect(server)
    stacks = [app] if app else [s for s in remote.run(swarm_commands.stacks()).stdout.split()
                                 if s != swarmstack.INGRESS_STACK]
    frames = [tasks(remote, names.app_name(s)) for s in stacks]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=STATUS_COLUMNS)


@dataclass
class SwarmDestroyResult:
    app: str
    removed: list = field(default_factory=list)
    kept: list = field(default_factory=list)


def destroy(app: str, server, *, confirm: bool = False, remove_data: bool = False,
            reporter: Optional[Reporter] = None) -> SwarmDestroyResult:
    """Remove the app's stack, its site and its folder; its database and Redis volumes only with
    `remove_data` (they live on the data node: removed here when that is this manager's node)."""
    app = names.app_name(app)
    if app == swarmstack.INGRESS_STACK:
        raise ValidationError(f"{app!r} is the Swarm's ingress, not an app.", code="invalid.app_name.reserved")
    if not confirm:
        raise ValidationError(f"Destroying {app!r} stops it for every participant.", "Confirm the destroy to go on.",
                              code="destroy.unconfirmed")
    reporter, result = reporter or null_reporter, SwarmDestroyResult(app)
    remote = pool.connect(server)
    facts = _facts(remote)
    if app not in remote.run(swarm_commands.stacks()).stdout.split():
        raise UnknownApp(f"There is no app named {app!r} on the Swarm at {remote.host}.")
    with step(reporter, "stop", app):
        remote.run(swarm_commands.remove(app), timeout=120)
        result.removed.append("stack")
    with step(reporter, "route"):
        remote.run(files.remove(f"{swarmstack.ingress_dir()}/caddy.d/{app}"), check=False)
        remote.run(swarm_commands.reload_caddy(swarmstack.INGRESS_SERVICE), check=False, timeout=120)
        result.removed.append("site")
    if remove_data and facts["data_node"] == facts["hostname"]:
        with step(reporter, "data"):
            _remove_volumes(remote, app)
            result.removed.append("volumes")
    elif remove_data:
        result.kept.append(f"volumes on {facts['data_node']} (not this manager's node)")
    else:
        result.kept.append("volumes")
    remote.run(files.remove(swarmstack.app_dir(app)), check=False)
    result.removed.append("files")
    return result


def _remove_volumes(remote, app: str, timeout: float = 90) -> None:
    """Once the stack's containers are gone (Swarm stops them after `stack rm`)."""
    deadline = time.monotonic() + timeout
    while True:
        found = remote.run(swarm_commands.volumes(app)).stdout.split()
        if not found:
            return
        try:
            remote.run(swarm_commands.remove_volumes(found))
            return
        except CommandFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
