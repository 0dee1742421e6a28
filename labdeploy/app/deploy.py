"""Deploy and update an experiment on a server: the seed's `psynet deploy ssh`.

`deploy(experiment_dir, app, server)` runs eight steps, each reported to the reporter:

1. preflight  inputs checked (before connecting), server ready, memory, name not in use,
              data a destroyed app of this name left (reuse or replace, never silently)
2. lock       the app's deploy lock on the server (atomic mkdir; expires; breakable)
3. image      the experiment's image onto the server (labdeploy.images.transfer's modes)
4. database   the app's own role and database with a connection limit; secrets file 0600
5. start      compose file, assets, `compose up` (v1 or v2); wait until web answers its health path
6. route      `<app>.<domain>` in Caddy (caddy.d/<app>, reload)
7. launch     POST /launch through the SSH connection (works before DNS), then health; then
              wait until worker and clock have settled (labdeploy.app.settle) or report their
              crash; a Dallinger/PsyNet worker must run a test job
8. record     deploy.json and a history line on the server

Each step that changes the server leaves an undo behind; a failure runs them in reverse, so
the previous version runs again (or a first deploy's containers stop), reports the step and
the containers' last log lines, and releases the lock. Data (database, Redis volume,
~/dallinger-data/<app>) is never touched by a failure. Everything goes over one SSH connection.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from .. import names
from ..errors import CommandFailed, LabdeployError, Remedy, RemoteError, UnknownApp, ValidationError
from ..commands import hostfacts
from ..data import restore
from ..experiment import dallinger, folder
from ..images import localdocker, transfer
from ..progress import LogLine, Progress, Reporter, StepFinished, StepStarted, WarningEvent, null_reporter, step
from ..redaction import redact, redacting
from ..server import appstate, caddy, compose, database, layout, logrotation, maintenance, pooler, psql, readiness, \
    stack, webcheck
from ..server.locks import DeployLock
from ..ssh import concurrent, pool
from ..watch import containers, jobs, participants
from . import appcompose, appdata, assets, changes, configuration, experimentcommands, facts as app_facts, fleet, history, \
    limits, settle, swarm, \
    webprobe, webupdate
from .configuration import Secret
from .options import DeployOptions

STEPS = ("preflight", "lock", "image", "database", "start", "route", "launch", "record")
UPDATE_STEPS = STEPS


class DeployError(LabdeployError):
    """A deploy could not even start (server not prepared, name in use)."""

    code = "deploy.refused"


class AppExists(DeployError):
    """The app name is already deployed on this server."""

    code = "app.exists"


class DeployFailed(LabdeployError):
    """A step after the image failed; the previous version was put back."""

    code = "deploy.failed"

    def __init__(self, message: str, hint: str = "", *, failed_step: str = "", logs: str = "",
                 rolled_back: bool = False) -> None:
        super().__init__(message, hint)
        self.failed_step = failed_step
        self.logs = logs
        self.rolled_back = rolled_back


@dataclass
class DeployResult:
    app: str
    url: str
    version: str
    image: str
    image_id: str
    dashboard_url: str
    dashboard_user: str
    dashboard_password: Secret
    operation: str = "deploy"
    duration_s: float = 0.0
    warnings: list = field(default_factory=list)
    ssh: dict = field(default_factory=dict)  # connections / commands used (Remote.stats delta)
    secret_names: list = field(default_factory=list)  # what the app's secrets.env holds (names only)
    experiment_id: Optional[str] = None  # Dallinger's experiment uid, kept across updates
    remembered: dict = field(default_factory=dict)  # redis_image / base_image / pooler...: {"value", "from"}
    data: str = "new"  # the database: new, kept (update or rerun), reused or replaced (after a destroy)
    placement: str = ""  # server="auto": which server was chosen and why, in one line
    placed_on: str = ""  # server="auto": the name of the server chosen

    def summary(self) -> str:
        return (f"{self.app} ({self.version}) is live at {self.url}\n"
                f"dashboard: {self.dashboard_url} user {self.dashboard_user}, password {self.dashboard_password}\n"
                f"secrets: {', '.join(self.secret_names) or 'none'}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sub_reporter(reporter: Reporter, source: str) -> Reporter:
    """A sub-operation's own steps become log lines, so the panel keeps the eight steps."""

    def report(event) -> None:
        if isinstance(event, StepStarted):
            reporter(LogLine(f"{event.step}…" + (f" {event.detail}" if event.detail else ""), source))
        elif isinstance(event, StepFinished):
            if not event.ok:
                reporter(LogLine(f"{event.step} failed", source))
        elif isinstance(event, Progress):
            reporter(Progress(event.step, event.done, event.total, event.unit, event.item))
        else:
            reporter(event)

    return report


