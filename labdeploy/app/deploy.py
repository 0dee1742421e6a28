"""Deploy, update and destroy an experiment on a server: the seed's `psynet deploy ssh`.

`deploy(experiment_dir, app, server)` runs eight steps, each reported to the reporter:

1. preflight  valid name, Dockerfile, server ready, memory, name not in use
2. lock       the app's deploy lock on the server (atomic mkdir; expires; breakable)
3. image      the experiment's image onto the server (labdeploy.transfer's modes)
4. database   the app's own role and database with a connection limit; secrets file 0600
5. start      compose file, assets, `compose up` (v1 or v2); wait until web answers its health path
6. route      `<app>.<domain>` in Caddy (caddy.d/<app>, reload)
7. launch     POST /launch through the SSH connection (works before DNS), then health; then
              wait until worker and clock have settled (labdeploy.settle) or report their crash
8. record     deploy.json and a history line on the server

A failure after the image step stops there, reports the step and the containers' last log
lines, puts the previous version back (or stops a first deploy's containers), and releases
the lock. Data (database, Redis volume, ~/dallinger-data/<app>) is never touched by a
failure. Everything goes over one SSH connection.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import shlex
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence

import yaml

from . import appcompose, appdata, history, settle
from ..server import caddy, compose, database, layout, psql, readiness, stack
from ..experiment import dallinger
from ..experiment import folder
from ..watch import jobs
from .. import names
from ..ssh import pool as session
from ..server import pooler as app_pooler  # deploy()'s `pooler` is the on/off option
from ..errors import CommandFailed, LabdeployError, Remedy, RemoteError, UnknownApp, ValidationError
from ..server.locks import DeployLock
from ..progress import LogLine, Progress, Reporter, StepFinished, StepStarted, WarningEvent, null_reporter, step
from ..redaction import redact, redacting


class _QuietRefusals(logging.Filter):
    """Waiting for the web process means connecting before it listens; paramiko logs each
    refused tunnel channel at ERROR, which Python prints on stderr (red noise in a notebook).
    Those refusals are expected here and handled, so they are not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED" not in record.getMessage()


logging.getLogger("paramiko.transport").addFilter(_QuietRefusals())

STEPS = ("preflight", "lock", "image", "database", "start", "route", "launch", "record")
UPDATE_STEPS = STEPS
LOG_TAIL = 40  # container log lines shown with a failure
STOPPED_AT_START = "The app's processes stopped right after starting: {}."
STOPPED_AT_START_HINT = ("Read the container logs below: usually the real error is at their end. "
                         "Try the image locally (`docker run IMAGE`) to reproduce it.")
DEFAULT_DASHBOARD_USER = "admin"


class DeployError(LabdeployError):
    """A deploy could not even start (bad input, server not ready, name in use)."""


class AppExists(DeployError):
    """The app name is already deployed on this server."""

    code = "app.exists"
    remedy = Remedy("app.exists")  # the front ends word it with their app (the raise gives the API words)


class DataKept(DeployError):
    """A first deploy found the data a destroyed app of this name left behind."""

    def __init__(self, message: str, hint: str = "", *, tables=None) -> None:
        super().__init__(message, hint)
        self.tables = tables  # DataFrame: table, rows


EXISTING_DATA = ("reuse", "replace")
# Secrets deploy writes itself: a caller's value would cut the app off its database or queue.
MANAGED_SECRETS = frozenset({"DATABASE_URL", "REDIS_URL"})


class DeployFailed(LabdeployError):
    """A step after the image failed; the previous version was put back."""

    def __init__(self, message: str, hint: str = "", *, failed_step: str = "", logs: str = "",
                 rolled_back: bool = False) -> None:
        super().__init__(message, hint)
        self.failed_step = failed_step
        self.logs = logs
        self.rolled_back = rolled_back