def _together(*calls) -> None:
    """Run independent remote calls at once, each on its own channel of the one connection
    (a round trip each, overlapped); the first failure is raised once all have finished."""
    concurrent.together(*calls)


class Deploy:
    """One deploy or update, one method per step. State found or made by a step is kept on
    the object for the later ones; `undo` holds what puts the server back."""

    def __init__(self, experiment_dir, app: str, server, options: DeployOptions, operation: str,
                 reporter: Optional[Reporter]) -> None:
        self.server, self.options, self.operation = server, options, operation
        self.app, self.experiment_dir = app, experiment_dir
        self.reporter: Reporter = reporter or null_reporter
        self.started, self.t0 = _now(), time.monotonic()
        self.warnings: list[str] = []
        self.undo: list[tuple[str, Callable[[], Optional[bool]]]] = []  # (what, action), run in reverse
        self.known_secrets: list[str] = []  # values masked in every event and message
        self.current = "preflight"
        self.gated = self.switched = False  # the health-gated web switch was tried / made (webupdate)

    # ------------------------------------------------------------------ plumbing

    def report(self, event) -> None:
        if isinstance(event, WarningEvent):
            self.warnings.append(event.message)
        self.reporter(event)

    def mask(self, values) -> None:
        """From now on every event and message masks these values."""
        self.known_secrets.extend(v for v in values if v)
        self.reporter = redacting(self.reporter, values)

    def run(self) -> DeployResult:
        with step(self.reporter, "preflight"):
            self.preflight()
        self.lock = DeployLock(self.remote, self.app, operation=self.operation, reporter=self.report)
        with step(self.reporter, "lock"):
            self.lock.acquire()
        self.record = history.DeployRecord(app=self.app, operation=self.operation, who=self.lock.info.who,
                                           started_at=self.started)
        try:
            # A dump brings its schema: in place before launch. An export zip has tables only: into
            # the ones the app made at launch, replacing what launch wrote (as Dallinger's --archive).
            load = (("archive", self.load_archive, ""),) if self.options.archive is not None else ()
            late = bool(load) and restore.local_source(self.options.archive).kind == "zip"
            for name, method, detail in (("image", self.image, ""), ("database", self.database, ""),
                                         ("start", self.start, ""), *(() if late else load),
                                         ("route", self.route, ""), ("launch", self.launch, ""),
                                         *(load if late else ()), ("record", self.record_state, "")):
                self.current = name
                with step(self.reporter, name, detail or self.detail(name)):
                    method()
        except BaseException as exc:
            self.fail(exc)
        finally:
            _release(self)
        return self.result()

    def detail(self, name: str) -> str:
        if name == "database":
            return names.db_identifier(self.app)
        if name == "route":
            return caddy.app_url(self.app, self.settings)
        return ""

    # ------------------------------------------------------------------ 1. preflight

    def check_inputs(self) -> None:
        """Every input, checked before anything touches the server."""
        opts = self.options.check()
        self.app = names.app_name(self.app)
        self.experiment_dir = folder.local_folder(self.experiment_dir)
        folder.check_links(self.experiment_dir)  # nothing a link outside the folder points to ever travels
        _read_experiment(self)
        self.config, self.secrets = configuration.split_config({**self.base_config, **(opts.config or {})},
                                                               {**self.base_secrets, **(opts.secrets or {})})
        self.unset = configuration.check_unset(opts.unset_secrets)
        _check_limits(self)

    def preflight(self) -> None:
        """The inputs, then what the server holds and whether it can take the app."""
        self.check_inputs()
        opts = self.options
        self.mask(self.secrets.values())
        self.remote = pool.connect(self.server)
        self.stats0 = dict(self.remote.stats)
        self.facts = self.server_facts()
        if self.spec is not None:  # git hosts in requirements.txt, checked from where the image is built
            dallinger.check_git_sources(self.spec, mode=opts.mode, remote=self.remote)
        self.mask(self.facts.secrets.values())
        _refuse_archive_for_existing_app(self)
        self.keep_identity()
        self.remember_settings()

    def server_facts(self) -> app_facts.AppFacts:
        facts = app_facts.gather(self.remote, self.app)
        host, app = self.remote.host, self.app
        if facts.settings is None:
            raise DeployError(f"The server {host} has not been prepared for experiments yet (no ~/dallinger/stack.json).",
                              code="server.not_prepared", remedy=Remedy("stack.prepare"))
        if self.operation == "deploy" and facts.deployed:
            raise AppExists(f"An app named {app!r} is already deployed on {host} "
                            f"(version {facts.state.get('version', '?')}, {facts.state.get('deployed_at', '')}).",
                            remedy=Remedy("app.exists", app=app))
        if self.operation == "update" and not facts.deployed:
            raise UnknownApp(f"There is no deployed app named {app!r} on {host} to update.",
                             remedy=Remedy("app.update_unknown", app=app))
        if self.operation == "update" and facts.stack_running:
            return facts  # the server took this app before and its shared services run: no full check
        table = _readiness(self.remote, facts.settings, self.options.domain, app)
        for warning in readiness.judge_deploy(table, operation=self.operation, capacity=self.options.capacity):
            self.report(warning)
        if self.operation == "deploy" and not facts.app_dir:  # needs the shared PostgreSQL, checked above
            appdata.ask_about_kept(self.remote, app, self.options.existing_data, self.report)
        return facts

    def keep_identity(self) -> None:
        """An update keeps the app's sessions (FLASK_SECRET_KEY) and its experiment id, which
        recruiters and PsyNet know it by (config.txt may name its own)."""
        previous = self.facts.secrets
        if self.spec is not None and previous.get("FLASK_SECRET_KEY") and self.operation == "update":
            self.secrets["FLASK_SECRET_KEY"] = previous["FLASK_SECRET_KEY"]
        uid = app_facts.experiment_id(self.facts)
        if self.spec is not None and uid and not self.spec.uid_from_config:
            self.config["id"] = self.config["DALLINGER_UID"] = uid
        if self.options.domain is not None:
            self.facts.settings = stack.StackSettings.from_dict({**self.facts.settings.__dict__,
                                                                 "domain": self.options.domain})
        self.settings = self.facts.settings

    def remember_settings(self) -> None:
        """Images left out come from the app's last deploy, else the server, else the default."""
        opts = self.options
        self.remembered = {
            "redis_image": app_facts.remembered("redis_image", opts.redis_image, self.facts,
                                                appcompose.DEFAULT_REDIS_IMAGE),
            "base_image": app_facts.remembered("base_image", (opts.build_args or {}).get("BASE_IMAGE"), self.facts,
                                               ""),
        }
        self.redis_image = self.remembered["redis_image"]["value"]
        self.build_args = dict(opts.build_args or {})
        if self.remembered["base_image"]["value"]:
            self.build_args["BASE_IMAGE"] = self.remembered["base_image"]["value"]
        before = pooler.in_compose(self.facts.compose_text)
        self.use_pooler, why = pooler.choose(opts.pooler, before["enabled"], dallinger_app=self.spec is not None)
        self.remembered["pooler"] = {"value": self.use_pooler, "from": why}
        _choose_limits(self)
        if self.use_pooler:  # the app's choice: deploy.json when it records one, else its compose file
            known = app_facts.AppFacts(**{**self.facts.__dict__,
                                          "state": {"pgbouncer_image": before["image"], **(self.facts.state or {})}})
            self.remembered["pgbouncer_image"] = app_facts.remembered("pgbouncer_image", opts.pgbouncer_image, known,
                                                                      pooler.DEFAULT_IMAGE)

    # ------------------------------------------------------------------ 3. image

    def image(self) -> None:
        opts, spec = self.options, self.spec
        with tempfile.TemporaryDirectory(prefix="labdeploy-build-") as tmp:
            # A Dallinger folder is built from a copy: generated Dockerfile, config.txt without secrets.
            context = spec.write_context(Path(tmp) / "context") if spec is not None else self.experiment_dir
            for note in spec.notes if spec is not None else ():  # which Dockerfile, which releases, why
                self.report(WarningEvent(note.text, note.hint) if note.level == "warning" else LogLine(note.text, "image"))
            if spec is not None and spec.kind == "psynet":  # PsyNet's `psynet prepare`, locally
                dallinger.prepare_psynet(context, app=self.app, server_host=self.remote.host,
                                         ssh_user=self.remote.user, postgres_image=self.settings.postgres_image,
                                         redis_image=self.redis_image, env={**self.config, **self.secrets},
                                         build_args=self.build_args, folder_name=spec.folder.path.name,
                                         dockerfile=spec.dockerfile_name, reporter=_sub_reporter(self.report, "image"))
            self.delivered = transfer.deliver(
                self.remote, context, app=self.app, mode=opts.mode, build_args=self.build_args,
                base_name=opts.base_name, credentials=opts.credentials, logout_after_pull=opts.logout_after_pull,
                dockerfile=spec.dockerfile_name if spec is not None else opts.dockerfile,
                reporter=_sub_reporter(self.report, "image"))
        self.version = self.delivered.tag
        self.record.version, self.record.image = self.version, self.delivered.ref
        self.record.image_id = self.delivered.image_id
        self.lock.info.version = self.version

    # ------------------------------------------------------------------ 4. database

    def database(self) -> None:
        remote, app, opts = self.remote, self.app, self.options
        if opts.existing_data == "replace" and not self.facts.app_dir:
            # Checked in preflight: a fresh export of it exists. Nothing has written since.
            for what in appdata.remove(remote, app):
                self.report(LogLine(f"removed the earlier app's {what}", "database"))
        password = configuration.database_password(self.facts.secrets) or database.random_password()
        if self.use_pooler:
            self.report(LogLine(f"through its own PgBouncer ({self.remembered['pgbouncer_image']['value']}), at "
                                f"most {pooler.pool_size(opts.connection_limit)} of the role's "
                                f"{opts.connection_limit} connections", "database"))
        previous = self.facts.secrets
        self.values = {
            "dashboard_user": previous.get("dashboard_user", configuration.DEFAULT_DASHBOARD_USER),
            "dashboard_password": previous.get("dashboard_password") or database.random_password(),
            **configuration.secret_values(previous, self.secrets, self.unset),
            "DATABASE_URL": database.database_url(app, password, pooler=self.use_pooler),
            "REDIS_URL": database.REDIS_URL,
        }
        gone = [k for k in self.unset if k in previous]
        if gone:
            self.report(LogLine(f"secrets removed: {', '.join(gone)}", "database"))
        text = appcompose.secrets_env(self.values)
        self.mask([password, self.values["dashboard_password"]])

        def pooler_file() -> None:  # its password only, in a file of its own (kept when off: a rollback may need it)
            appstate.write(remote, f"{layout.app_dir(app)}/{pooler.ENV_FILE}", pooler.env_file(password), 0o600)

        _together(self.lock.refresh,  # records the version, restarts the expiry clock after a long build
                  lambda: psql.run_sql(remote, database.provision_sql(app, database.scram_verifier(password),
                                                                      opts.connection_limit)),
                  lambda: appstate.write(remote, layout.app_secrets(app), text, 0o600),
                  *((pooler_file,) if self.use_pooler else ()))
        if self.facts.secrets_text is not None:
            self.undo.append(("secrets", lambda: remote.put_bytes(layout.app_secrets(app), self.facts.secrets_text,
                                                                  mode=0o600)))

    # ------------------------------------------------------------------ 5. start

    def start(self) -> None:
        remote, app, opts = self.remote, self.app, self.options
        document = appcompose.app_compose_document(
            app, self.delivered.ref, version=self.version, commands=self.commands, environment=self.config,
            redis_image=self.redis_image, processes=self.processes, connection_limit=opts.connection_limit,
            pooler_image=self.remembered["pgbouncer_image"]["value"] if self.use_pooler else None,
            logging=logrotation.of(self.settings))
        limits.apply(document, self.limits)  # memory and CPU limits, Dallinger's worker count
        before = _before_start(self)
        self.host, self.seen = f"{app}.{self.settings.domain or 'localhost'}", []  # seen: for launch's wait
        text = appcompose.app_compose_yaml(document)
        if webupdate.switchable(self, document):
            if webupdate.start(self, text, alongside=before):
                return  # the new web process serves, checked before any participant reached it
            before = ()  # done alongside the switch's first steps
        _together(*before)
        appstate.write(remote, layout.app_compose(app), text, 0o644)
        self.undo.append(("processes", self.put_processes_back))
        try:
            compose.run_app(remote, app, ["up", "-d", "--remove-orphans"], reporter=self.reporter)
        except CommandFailed as exc:
            if self.use_pooler:  # an image the server can't get: say which setting to change
                raise pooler.image_failure(exc, self.remembered["pgbouncer_image"]) or exc
            raise
        if self.use_pooler:
            # A pooler replaced under running processes (its settings changed, not their code)
            # leaves them holding dead connections: restart them now, not at a participant's request.
            stale = pooler.stale_processes(remote.run(pooler.started_argv(app), check=False).stdout, self.processes)
            if stale:
                compose.run_app(remote, app, ["restart", *stale], reporter=self.reporter, timeout=300)
        self.started_at = time.monotonic()
        web_ip = webprobe.web_address(remote, app, self.delivered.ref, self.processes, self.seen)
        with remote.forward(web_ip, layout.WEB_PORT) as port:
            # Asking the health path: an update that launches nothing is then checked already.
            self.healthy = webprobe.wait_answering(remote, app, self.delivered.ref, self.processes, port, self.host,
                                                   opts.health_path, opts.start_timeout) < 500

    def put_processes_back(self) -> bool:
        """Undo of start: the previous compose file (and secrets) running again; for a first
        deploy, the new containers stopped (data volumes stay). True when the previous runs."""
        remote, app, before = self.remote, self.app, self.facts
        if before.compose_text and before.deployed:
            appstate.write(remote, layout.app_compose(app), before.compose_text, 0o644)
            compose.run_app(remote, app, ["up", "-d", "--remove-orphans"], reporter=self.reporter, timeout=300)
            return True
        compose.run_app(remote, app, ["down", "--remove-orphans"], reporter=self.reporter, timeout=300, check=False)
        remote.remove(layout.app_compose(app))
        return False

    def load_archive(self) -> None:
        """The archive's data into the new app (labdeploy.data.restore.load_archive), its
        processes stopped meanwhile; then the web process must answer again."""
        restore.load_archive(self.remote, self.app, self.options.archive, self.processes, self.report)
        self.healthy = False  # before launch: the launch step asks; after it: asked here
        if getattr(self, "launched", False):
            _wait_healthy_again(self)

    # ------------------------------------------------------------------ 6. route

    def route(self) -> None:
        # A maintenance page that is on stays on through an update (the researcher turns it off).
        site = maintenance.carry(self.facts.site_text, caddy.site_block(self.app, self.settings))
        if site != (self.facts.site_text or ""):
            self.undo.append(("route", self.put_route_back))
            stack.route_site(self.remote, self.app, site)  # written and reloaded in one round trip

    def put_route_back(self) -> None:
        _put_route_back(self)

    # ------------------------------------------------------------------ 7. launch

    def launch(self) -> None:
        remote, app, opts, image = self.remote, self.app, self.options, self.delivered.ref
        launch = (opts.launch if opts.launch is not None else self.operation == "deploy") and not self.switched
        if launch or not self.healthy:
            web_ip = webprobe.web_address(remote, app, image, self.processes, self.seen, check_forwarding=False)
            with remote.forward(web_ip, layout.WEB_PORT) as port:
                if launch:
                    webprobe.launch(port, self.host, opts.launch_attempts, self.report)
                webcheck.healthy(port, self.host, opts.health_path, 30)
        # A worker or clock that dies on import needs a moment to show it; without this
        # wait such a deploy could be reported a success.
        settle.wait_started(lambda: settle.snapshot(remote, app), image, self.started_at, seen=self.seen,
                            on_crash=webprobe.stopped_at_start, services=self.processes,
                            note=lambda text: self.report(LogLine(text, "launch")))
        if self.spec is not None and "worker" in self.processes:
            # Running is not working: prove the worker completes a job (rq, as Dallinger uses).
            jobs.prove_worker(remote, app)
            self.report(LogLine("the worker ran a test job", "launch"))
        self.launched = True

    # ------------------------------------------------------------------ 8. record

    def record_state(self) -> None:
        opts = self.options
        state = {"app": self.app, "version": self.version, "image": self.delivered.ref,
                 "image_id": self.delivered.image_id, "experiment_id": self.config.get("DALLINGER_UID"),
                 "redis_image": self.redis_image, "base_image": self.build_args.get("BASE_IMAGE", ""),
                 "pooler": self.use_pooler,
                 "pgbouncer_image": self.remembered["pgbouncer_image"]["value"] if self.use_pooler else "",
                 "deployed_at": _now(), "who": self.lock.info.who, "mode": opts.mode, "domain": self.settings.domain,
                 "url": caddy.app_url(self.app, self.settings), "operation": self.operation,
                 "health_path": opts.health_path,  # a restart checks a fresh web container with it
                 "memory_limit": self.limits.memory, "cpu_limit": self.limits.cpus,
                 "working_query": participants.remembered_query(opts.working_query, self.facts.state)}
        self.record.outcome, self.record.finished_at = "success", _now()
        self.record.duration_s = round(time.monotonic() - self.t0, 2)
        history.record_success(self.remote, state, self.record)

    def result(self) -> DeployResult:
        url = caddy.app_url(self.app, self.settings)
        values = self.values
        return DeployResult(
            app=self.app, url=url, version=self.version, image=self.delivered.ref, image_id=self.delivered.image_id,
            dashboard_url=url + "dashboard", dashboard_user=values["dashboard_user"],
            dashboard_password=Secret(values["dashboard_password"]), operation=self.operation,
            duration_s=round(time.monotonic() - self.t0, 2), warnings=self.warnings,
            ssh={k: self.remote.stats[k] - self.stats0.get(k, 0) for k in ("connections", "commands")},
            secret_names=sorted(values), data=_data_label(self), experiment_id=self.config.get("DALLINGER_UID"),
            remembered=self.remembered)

    # ------------------------------------------------------------------ failure

    def fail(self, exc: BaseException) -> None:
        """Report, undo, record and raise DeployFailed. Each part is best effort: a lost
        connection must not hide the original error."""
        logs, rolled_back, notes = "", False, []
        try:
            if self.current in ("start", "route", "launch", "record"):
                logs = _failure_logs(self, exc)
                for line in logs.splitlines():
                    self.reporter(LogLine(line, "logs"))
            if self.undo:
                self.reporter(LogLine("putting the previous state back", "rollback"))
            for _what, action in reversed(self.undo):
                rolled_back = bool(action()) or rolled_back
        except Exception as inner:  # noqa: BLE001 - the original error matters more
            notes.append(f"(putting things back also failed: {inner})")
        self.record_failure(exc, rolled_back)
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        hint = getattr(exc, "hint", "") or "Read the logs below, fix the experiment, and deploy again."
        if isinstance(exc, RemoteError) and not isinstance(exc, CommandFailed):
            hint = "The connection dropped. Run the deploy again: it picks up where it stopped. " + hint
        text = f"The deploy of {self.app!r} failed at the step '{self.current}': {message}{self.after(rolled_back)}"
        text += (" " + " ".join(notes)) if notes else ""
        text += ("\n\nLast lines of the app's logs:\n" + logs[-4000:]) if logs else ""
        known = self.known_secrets
        raise DeployFailed(redact(text, known), redact(hint, known), failed_step=self.current,
                           logs=redact(logs, known), rolled_back=rolled_back) from exc

    def after(self, rolled_back: bool) -> str:
        """What state the failure left, in the failure's message."""
        if not any(what == "processes" for what, _ in self.undo):
            return " The app's running version (if any) was not touched."
        version = (self.facts.state or {}).get("version", "?")
        if self.gated and not self.switched:
            return f" The previous version ({version}) kept serving: no participant reached the new one."
        if self.facts.deployed:
            return (f" The previous version ({version}) is running again." if rolled_back
                    else " The previous version could not be restarted automatically.")
        return " Its containers were stopped; its database was kept, so a rerun continues from here."

    def record_failure(self, exc: BaseException, rolled_back: bool) -> None:
        try:
            self.record.outcome = "rolled back" if rolled_back else "failed"
            self.record.failed_step, self.record.finished_at = self.current, _now()
            # The end of a message holds the real error (a build's output ends with it).
            self.record.message = redact(str(getattr(exc, "message", exc)), self.known_secrets)[-2000:]
            self.record.duration_s = round(time.monotonic() - self.t0, 2)
            history.append(self.remote, self.record)
        except Exception:  # noqa: BLE001 - e.g. the connection is gone; the lock expiry covers it
            pass


# --------------------------------------------------------------------------- the API

@pool.closes_what_it_opens
def _readiness(remote, settings: stack.StackSettings, domain: Optional[str], app: str):
    """The readiness table for deploying `app`: the app's own name under its domain is checked."""
    return readiness.check(remote, ports=(int(settings.http_port), int(settings.https_port)),
                           domain=domain or settings.domain or "", app=app)


def _refuse_archive_for_existing_app(d: Deploy) -> None:
    if d.options.archive is not None and (d.operation == "update" or d.facts.app_dir):
        raise ValidationError(f"An archive starts a new app; {d.app!r} is deployed already. Nothing was changed.",
                              "Restore the archive into it instead (its data is backed up first), or deploy "
                              "under a new name.", code="invalid.archive.app_exists")


def _participants_first(d: Deploy) -> None:
    """An update says how many participants are working before it replaces anything, and with
    `wait_idle` waits until none is (participants.wait_idle: bounded, raises on timeout)."""
    if d.operation != "update":
        return
    found = participants.read(d.remote, [d.app])[d.app]
    d.report(LogLine(found.describe(), "participants"))
    if d.options.wait_idle and found.working != 0 and (found.working is not None or found.source):
        participants.wait_idle(d.remote, d.app, float(d.options.idle_timeout), reporter=_sub_reporter(d.report,
                                                                                                    "participants"))
        d.lock.refresh()  # a long wait must not let the lock expire under the update