class Secret:
    """A secret value that shows itself masked (repr, str, notebook output) until revealed."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('••••••••')"

    __str__ = lambda self: "••••••••"  # noqa: E731

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


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
    remembered: dict = field(default_factory=dict)  # redis_image / base_image: {"value", "from"}
    data: str = "new"  # the database: new, kept (update or rerun), reused or replaced (after a destroy)

    def summary(self) -> str:
        return (f"{self.app} ({self.version}) is live at {self.url}\n"
                f"dashboard: {self.dashboard_url} user {self.dashboard_user}, password {self.dashboard_password}\n"
                f"secrets: {', '.join(self.secret_names) or 'none'}")


# --------------------------------------------------------------------------- small helpers

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


# $1 = app dir. Everything preflight and the rollback need, in one round trip.
_FACTS = ('[ -d "$1" ] && echo @@appdir; echo @@stack; cat dallinger/stack.json 2>/dev/null; echo; echo @@state; cat "$1/deploy.json" 2>/dev/null; '
          'echo; echo @@compose; cat "$1/docker-compose.yml" 2>/dev/null; echo @@site; cat "$2" 2>/dev/null; '
          'echo @@secrets; cat "$1/secrets.env" 2>/dev/null; echo @@stackup; '
          'docker inspect -f "{{.Name}} {{.State.Running}}" dallinger-postgresql dallinger-caddy 2>/dev/null; '
          'echo @@end')


def _sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines(keepends=True):
        if line.startswith("@@") and line.strip()[2:].isalpha():
            current = line.strip()[2:]
            out[current] = ""
        elif current:
            out[current] += line
    return out


@dataclass
class _Facts:
    settings: Optional[stack.StackSettings]
    state: Optional[dict]
    compose_text: Optional[str]
    site_text: Optional[str]
    secrets: dict
    secrets_text: Optional[str] = None  # as it was, to put back if an update rolls back
    stack_running: bool = False
    app_dir: bool = False  # ~/dallinger/<app> exists: deployed, or a first deploy that stopped half-way


def _gather(remote, app: str) -> _Facts:
    res = remote.run(["sh", "-c", _FACTS, "sh", layout.app_dir(app), layout.caddy_site(app)], check=False)
    s = _sections(res.stdout)

    def js(text: str) -> Optional[dict]:
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            return None

    st = js(s.get("stack", ""))
    settings = stack.StackSettings.from_dict(st.get("settings", {})) if st else None
    return _Facts(settings=settings, state=js(s.get("state", "")),
                  compose_text=s.get("compose") or None, site_text=s.get("site") or None,
                  secrets=appcompose.parse_env(s.get("secrets", "")), secrets_text=s.get("secrets") or None,
                  stack_running=s.get("stackup", "").count(" true") == 2, app_dir="appdir" in s)


def _check_dockerfile(experiment_dir: Path, dockerfile: str) -> None:
    if not experiment_dir.is_dir():
        raise ValidationError(f"The experiment folder {experiment_dir} does not exist.",
                              "Give the folder that holds your experiment's Dockerfile.")
    if not (experiment_dir / dockerfile).is_file():
        raise ValidationError(f"There is no {dockerfile} in {experiment_dir}.",
                              "Deploy the experiment's own folder (the one with its Dockerfile), or add a "
                              "Dockerfile (see examples/stroop/Dockerfile).")


def _preflight(remote, app: str, operation: str, settings_override, capacity: str, reporter: Reporter,
               existing_data: Optional[str] = None) -> _Facts:
    facts = _gather(remote, app)
    if facts.settings is None:
        raise DeployError(f"The server {remote.host} has not been prepared for experiments yet "
                          "(no ~/dallinger/stack.json).",
                          "Prepare it first: the setup panel's last step, or labdeploy.server.stack.prepare(server, "
                          "settings).")
    if settings_override is not None:
        facts.settings = settings_override
    deployed = facts.state is not None
    if operation == "deploy" and deployed:
        raise AppExists(f"An app named {app!r} is already deployed on {remote.host} "
                        f"(version {facts.state.get('version', '?')}, {facts.state.get('deployed_at', '')}).",
                        "To ship new code to it, use update(); to start a separate copy, choose another name; "
                        "to remove it, destroy() it first.")
    if operation == "update" and not deployed:
        raise UnknownApp(f"There is no deployed app named {app!r} on {remote.host} to update.",
                         "Check the name (apps(server) lists them), or deploy() it first.")
    if operation == "update" and facts.stack_running:
        return facts  # the server took this app before and its shared services run: no full check
    table = readiness.check(remote, ports=(int(facts.settings.http_port), int(facts.settings.https_port)))
    for warning in judge_readiness(table, operation=operation, capacity=capacity):
        reporter(warning)
    if operation == "deploy" and not facts.app_dir:
        _check_kept_data(remote, app, existing_data, reporter)  # needs the shared PostgreSQL, checked above
    return facts


def _remembered(name: str, given: Optional[str], facts: _Facts, default: str) -> dict:
    """A setting's value and where it came from: given now, the app's last deploy, the
    server's stack settings, or labdeploy's default."""
    if given:
        return {"value": given, "from": "given"}
    if facts.state and facts.state.get(name):
        return {"value": str(facts.state[name]), "from": "app"}
    if facts.settings is not None and getattr(facts.settings, name, ""):
        return {"value": getattr(facts.settings, name), "from": "server"}
    return {"value": default, "from": "default"}


def _previous_uid(facts: _Facts) -> Optional[str]:
    """The experiment id the app runs with now (deploy.json, else its compose file)."""
    if facts.state and facts.state.get("experiment_id"):
        return str(facts.state["experiment_id"])
    try:
        env = yaml.safe_load(facts.compose_text or "")["services"]["web"]["environment"]
        return str(env.get("DALLINGER_UID") or "") or None
    except (TypeError, KeyError, AttributeError, yaml.YAMLError):
        return None


def _check_kept_data(remote, app: str, choice: Optional[str], reporter: Reporter) -> None:
    """A first deploy under a name whose destroyed app left data behind: the researcher must
    choose. Reusing silently would mix a new study with old participants (who are then
    refused as having taken part); replacing needs the same fresh export as destroy."""
    kept = appdata.kept(remote, app)
    if not kept.worth_asking:
        return
    if choice is None:
        raise DataKept(
            f"The server still holds data of an earlier app named {app!r}: {kept.describe()}. "
            "Nothing was changed.",
            "Deploy again choosing what happens to it: existing_data='reuse' (CLI --reuse-data) continues "
            "with that data, so its participants count as having taken part; existing_data='replace' "
            "(CLI --replace-data) deletes it first and needs a fresh export of it (export it first). "
            "Or deploy under another name.", tables=kept.tables)
    if choice == "replace":
        from ..export import check_destroy  # the same rule as destroy --remove-data

        check_destroy(app, remote, reporter=reporter)
    reporter(WarningEvent(f"{'Reusing' if choice == 'reuse' else 'Replacing'} the data an earlier {app!r} left: "
                      f"{kept.describe()}.", ""))


def split_config(config: Optional[Mapping[str, str]], secrets: Optional[Mapping[str, str]]
                 ) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret): one rule for every source of configuration (config.txt,
    ~/.dallingerconfig, `--config`, the panel, the API). A key whose name says secret goes to
    the 0600 secrets file wherever it came from; the compose file (0644) never holds one."""
    plain: dict[str, str] = {}
    secret = {appcompose.env_key(k): str(v) for k, v in (secrets or {}).items()}
    for key, value in (config or {}).items():
        appcompose.env_key(key)
        (secret if dallinger.is_sensitive(key) else plain)[key] = str(value)
    managed = sorted(MANAGED_SECRETS & set(secret))
    if managed:
        raise ValidationError(f"{', '.join(managed)} can't be set: labdeploy writes it for the app's own "
                              "database and Redis.", "Leave it out of the configuration.")
    appcompose.secrets_env(secret)  # refuse values that can't be stored, before anything changes
    return plain, secret