def _before_start(d: Deploy) -> list:
    """The calls the start step needs done first, independent of each other (so each can go on
    its own channel of the connection): the participants said, the assets, the pooler's
    sitecustomize. When the update waits for participants, that wait is done here, before
    anything changes."""
    remote, app = d.remote, d.app

    def sitecustomize() -> None:  # mounted read-only into the processes (labdeploy.server.pooler)
        appstate.write(remote, f"{layout.app_dir(app)}/{pooler.PYTHON_DIR}/sitecustomize.py", pooler.SITECUSTOMIZE,
                       0o644)

    if d.options.wait_idle:
        _participants_first(d)
    return [*(() if d.options.wait_idle else (lambda: _participants_first(d),)),
            lambda: assets.upload(remote, app, d.experiment_dir, d.report), *((sitecustomize,) if d.use_pooler else ())]


def _put_route_back(d: Deploy) -> None:
    """Undo of route: the previous site file served again (or none)."""
    try:
        if d.facts.site_text is not None:
            stack.route_site(d.remote, d.app, d.facts.site_text)
        else:
            d.remote.remove(layout.caddy_site(d.app))
            stack.reload_caddy(d.remote)
    except LabdeployError as exc:
        if d.facts.site_text is not None and exc.code == "stack.caddy.not_running":
            # Nothing was written: the file says again what Caddy will serve once it runs.
            appstate.write(d.remote, layout.caddy_site(d.app), d.facts.site_text, 0o644)
        d.report(LogLine(f"caddy reload: {exc.message}", "rollback"))


def _failure_logs(d: Deploy, exc: BaseException) -> str:
    """The processes' last lines; a new web container the switch refused (and removed) first."""
    logs = containers.failure_logs(d.remote, d.app)
    refused = getattr(exc, "switch_logs", "")
    return f"----- web (the new version, removed) -----\n{refused}\n{logs}" if refused else logs


def _release(d: Deploy) -> None:
    """The lock goes; a connection lost for good must not hide the deploy's own outcome (a
    rerun from here takes the lock over, anyone else once it expires)."""
    try:
        d.lock.release()
    except LabdeployError as exc:
        d.report(WarningEvent(f"The deploy lock could not be released: {exc.message}",
                              "A rerun from this computer takes it over; others wait until it expires."))


def _data_label(d: Deploy) -> str:
    if d.operation == "update" or d.facts.app_dir:
        return "kept"
    return {"reuse": "reused", "replace": "replaced"}.get(d.options.existing_data or "", "new")


def _wait_healthy_again(d: Deploy) -> None:
    web_ip = webprobe.web_address(d.remote, d.app, d.delivered.ref, d.processes, d.seen, check_forwarding=False)
    with d.remote.forward(web_ip, layout.WEB_PORT) as port:
        webcheck.healthy(port, d.host, d.options.health_path, 60)