def _secret_values(previous: Mapping[str, str], given: Mapping[str, str], unset: Sequence[str]) -> dict[str, str]:
    """The app's secrets after this deploy: the ones it had (a secret stays until it is unset
    explicitly, so an update without it does not silently drop it), then the given ones."""
    values = {k: v for k, v in previous.items() if k not in unset}
    values.update(given)
    return values


_BLOCKING = {"SSH login", "Docker installed", "Docker usable without sudo", "Docker Compose",
             "Shared services (PostgreSQL, Caddy)"}


def judge_readiness(table, *, operation: str = "deploy", capacity: str = "warn") -> list:
    """What the readiness table means for a deploy (pure): raises DeployError for a check that
    blocks it, returns warnings for the rest. Memory counts only for a new app (an update
    replaces containers that already use their share); `capacity` is warn / refuse / ignore."""
    warnings = []
    for _, row in table.iterrows():
        if row["check"] in _BLOCKING and not row["ok"]:
            raise DeployError(f"The server is not ready: {row['check']}: {row['detail']}.", row["hint"])
        if row["check"] == "Memory" and not row["ok"] and operation == "deploy" and capacity != "ignore":
            msg = f"Not enough memory for another experiment: {row['detail']}."
            if capacity == "refuse":
                raise DeployError(msg, row["hint"] + " (or deploy with capacity='warn' to go ahead anyway)")
            warnings.append(WarningEvent(msg, row["hint"]))
        if row["check"] == "Disk space" and not row["ok"]:
            warnings.append(WarningEvent(f"Low disk space: {row['detail']}.", row["hint"]))
    return warnings


def _upload_assets(remote, app: str, experiment_dir: Path, reporter: Reporter) -> int:
    """experiment/assets -> ~/dallinger-data/<app>/assets, swapped in whole (one command)."""
    base = layout.app_data(app)
    remote.makedirs(base, 0o755)
    src = experiment_dir / "assets"
    if src.is_symlink():
        folder.link_target(experiment_dir.resolve(), "assets")  # refused if it leads out of the folder
    if not src.is_dir():
        return 0
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(src.rglob("*")):
            if path.is_symlink():
                continue  # never follow links out of the experiment folder
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
            count += path.is_file()
    script = ('d="$1"; rm -rf "$d.new" && mkdir -p "$d.new" && tar -xzf - -C "$d.new" --no-same-owner && '
              'chmod -R a+rX "$d.new" && rm -rf "$d.old" && { [ ! -d "$d" ] || mv "$d" "$d.old"; } && '
              'mv "$d.new" "$d" && rm -rf "$d.old"')
    remote.run(["sh", "-c", script, "sh", f"{base}/assets"], stdin=buf.getvalue(), timeout=600)
    reporter(LogLine(f"uploaded {count} asset file(s) to ~/{base}/assets", "assets"))
    return count


def container_logs(remote, app: str, tail: int = LOG_TAIL) -> str:
    """The last lines of each process's log, for a failure message."""
    flt = shlex.quote(f"label=labdeploy.app={names.app_name(app)}")
    script = (f'for c in $(docker ps -aq --filter {flt}); do '
              f'n=$(docker inspect -f \'{{{{index .Config.Labels "labdeploy.service"}}}}\' "$c"); '
              f'[ "$n" = redis ] && continue; echo "----- $n -----"; docker logs --tail {int(tail)} "$c" 2>&1; done')
    return remote.run(["sh", "-c", script], check=False, timeout=60).stdout.strip()