def deploy(experiment_dir, app: str, server, *, options: Optional[DeployOptions] = None,
           reporter: Optional[Reporter] = None, _operation: str = "deploy", **settings) -> DeployResult:
    """Deploy an experiment folder as `app` on `server` (a Remote, Server or registered name).

    `options` (a DeployOptions) or keyword arguments of the same names say how: the transfer
    `mode`, `config` and `secrets` (keys whose names say secret go to the 0600 secrets file;
    secrets stay across updates until named in `unset_secrets`), `domain`, `redis_image`,
    `pooler` / `pgbouncer_image` (each app's own PgBouncer, on by default for
    Dallinger/PsyNet apps), `build_args`, `connection_limit`, `health_path`, `launch`,
    `capacity`, `credentials` / `logout_after_pull` (registry mode), `dockerfile`
    ('generated' for labdeploy's), `existing_data` ('reuse' or 'replace' the data a destroyed
    app of this name left). Images left out are remembered per app; the result's
    `remembered` says where each value came from. Returns the URL and dashboard login (the
    password masked until `.reveal()`).
    """
    opts = DeployOptions.of(options, **settings)
    if opts.engine == "swarm":  # every input checked as for one server, then Swarm's own path
        checked = Deploy(experiment_dir, app, None, opts, _operation, None)
        checked.check_inputs()
        return swarm.deploy(checked, server, opts, _operation, reporter)
    if isinstance(server, str) and server == fleet.AUTO:
        return _deploy_where_there_is_room(experiment_dir, app, opts, _operation, reporter)
    run = Deploy(experiment_dir, app, server, opts, _operation, reporter)
    result = run.run()
    changes.announce(_operation, result.app, run.remote.host)  # the notebook's other panels re-read
    return result


def _deploy_where_there_is_room(experiment_dir, app: str, opts: DeployOptions, operation: str,
                                reporter: Optional[Reporter]) -> DeployResult:
    """server="auto": the registered server with the most room (fleet.place), asked once input is checked."""
    if operation != "deploy":
        raise ValidationError("An update goes to the server the app runs on; 'auto' only chooses for a new app.",
                              "Name the app's server.", code="invalid.server_auto")
    fleet.check_server_argument(fleet.AUTO)
    Deploy(experiment_dir, app, None, opts, operation, None).check_inputs()  # bad input: refused before asking
    with pool.scope():  # the chosen server's connection is the deploy's too
        placement = fleet.place()
        (reporter or null_reporter)(LogLine(f"placed on {placement.reason}", "fleet"))
        run = Deploy(experiment_dir, app, placement.server, opts, operation, reporter)
        result = run.run()
    result.placement, result.placed_on = placement.reason, placement.server
    changes.announce(operation, result.app, run.remote.host)
    return result


def _check_limits(d: Deploy) -> None:
    """Dallinger's worker count and a given memory limit, checked before the server is touched
    (a remembered limit is checked against the worker count in preflight)."""
    d.workers = limits.workers(d.config)
    if d.options.memory_limit is not None:
        limits.Limits(limits.memory(d.options.memory_limit), 1.0, d.workers).check(d.processes)