def _web_ip(remote, app: str, image: str, processes: Sequence[str], seen: list, *,
            check_forwarding: bool = True) -> str:
    """The web container's address on the shared network: health and /launch go there
    through the SSH connection, so they work before any DNS record exists. The snapshot it
    read is appended to `seen` (with its time) for the wait that follows."""
    containers = settle.snapshot(remote, app)
    seen.append((containers, time.monotonic()))
    web = containers.get("web")
    if not web or not web["ip"]:
        # A web process that died at once has no address yet: say that, not a network riddle.
        bad = settle.crashed(containers, image, processes)
        if bad:
            raise LabdeployError(STOPPED_AT_START.format(", ".join(bad)), STOPPED_AT_START_HINT)
        raise LabdeployError("The web container is not running on the shared network.",
                             "Read the logs below; `docker compose ps` in ~/dallinger/<app> shows its state.")
    if check_forwarding:
        _check_forwarding(remote, web["ip"])
    return web["ip"]


def _check_forwarding(remote, ip: str) -> None:
    """Fail at once, and say why, when the server's sshd forbids port forwarding (health and
    /launch would otherwise time out with no explanation). A refused port is fine here."""
    import paramiko

    try:
        chan = remote._transport().open_channel("direct-tcpip", (ip, appcompose.WEB_PORT), ("127.0.0.1", 0),
                                                timeout=remote.connect_timeout)
        chan.close()
    except paramiko.SSHException as exc:
        # Only a refusal by sshd's policy is an answer here; a timeout or a refused port means
        # the process is not up (yet), which the wait for the web process judges.
        if isinstance(exc, paramiko.ChannelException) and exc.code == 1:  # ADMINISTRATIVELY_PROHIBITED
            raise LabdeployError(
                "The server's SSH service does not allow port forwarding, which labdeploy uses to check "
                "and launch the app before DNS is set up.",
                "Ask the administrator to set `AllowTcpForwarding local` (or yes) in /etc/ssh/sshd_config "
                "and reload sshd.") from exc


def _together(*calls) -> None:
    """Run independent remote calls at once, each on its own channel of the one connection
    (a round trip each, overlapped); the first failure is raised once all have finished."""
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="labdeploy-deploy") as pool:
        futures = [pool.submit(call) for call in calls]
    for future in futures:
        future.result()


def _http(port: int, method: str, path: str, host: str, timeout: float = 10.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None,
                     headers={"Host": host, "Content-Type": "application/json", "User-Agent": "labdeploy"})
        resp = conn.getresponse()
        return resp.status, resp.read(20000).decode("utf-8", "replace")
    finally:
        conn.close()


def _wait_web(remote, app: str, image: str, processes: Sequence[str], port: int, host: str, path: str,
              timeout: float) -> int:
    """Until the web process answers HTTP at all (any status): it is up; returns the status
    `path` answered. A process that exits or restarts meanwhile fails at once instead of
    after the timeout."""
    deadline = time.monotonic() + timeout
    checked = time.monotonic()  # the caller has just read the containers' state
    while True:
        try:
            return _http(port, "GET", path, host, timeout=10)[0]
        except (OSError, http.client.HTTPException):
            pass
        now = time.monotonic()
        if now - checked > 2:
            checked = now
            bad = settle.crashed(settle.snapshot(remote, app), image, processes)
            if bad:
                raise LabdeployError(STOPPED_AT_START.format(", ".join(bad)), STOPPED_AT_START_HINT)
        if now > deadline:
            raise LabdeployError(f"The web process did not answer on port {appcompose.WEB_PORT} within {timeout:.0f} s.",
                                 "Check that the app listens on $HOST:$PORT (0.0.0.0:5000); see the logs below.")
        time.sleep(0.1)  # a refused attempt costs one channel open: poll often


def _launch(port: int, host: str, attempts: int, reporter: Reporter) -> dict:
    """POST /launch with retries and backoff; the answer must be JSON with status success."""
    delay, last = 1.0, ""
    for attempt in range(1, attempts + 1):
        try:
            status, body = _http(port, "POST", "/launch", host, timeout=120)
            try:
                data = json.loads(body)
            except ValueError:
                data = {}
            if status < 300 and data.get("status") == "success":
                reporter(LogLine(f"/launch: {body.strip()[:300]}", "launch"))
                return data
            last = f"HTTP {status}: {body.strip()[:800]}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"no answer ({exc})"
        reporter(LogLine(f"/launch attempt {attempt} failed: {last}", "launch"))
        if attempt < attempts:
            time.sleep(delay)
            delay *= 2
    raise LabdeployError(f"POST /launch did not succeed after {attempts} attempts; last answer: {last}",
                         "The experiment's launch code failed: read the web log below for its traceback.")


def _health(port: int, host: str, path: str, timeout: float) -> None:
    deadline, last = time.monotonic() + timeout, ""
    while True:
        try:
            status, body = _http(port, "GET", path, host, timeout=10)
            if status < 500:
                return
            last = f"HTTP {status}: {body.strip()[:300]}"
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise LabdeployError(f"The app is not healthy: GET {path} answered {last}.",
                                 "Read the web log below.")
        time.sleep(0.5)



# --------------------------------------------------------------------------- deploy / update