def _choose_limits(d: Deploy) -> None:
    """The app's limits: given, else its last deploy's, else derived from the 5 GB rule (the
    server's CPUs and memory, read only then)."""
    opts, state = d.options, d.facts.state
    size = hostfacts.read_size(d.remote.run(hostfacts.usage(), check=False).stdout) \
        if limits.needs_server_size(opts.cpu_limit, state) else None
    d.limits, where = limits.chosen(opts.memory_limit, opts.cpu_limit, state, size, d.workers)
    d.limits.check(d.processes)
    d.remembered.update(where)
    unset = [what for what, value in (("memory", d.limits.memory), ("CPU", d.limits.cpus)) if value is None]
    if unset:  # an app from before limits: an out-of-memory kill mid-study would be new, so none is set
        d.report(LogLine(f"no {' or '.join(unset)} limit: the app has run without one, and an update keeps it "
                         "so until a limit is given", "preflight"))
    if d.workers > 1:
        d.report(LogLine(f"{d.workers} worker processes ({limits.WORKERS_KEY})", "preflight"))


def _read_experiment(d: Deploy) -> None:
    """What the folder holds (Dallinger, PsyNet or its own Dockerfile). ssh-copy and registry
    build the image here, and PsyNet's preparation runs here in every mode: without a usable
    Docker on this computer they are refused now, before the server is touched. server-build
    asks nothing of this computer's Docker."""
    d.spec, d.commands, d.processes, d.base_config, d.base_secrets = \
        experimentcommands.read(d.experiment_dir, d.options.dockerfile)
    found = None
    if d.spec is not None and d.spec.kind == "psynet":
        found = localdocker.require_for_psynet()
    localdocker.require(d.options.mode, found)


def check_inputs(experiment_dir, app: str, options: Optional[DeployOptions] = None, **settings) -> None:
    """Refuse bad input the way deploy() would, without connecting (front ends call it before
    they open the connection)."""
    Deploy(experiment_dir, app, None, DeployOptions.of(options, **settings), "deploy", None).check_inputs()


def update(experiment_dir, app: str, server, *, options: Optional[DeployOptions] = None,
           reporter: Optional[Reporter] = None, **settings) -> DeployResult:
    """Ship new code to a deployed app. Its database, Redis data and files are kept; on a
    failure the previous version keeps running. It launches nothing unless asked (launch=True)."""
    return deploy(experiment_dir, app, server, options=options, reporter=reporter, _operation="update", **settings)