@session.closes_what_it_opens
def deploy(experiment_dir, app: str, server, *, mode: str = "server-build", build_args: Optional[dict] = None,
           base_name: Optional[str] = None, domain: Optional[str] = None,
           config: Optional[Mapping[str, str]] = None, secrets: Optional[Mapping[str, str]] = None,
           connection_limit: int = database.DEFAULT_CONNECTION_LIMIT,
           redis_image: Optional[str] = None, capacity: str = "warn",
           health_path: str = "/", launch: bool = True, launch_attempts: int = 4, start_timeout: float = 120,
           credentials=None, logout_after_pull: bool = False, dockerfile: str = "Dockerfile",
           unset_secrets: Sequence[str] = (), existing_data: Optional[str] = None,
           pooler: Optional[bool] = None, pgbouncer_image: Optional[str] = None,
           reporter: Optional[Reporter] = None,
           _operation: str = "deploy") -> DeployResult:
    """Deploy an experiment folder as `app` on `server` (a Remote, Server or registered name).

    `config` becomes the containers' environment (Dallinger reads each config key from an
    environment variable of that name); `secrets`, and config keys whose names say secret, go
    to the 0600 secrets file instead. Secrets stay across updates until named in
    `unset_secrets`. When a destroyed app of the same name left its data, a deploy stops and
    asks: `existing_data="reuse"` continues with it, `"replace"` deletes it (after checking
    it has a fresh export).
    `domain` overrides the one the server was prepared with. The Redis image and the base
    image (build argument BASE_IMAGE) are remembered: when not given, the app's last choice
    is used, else the server's (stack settings), else the default; the result's
    `remembered` says which.
    `pooler`: the app reaches PostgreSQL through its own PgBouncer (labdeploy.pooler), which
    keeps its connections within the role's `connection_limit` however many the app's
    processes open (requests wait their turn instead of failing). None keeps the app's last
    choice; a new app gets it when it is a Dallinger/PsyNet experiment, not when it brings its
    own Procfile (psycopg 3's automatic prepared statements need PgBouncer 1.21+; pass
    pooler=True with such an image). Its image, `pgbouncer_image`, is remembered like the
    Redis image. In mode "registry",
    `credentials` log the server in for the pull; with `logout_after_pull` that login lives in
    a private folder deleted after the pull, so the server keeps no registry password.
    Returns the URL and dashboard login (the password masked until `.reveal()`).
    """
    reporter = reporter or null_reporter
    if logout_after_pull and credentials is None:
        raise ValidationError("logout_after_pull needs credentials: without a login of this deploy's own "
                              "there is nothing to log out of.",
                              "Pass credentials=registry.Credentials(...), or leave logout_after_pull off.")
    started, t0 = _now(), time.monotonic()
    commands = None
    spec = None
    with step(reporter, "preflight"):
        # Every input is checked before anything touches the server.
        app = names.app_name(app)
        experiment_dir = folder.local_folder(experiment_dir)
        folder.check_links(experiment_dir)  # nothing a link outside the folder points to ever travels
        if capacity not in ("warn", "refuse", "ignore"):
            raise ValidationError(f"capacity={capacity!r} is not one of warn, refuse, ignore.",
                                  "Use 'warn' (default).")
        if not isinstance(health_path, str) or not health_path.startswith("/"):
            raise ValidationError(f"The health path {health_path!r} must start with '/'.",
                                  "Use e.g. '/' or '/health'.")
        database.connection_limit(connection_limit)
        if dallinger.is_experiment_folder(experiment_dir) and not (experiment_dir / "Procfile").is_file():
            # A Dallinger/PsyNet folder: its commands, config (config.txt + ~/.dallingerconfig,
            # secret keys apart) and, when it has none, a generated Dockerfile.
            # The image's Dallinger/PsyNet releases are chosen (PyPI, cached) before anything is built.
            spec = dallinger.spec(experiment_dir, dockerfile=dockerfile)
            commands = spec.commands
            processes = spec.services  # no clock unless the config has clock_on
            config = {**spec.env, **(config or {})}
            secrets = {**spec.secret_env, **(secrets or {})}
        else:
            if dockerfile == dallinger.GENERATED:
                raise ValidationError("dockerfile='generated' is for Dallinger/PsyNet experiments (experiment.py and "
                                      "config.txt, no Procfile); this folder needs its own Dockerfile.",
                                      "Give the name of the folder's Dockerfile (default 'Dockerfile').")
            _check_dockerfile(experiment_dir, dockerfile)
            commands = appcompose.read_procfile(experiment_dir)
            processes = layout.PROCESS_SERVICES
        config, secrets = split_config(config, secrets)
        unset = [appcompose.env_key(k) for k in unset_secrets]
        if MANAGED_SECRETS & set(unset):
            raise ValidationError(f"{', '.join(sorted(MANAGED_SECRETS & set(unset)))} can't be unset: the app "
                                  "needs it to reach its database and Redis.", "Leave it out of unset_secrets.")
        if existing_data not in (None, *EXISTING_DATA):
            raise ValidationError(f"existing_data={existing_data!r} is not one of {', '.join(EXISTING_DATA)}.",
                                  "Use 'reuse' to continue with the kept data or 'replace' to delete it first.")
        if domain is not None:
            names.domain(domain)
        if redis_image is not None:
            names.image(redis_image, "Redis image")
        if pgbouncer_image is not None:
            names.image(pgbouncer_image, "PgBouncer image")
        if pooler not in (None, True, False):
            raise ValidationError(f"pooler={pooler!r} is not True, False or None.",
                                  "Use True (through PgBouncer), False (straight to PostgreSQL) or None (as before).")
        # From here on every message and event masks the app's secret values, known or found.
        reporter = redacting(reporter, secrets.values())
        remote = session.connect(server)
        stats0 = dict(remote.stats)
        facts = _preflight(remote, app, _operation, None, capacity, reporter, existing_data)
        if spec is not None:  # git hosts in requirements.txt, checked from where the image is built
            dallinger.check_git_sources(spec, mode=mode, remote=remote)
        reporter = redacting(reporter, facts.secrets.values())
        if spec is not None and facts.secrets.get("FLASK_SECRET_KEY") and _operation == "update":
            secrets["FLASK_SECRET_KEY"] = facts.secrets["FLASK_SECRET_KEY"]  # keep sessions valid
        previous_uid = _previous_uid(facts)
        if spec is not None and previous_uid and not spec.uid_from_config:
            # The experiment keeps its identity across updates (recruiters and PsyNet know it by it).
            config["id"] = config["DALLINGER_UID"] = previous_uid
        if domain is not None:
            facts.settings = stack.StackSettings.from_dict({**facts.settings.__dict__, "domain": domain})
        remembered = {"redis_image": _remembered("redis_image", redis_image, facts, appcompose.DEFAULT_REDIS_IMAGE),
                      "base_image": _remembered("base_image", (build_args or {}).get("BASE_IMAGE"), facts, "")}
        redis_image = remembered["redis_image"]["value"]
        if remembered["base_image"]["value"]:
            build_args = {**(build_args or {}), "BASE_IMAGE": remembered["base_image"]["value"]}
    settings = facts.settings
    warnings: list[str] = []

    def collect(event) -> None:
        if isinstance(event, WarningEvent):
            warnings.append(event.message)
        reporter(event)

    lock = DeployLock(remote, app, operation=_operation, reporter=collect)
    with step(reporter, "lock"):
        lock.acquire()
    record = history.DeployRecord(app=app, operation=_operation, who=lock.info.who, started_at=started)
    current = "image"
    rollback_needed = False
    try:
        with step(reporter, "image"), tempfile.TemporaryDirectory(prefix="labdeploy-build-") as tmp:
            # A Dallinger folder is built from a copy: generated Dockerfile, config.txt without secrets.
            context = spec.write_context(Path(tmp) / "context") if spec is not None else experiment_dir
            for note in spec.notes if spec is not None else ():  # which Dockerfile, which releases, why
                collect(WarningEvent(note.text, note.hint) if note.level == "warning" else LogLine(note.text, "image"))
            if spec is not None and spec.kind == "psynet":  # PsyNet's `psynet prepare`, locally
                dallinger.prepare_psynet(context, app=app, server_host=remote.host, ssh_user=remote.user,
                                         postgres_image=settings.postgres_image, redis_image=redis_image,
                                         env={**config, **secrets}, build_args=build_args,
                                         folder_name=spec.folder.path.name, dockerfile=spec.dockerfile_name,
                                         reporter=_sub_reporter(collect, "image"))
            delivered = _deliver(remote, context, app=app, mode=mode, build_args=build_args,
                                 base_name=base_name, credentials=credentials, logout_after_pull=logout_after_pull,
                                 dockerfile=spec.dockerfile_name if spec is not None else dockerfile,
                                 reporter=_sub_reporter(collect, "image"))
        version = delivered.tag
        record.version, record.image, record.image_id = version, delivered.ref, delivered.image_id
        lock.info.version = version

        current = "database"
        with step(reporter, "database", names.db_identifier(app)):
            if existing_data == "replace" and not facts.app_dir:
                # Checked in preflight: a fresh export of it exists. Nothing has written since.
                for what in appdata.remove(remote, app):
                    reporter(LogLine(f"removed the earlier app's {what}", "database"))
            password = facts.secrets.get("DATABASE_URL", "")
            password = password.split(":", 2)[2].split("@", 1)[0] if password.count(":") >= 2 else ""
            if not password:
                password = database.random_password()
            before = app_pooler.in_compose(facts.compose_text)
            use_pooler, why = app_pooler.choose(pooler, before["enabled"], dallinger_app=spec is not None)
            remembered["pooler"] = {"value": use_pooler, "from": why}
            if use_pooler:
                # The app's choice: deploy.json when it records one, else its compose file.
                from dataclasses import replace

                known = replace(facts, state={"pgbouncer_image": before["image"], **(facts.state or {})})
                remembered["pgbouncer_image"] = _remembered("pgbouncer_image", pgbouncer_image, known,
                                                            app_pooler.DEFAULT_IMAGE)
                reporter(LogLine(f"through its own PgBouncer ({remembered['pgbouncer_image']['value']}), at most "
                                 f"{app_pooler.pool_size(connection_limit)} of the role's {connection_limit} "
                                 "connections", "database"))
            values = {
                "dashboard_user": facts.secrets.get("dashboard_user", DEFAULT_DASHBOARD_USER),
                "dashboard_password": facts.secrets.get("dashboard_password") or database.random_password(),
                **_secret_values(facts.secrets, secrets, unset),
                "DATABASE_URL": database.database_url(app, password, pooler=use_pooler),
                "REDIS_URL": database.REDIS_URL,
            }
            gone = [k for k in unset if k in facts.secrets]
            if gone:
                reporter(LogLine(f"secrets removed: {', '.join(gone)}", "database"))
            text = appcompose.secrets_env(values)
            reporter = redacting(reporter, [password, values["dashboard_password"]])

            def secrets_file() -> None:
                remote.makedirs(layout.app_dir(app), 0o755)
                remote.put_bytes(layout.app_secrets(app), text, mode=0o600)
                if use_pooler:  # its password only, in a file of its own (kept when off: a rollback may need it)
                    remote.put_bytes(f"{layout.app_dir(app)}/{app_pooler.ENV_FILE}", app_pooler.env_file(password),
                                     mode=0o600)

            _together(
                lock.refresh,  # records the version, restarts the expiry clock after a long build
                lambda: psql.run_sql(remote, database.provision_sql(app, database.scram_verifier(password),
                                                                    connection_limit)),
                secrets_file)

        current = "start"
        with step(reporter, "start"):
            document = appcompose.app_compose_document(
                app, delivered.ref, version=version, commands=commands, environment=config, redis_image=redis_image,
                processes=processes, connection_limit=connection_limit,
                pooler_image=remembered["pgbouncer_image"]["value"] if use_pooler else None)
            new_compose = appcompose.app_compose_yaml(document)
            _upload_assets(remote, app, experiment_dir, reporter)
            if use_pooler:  # mounted read-only into the processes (labdeploy.pooler)
                remote.makedirs(f"{layout.app_dir(app)}/{app_pooler.PYTHON_DIR}", 0o755)
                remote.put_bytes(f"{layout.app_dir(app)}/{app_pooler.PYTHON_DIR}/sitecustomize.py",
                                 app_pooler.SITECUSTOMIZE, mode=0o644)
            remote.put_bytes(layout.app_compose(app), new_compose, mode=0o644)
            rollback_needed = True
            try:
                compose.run_app(remote, app, ["up", "-d", "--remove-orphans"], reporter=reporter)
            except CommandFailed as exc:
                if use_pooler:  # an image the server can't get: say which setting to change
                    raise app_pooler.image_failure(exc, remembered["pgbouncer_image"]) or exc
                raise
            if use_pooler:
                # A pooler replaced under running processes (its settings changed, not their code)
                # leaves them holding dead connections: restart them now, not at a participant's request.
                stale = app_pooler.stale_processes(remote.run(app_pooler.started_argv(app), check=False).stdout,
                                                   processes)
                if stale:
                    compose.run_app(remote, app, ["restart", *stale], reporter=reporter, timeout=300)
            started_at = time.monotonic()
            host = f"{app}.{settings.domain or 'localhost'}"
            seen: list = []  # container readings, for the wait in the launch step
            web_ip = _web_ip(remote, app, delivered.ref, processes, seen)
            with remote.forward(web_ip, appcompose.WEB_PORT) as port:
                # Asking the health path: an update that launches nothing is then checked already.
                healthy = _wait_web(remote, app, delivered.ref, processes, port, host, health_path,
                                    start_timeout) < 500

        current = "route"
        with step(reporter, "route", caddy.app_url(app, settings)):
            site = caddy.site_block(app, settings)
            if site != (facts.site_text or ""):
                remote.put_bytes(layout.caddy_site(app), site, mode=0o644)
                stack.reload_caddy(remote)

        current = "launch"
        with step(reporter, "launch"):
            if launch or not healthy:
                web_ip = _web_ip(remote, app, delivered.ref, processes, seen, check_forwarding=False)
                with remote.forward(web_ip, appcompose.WEB_PORT) as port:
                    if launch:
                        _launch(port, host, launch_attempts, reporter)
                    _health(port, host, health_path, 30)
            # A worker or clock that dies on import needs a moment to show it; without this
            # wait such a deploy could be reported a success.
            settle.wait_started(
                lambda: settle.snapshot(remote, app), delivered.ref, started_at, seen=seen,
                on_crash=lambda bad: LabdeployError(STOPPED_AT_START.format(", ".join(bad)), STOPPED_AT_START_HINT),
                note=lambda text: reporter(LogLine(text, "launch")), services=processes)
            if spec is not None and "worker" in processes:
                # Running is not working: prove the worker completes a job (rq, as Dallinger uses).
                jobs.prove_worker(remote, app)
                reporter(LogLine("the worker ran a test job", "launch"))

        current = "record"
        with step(reporter, "record"):
            state = {"app": app, "version": version, "image": delivered.ref, "image_id": delivered.image_id,
                     "experiment_id": config.get("DALLINGER_UID"), "redis_image": redis_image,
                     "base_image": (build_args or {}).get("BASE_IMAGE", ""), "pooler": use_pooler,
                     "pgbouncer_image": remembered["pgbouncer_image"]["value"] if use_pooler else "",
                     "deployed_at": _now(), "who": lock.info.who, "mode": mode, "domain": settings.domain,
                     "url": caddy.app_url(app, settings), "operation": _operation}
            record.outcome, record.finished_at = "success", _now()
            record.duration_s = round(time.monotonic() - t0, 2)
            history.record_success(remote, state, record)
    except BaseException as exc:
        known = [*secrets.values(), *facts.secrets.values(), *(locals().get("values") or {}).values()]
        _fail(remote, app, exc, current, record, facts, rollback_needed, t0, redacting(reporter, known), known)
        raise AssertionError("unreachable")  # _fail always raises
    finally:
        lock.release()
    url = caddy.app_url(app, settings)
    return DeployResult(
        app=app, url=url, version=version, image=delivered.ref, image_id=delivered.image_id,
        dashboard_url=url + "dashboard", dashboard_user=values["dashboard_user"],
        dashboard_password=Secret(values["dashboard_password"]), operation=_operation,
        duration_s=round(time.monotonic() - t0, 2), warnings=warnings,
        ssh={k: remote.stats[k] - stats0.get(k, 0) for k in ("connections", "commands")},
        secret_names=sorted(values), data=_data_label(_operation, facts, existing_data),
        experiment_id=config.get("DALLINGER_UID"), remembered=remembered)


def _data_label(operation: str, facts: _Facts, existing_data: Optional[str]) -> str:
    if operation == "update" or facts.app_dir:
        return "kept"
    return {"reuse": "reused", "replace": "replaced"}.get(existing_data or "", "new")


def update(experiment_dir, app: str, server, *, launch: bool = False, **kwargs) -> DeployResult:
    """Ship new code to a deployed app. Its database, Redis data and files are kept; on a
    failure the previous version keeps running."""
    return deploy(experiment_dir, app, server, launch=launch, _operation="update", **kwargs)


def _deliver(remote, experiment_dir, **kwargs):
    from ..images import transfer

    return transfer.deliver(remote, experiment_dir, **kwargs)


def _fail(remote, app: str, exc: BaseException, current: str, record, facts: _Facts, rollback_needed: bool,
          t0: float, reporter: Reporter, known: Sequence[str] = ()) -> None:
    """Report, roll back, record and raise DeployFailed. Each part is best effort: a lost
    connection must not hide the original error."""
    logs = ""
    rolled_back = False
    notes = []
    try:
        if current in ("start", "route", "launch", "record"):
            logs = container_logs(remote, app)
            for line in logs.splitlines():
                reporter(LogLine(line, "logs"))
        if rollback_needed:
            rolled_back = _rollback(remote, app, facts, reporter)
    except Exception as inner:  # noqa: BLE001 - the original error matters more
        notes.append(f"(putting things back also failed: {inner})")
    try:
        record.outcome = "rolled back" if rolled_back else "failed"
        record.failed_step, record.finished_at = current, _now()
        # The end of a message holds the real error (a build's output ends with it).
        record.message = redact(str(getattr(exc, "message", exc)), known)[-2000:]
        record.duration_s = round(time.monotonic() - t0, 2)
        history.append(remote, record)
    except Exception:  # noqa: BLE001 - e.g. the connection is gone; the lock expiry covers it
        pass
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    hint = getattr(exc, "hint", "") or "Read the logs below, fix the experiment, and deploy again."
    if not rollback_needed:
        after = " The app's running version (if any) was not touched."
    elif facts.state is not None:
        after = (f" The previous version ({facts.state.get('version', '?')}) is running again."
                 if rolled_back else " The previous version could not be restarted automatically.")
    else:
        after = " Its containers were stopped; its database was kept, so a rerun continues from here."
    if isinstance(exc, RemoteError) and not isinstance(exc, CommandFailed):
        hint = "The connection dropped. Run the deploy again: it picks up where it stopped. " + hint
    text = f"The deploy of {app!r} failed at the step '{current}': {message}{after}"
    if notes:
        text += " " + " ".join(notes)
    if logs:
        text += "\n\nLast lines of the app's logs:\n" + logs[-4000:]
    raise DeployFailed(redact(text, known), redact(hint, known), failed_step=current, logs=redact(logs, known),
                       rolled_back=rolled_back) from exc


def _rollback(remote, app: str, facts: _Facts, reporter: Reporter) -> bool:
    """Put the previous compose file and Caddy site back and start them; for a first deploy,
    stop the new containers (data volumes stay)."""
    reporter(LogLine("putting the previous state back", "rollback"))
    if facts.site_text is not None:
        remote.put_bytes(layout.caddy_site(app), facts.site_text, mode=0o644)
    else:
        remote.remove(layout.caddy_site(app))
    try:
        stack.reload_caddy(remote)
    except LabdeployError as exc:
        reporter(LogLine(f"caddy reload: {exc.message}", "rollback"))
    if facts.compose_text and facts.state is not None:
        if facts.secrets_text:
            remote.put_bytes(layout.app_secrets(app), facts.secrets_text, mode=0o600)
        remote.put_bytes(layout.app_compose(app), facts.compose_text, mode=0o644)
        compose.run_app(remote, app, ["up", "-d", "--remove-orphans"], reporter=reporter, timeout=300)
        return True
    compose.run_app(remote, app, ["down", "--remove-orphans"], reporter=reporter, timeout=300, check=False)
    remote.remove(layout.app_compose(app))
    return False


