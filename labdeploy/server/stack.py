"""The server's shared stack: PostgreSQL and Caddy in ~/dallinger, started with Compose.

`prepare(remote, settings)` writes ~/dallinger/docker-compose.yml, ~/dallinger/Caddyfile
(which imports caddy.d/*), a random PostgreSQL superuser password (generated once, kept only
on the server in a 0600 file) and stack.json, then starts the stack. It is idempotent: files
whose content is already right are not rewritten and Compose leaves running containers alone.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import yaml

from . import alerts, backupservice, compose, layout, locks, logrotation
from ..commands import alerts as alert_commands, backups as backup_commands, caddy as caddy_commands, docker, postgres
from .. import names
from ..errors import CommandFailed, LabdeployError, Remedy, ValidationError
from ..progress import LogLine, Reporter, WarningEvent, null_reporter, step

# Image references: registry[:port]/path[:tag][@digest]; nothing a shell could misread.
# What the Caddy writers put into a file, token by token (addresses, e-mail, upstream): a
# space, quote, brace, '#', '<<', backslash or line break would end the token and start
# another directive, line or site block.
_CADDY_TOKEN_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:/@+-]*")
# Domains that can never get a public certificate: serve them over plain HTTP.
_LOCAL_SUFFIXES = (".localhost", ".local", ".test", ".internal", ".lan", ".home.arpa", ".example", ".invalid")

PG_DATA_VOLUME = "postgres_data"
CADDY_DATA_VOLUME = "caddy_data"
CADDY_CONFIG_VOLUME = "caddy_config"
PASSWORD_IN_CONTAINER = "/run/secrets/postgres_password"
OWN_MARK = b"Written by labdeploy"  # first line of the compose file and Caddyfile prepare() writes
LOCK_WAIT = 180.0  # seconds to wait for another prepare of the same server
LOCK_STALE = 600.0  # a lock older than this was left by a crashed run
# Let's Encrypt's staging directory: real ACME exchanges for dry runs, certificates no browser
# trusts, and rate limits far above production's (which a failing setup soon hits).
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
ACME_CA_ALIASES = {"staging": LETSENCRYPT_STAGING}  # words StackSettings(acme_ca=...) takes for a URL
# The CA root is copied into a folder (not a file: a file mount would keep the old copy) that
# Caddy sees read-only; a name no app can have.
TRUST_IN_CONTAINER = "/etc/caddy/trust"
ACME_CA_ROOT_NAME = "acme-ca-root.pem"
CA_ROOT_MAX_BYTES = 1024 * 1024


class StackError(LabdeployError):
    """The shared stack could not be prepared or is not running."""

    code = "stack.failed"


@dataclass
class StackSettings:
    """How the shared stack is set up. Images are settings so a server without Docker Hub
    access (or the testbed) can use its own."""

    postgres_image: str = "postgres:15"
    caddy_image: str = "caddy:2"
    http_port: int = 80
    https_port: int = 443
    bind_address: str = ""  # "" = all interfaces
    email: str = ""  # contact for Let's Encrypt (or the ACME CA); optional
    domain: str = ""  # apps become <app>.<domain>; local/test domains are served over plain HTTP
    postgres_max_connections: int = 100
    # Remembered for the apps deployed here (an app's own choice, in its deploy.json, wins):
    redis_image: str = ""  # "" = redis:7
    base_image: str = ""  # the BASE_IMAGE build argument; "" = the Dockerfile's own default
    pgbouncer_image: str = ""  # each app's connection pooler; "" = labdeploy.server.pooler.DEFAULT_IMAGE
    # Where certificates come from (public domains): an ACME directory URL ("" = Let's Encrypt,
    # "staging" = LETSENCRYPT_STAGING, or a lab's own CA such as step-ca) and, when that server's
    # own HTTPS certificate is signed by a private CA, that CA's PEM file on this computer.
    acme_ca: str = ""
    acme_ca_root: str = ""
    # Docker's log rotation for every container of the stack and of the apps (labdeploy.server.logrotation).
    log_max_size: str = logrotation.DEFAULT_MAX_SIZE
    log_max_files: int = logrotation.DEFAULT_MAX_FILES
    # The alert watcher's image (it needs a Python 3); "" = no watcher (labdeploy.server.alerts).
    watcher_image: str = alerts.DEFAULT_IMAGE

    def __post_init__(self) -> None:
        if isinstance(self.acme_ca, str) and self.acme_ca in ACME_CA_ALIASES:
            self.acme_ca = ACME_CA_ALIASES[self.acme_ca]

    def validate(self) -> "StackSettings":
        for name in self.__dataclass_fields__:
            _check_field(name, getattr(self, name))
        if int(self.http_port) == int(self.https_port):
            raise ValidationError("The HTTP and HTTPS ports are the same.", "Use 80 and 443 (the usual ports).",
                                  code="invalid.ports")
        return self

    @classmethod
    def from_dict(cls, data: dict) -> "StackSettings":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @classmethod
    def for_images(cls, images: dict, **kwargs) -> "StackSettings":
        """Settings using an image map such as the testbed's {"postgres": ..., "caddy": ...}."""
        return cls(postgres_image=images.get("postgres", cls.postgres_image),
                   caddy_image=images.get("caddy", cls.caddy_image), redis_image=images.get("redis", ""),
                   pgbouncer_image=images.get("pgbouncer", ""),
                   watcher_image=images.get("python", cls.watcher_image), **kwargs)


def _check_image(label: str, image) -> None:
    names.image(image, f"{label} image")


def _check_bind_address(address) -> None:
    # No IPv6 scope: ipaddress accepts any text after '%', and Docker can't bind to one anyway.
    try:
        ok = isinstance(address, str) and "%" not in address and ipaddress.ip_address(address)
    except ValueError:
        ok = False
    if not ok:
        raise ValidationError(f"The bind address {address!r} is not an IP address.",
                              "Leave it empty to listen on every interface, or give one of the "
                              "server's IP addresses.", code="invalid.bind_address")


def _check_field(name: str, value) -> None:
    if name == "postgres_image":
        _check_image("PostgreSQL", value)
    elif name == "caddy_image":
        _check_image("Caddy", value)
    elif name == "redis_image":
        if value:
            _check_image("Redis", value)
    elif name == "base_image":
        if value:
            _check_image("base", value)
    elif name == "pgbouncer_image":
        if value:
            _check_image("PgBouncer", value)
    elif name in ("http_port", "https_port"):
        names.port(value)
    elif name == "bind_address":
        if value:  # "" or None: every interface
            _check_bind_address(value)
    elif name == "email":
        if value:  # optional
            names.email(value)
    elif name == "domain":
        if value:  # "" or None: localhost
            names.domain(value)
    elif name == "acme_ca":
        if value and not (isinstance(value, str) and value in ACME_CA_ALIASES):
            names.acme_directory(value)
    elif name == "acme_ca_root":
        if value:
            _check_ca_root_path(value)
    elif name == "watcher_image":
        if value:
            _check_image("alert watcher", value)
    elif name == "log_max_size":
        logrotation.size_bytes(value)
    elif name == "log_max_files":
        logrotation.file_count(value)
    elif name == "postgres_max_connections":
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if not 10 <= number <= 10000:
            raise ValidationError("postgres_max_connections must be between 10 and 10000.",
                                  "The PostgreSQL default is 100.", code="invalid.max_connections")
    else:
        raise ValidationError(f"{name!r} is not a setting of the shared stack.",
                              f"Use one of: {', '.join(StackSettings.__dataclass_fields__)}.",
                              code="invalid.stack_setting")


def check_fields(**fields) -> None:
    """Check the given settings one by one (None = not given), without the checks that need
    all of them: for callers that check options before they connect to read the rest. A CA
    root file is read and checked here too."""
    for name, value in fields.items():
        if value is not None:
            _check_field(name, value)
    if fields.get("acme_ca_root"):
        read_ca_root(fields["acme_ca_root"])


def _check_ca_root_path(path) -> None:
    # Only its form: the file is on the researcher's computer, read when the stack is prepared
    # (settings read back from a server elsewhere must still validate).
    if not isinstance(path, str) or not path.strip() or any(c in path for c in "\0\n\r") or len(path) > 4096:
        raise ValidationError(f"The ACME CA root {path!r} is not a file path.",
                              "Give the path of a PEM file (-----BEGIN CERTIFICATE-----) on this computer, or "
                              "leave it empty.", code="invalid.acme_ca_root")


def read_ca_root(path: str) -> bytes:
    """The PEM certificate(s) of the CA that signs the ACME server's own HTTPS certificate,
    read from this computer and checked: certificates only (never a private key), at least one."""
    from cryptography import x509

    _check_ca_root_path(path)
    hint = ("Give the CA certificate in PEM form (the file starts with -----BEGIN CERTIFICATE-----), for step-ca "
            "its root_ca.crt; or leave the CA root empty when the ACME server has a publicly trusted certificate.")
    try:
        with open(os.path.expanduser(path), "rb") as f:
            data = f.read(CA_ROOT_MAX_BYTES + 1)
    except OSError as exc:
        raise ValidationError(f"The ACME CA root {path} can't be read on this computer: {exc.strerror or exc}.",
                              hint, code="invalid.acme_ca_root") from exc
    if len(data) > CA_ROOT_MAX_BYTES:
        raise ValidationError(f"The ACME CA root {path} is larger than 1 MB: not a CA certificate.", hint,
                              code="invalid.acme_ca_root")
    if b"PRIVATE KEY" in data:
        raise ValidationError(f"The ACME CA root {path} holds a private key; refusing to send it to the server.",
                              "Give a file with the CA's certificate only.", code="invalid.acme_ca_root")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ValidationError(f"The ACME CA root {path} is not a PEM certificate.", hint, code="invalid.acme_ca_root")
    return data


def caddy_token(value, what: str) -> str:
    """The last check before a value is written into a Caddy file: one plain token, nothing
    that could end it and add a directive, a line or a site block. Values are validated long
    before this; this only guards against one that slipped past."""
    if not isinstance(value, str) or not _CADDY_TOKEN_RE.fullmatch(value):
        raise ValidationError(
            f"Refusing to write the {what} {value!r} into the Caddy configuration: it is not one plain word "
            "(spaces, quotes, braces, '#', '%' or line breaks would change the configuration).",
            "Check the domain, contact email and app name you gave; use a DNS name such as "
            "'experiments.example.org' and an address such as 'you@lab.example.org'.", code="invalid.caddy_value")
    return value


def is_local_domain(domain: str) -> bool:
    """True for names no public CA will certify (localhost, *.test, IPs, ...): plain HTTP."""
    if not domain:
        return True
    d = domain.rstrip(".").lower()
    try:
        ipaddress.ip_address(d)
        return True
    except ValueError:
        pass
    return d == "localhost" or "." not in d or d.endswith(_LOCAL_SUFFIXES)


def site_address(app: str, settings: StackSettings) -> str:
    """The Caddy site address of an app: 'http://<app>.<domain>' for local domains (no
    certificate possible), '<app>.<domain>' (automatic HTTPS) otherwise."""
    domain = names.domain(settings.domain) if settings.domain else "localhost"
    hostname = f"{names.app_name(app)}.{domain}"
    return f"http://{hostname}" if is_local_domain(domain) else hostname


# --------------------------------------------------------------------------- rendering (pure)

def stack_compose_document(settings: StackSettings, user: str = "", docker_access: Optional[tuple] = None) -> dict:
    """The shared stack's compose file as data. No secret in it: the password is a mounted file.
    `user` (uid:gid of the login user) adds the backup service, which writes files as them;
    with `docker_access` (Docker's socket and its group) too, the alert watcher."""
    settings.validate()
    bind = f"{settings.bind_address}:" if settings.bind_address else ""
    return with_log_rotation({
        "services": {
            "postgresql": {
                "image": settings.postgres_image,
                "container_name": layout.POSTGRES_CONTAINER,
                "restart": "unless-stopped",
                "command": ["postgres", "-c", f"max_connections={int(settings.postgres_max_connections)}"],
                "environment": {
                    "POSTGRES_USER": layout.POSTGRES_SUPERUSER,
                    "POSTGRES_DB": layout.POSTGRES_SUPERUSER,
                    "POSTGRES_PASSWORD_FILE": PASSWORD_IN_CONTAINER,
                },
                "volumes": [
                    f"{PG_DATA_VOLUME}:/var/lib/postgresql/data",
                    f"./secrets/postgres_password:{PASSWORD_IN_CONTAINER}:ro",
                ],
                "networks": [layout.NETWORK],
                "labels": {"labdeploy.server.stack": "postgresql"},
            },
            "caddy": {
                "image": settings.caddy_image,
                "container_name": layout.CADDY_CONTAINER,
                "restart": "unless-stopped",
                "ports": [f"{bind}{int(settings.http_port)}:80", f"{bind}{int(settings.https_port)}:443"],
                # caddy.d is a directory mount so sites written later (atomic renames) are seen.
                "volumes": [
                    "./Caddyfile:/etc/caddy/Caddyfile:ro",
                    "./caddy.d:/etc/caddy/caddy.d:ro",
                    f"./{layout.CADDY_TRUST}:{TRUST_IN_CONTAINER}:ro",
                    f"{CADDY_DATA_VOLUME}:/data",
                    f"{CADDY_CONFIG_VOLUME}:/config",
                ],
                "networks": [layout.NETWORK],
                "labels": {"labdeploy.server.stack": "caddy"},
            },
            **({"backup": backupservice.service_document(settings.postgres_image, user)} if user else {}),
            **({"alerts": alerts.service_document(settings.watcher_image, user, docker_access)}
               if user and docker_access and settings.watcher_image else {}),
        },
        "networks": {layout.NETWORK: {"name": layout.NETWORK}},
        "volumes": {PG_DATA_VOLUME: {}, CADDY_DATA_VOLUME: {}, CADDY_CONFIG_VOLUME: {}},
    }, settings)


def with_log_rotation(document: dict, settings: StackSettings) -> dict:
    """Every service of the stack's document with Docker's log rotation (bounded disk use)."""
    for service in document["services"].values():
        service.setdefault("logging", logrotation.of(settings))
    return document


def stack_compose_yaml(settings: StackSettings, user: str = "", docker_access: Optional[tuple] = None) -> str:
    header = "# Written by labdeploy (shared stack). Re-run prepare() rather than editing by hand.\n"
    return header + yaml.safe_dump(stack_compose_document(settings, user, docker_access), sort_keys=False,
                                   default_flow_style=False)


# What Caddy's logs must not keep: the URL (worker and assignment ids in its query), headers
# (cookies) and the participant's address. Host, method, status, size and duration stay.
PRIVATE_FIELDS = ("request>uri", "request>headers", "request>remote_ip", "request>remote_port", "request>client_ip",
                  "request>tls", "resp_headers", "user_id")


def private_log(name: str = "") -> list[str]:
    """A Caddyfile `log` block (indented one tab) writing JSON to stderr without PRIVATE_FIELDS:
    a site's access log (no name), or the global `default` logger, which holds the proxy's
    error lines (they carry the whole request)."""
    fields = [f"\t\t\t\t{f} delete" for f in PRIVATE_FIELDS]
    return [f"\tlog {name} {{".replace("  ", " "), "\t\toutput stderr", "\t\tformat filter {", "\t\t\twrap json",
            "\t\t\tfields {", *fields, "\t\t\t}", "\t\t}", "\t}"]


def caddyfile(settings: StackSettings) -> str:
    """Global options plus `import caddy.d/*` (one file per app, written by deploy)."""
    settings.validate()
    options = ["\tadmin localhost:2019"]
    if settings.email:
        options.append(f"\temail {caddy_token(settings.email, 'contact email')}")
    if settings.acme_ca:
        options.append(f"\tacme_ca {caddy_token(settings.acme_ca, 'ACME directory')}")
    if settings.acme_ca_root:
        options.append(f"\tacme_ca_root {TRUST_IN_CONTAINER}/{ACME_CA_ROOT_NAME}")
    if is_local_domain(settings.domain):
        # No certificate can be had for local/test names; don't let Caddy try.
        options.append("\tauto_https off")
    options += private_log("default")
    # Any other name (or none deployed yet) gets a clear 404 rather than a refused
    # connection; apps' own names are more specific and win, HTTPS redirects included.
    fallback = 'http:// {\n\trespond "No experiment is deployed at this address on this server." 404\n}\n'
    return ("# Written by labdeploy. Sites live in caddy.d/<app>; re-run prepare() to change this file.\n"
            "{\n" + "\n".join(options) + "\n}\n\nimport caddy.d/*\n\n" + fallback)


# --------------------------------------------------------------------------- running

@dataclass
class PrepareResult:
    written: list = field(default_factory=list)  # files (re)written this time
    unchanged: list = field(default_factory=list)
    password_created: bool = False
    backups: list = field(default_factory=list)  # other tools' files kept before replacing them
    compose_output: str = ""
    previous: dict = field(default_factory=dict)  # {path: bytes} of files rewritten in place, until done

    @property
    def changed(self) -> bool:
        return bool(self.written) or self.password_created


def _lock_path() -> str:
    # App names start with a letter, so "_stack" can never be an app's deploy lock.
    return f"{layout.locks_dir()}/_stack"


def _prepare_lock(remote, reporter: Reporter) -> locks.ServerLock:
    """One prepare per server at a time (others' tests share it too): the same lock as an
    app's deploy lock, under ~/dallinger/.locks/_stack, waiting up to LOCK_WAIT for another."""
    path = _lock_path()

    def busy(other) -> StackError:
        return StackError("Another setup of this server's shared services is still running.",
                          f"Wait a minute and try again. If nothing else runs, remove ~/{path} on the server.",
                          code="stack.busy")

    return locks.ServerLock(remote, path, subject="_stack", operation="prepare", ttl=int(LOCK_STALE),
                            reporter=reporter, wait=LOCK_WAIT, busy=busy,
                            on_wait=lambda: reporter(LogLine("another prepare of this server is running; waiting",
                                                             "stack")))


def check_docker(remote) -> None:
    """Raise a clear error when the login user cannot use Docker."""
    res = remote.run(docker.server_version(), check=False, timeout=60)
    if res.exit_status == docker.NO_DOCKER:
        raise StackError(f"Docker is not installed on {remote.host} (no `docker` command for {remote.user}).",
                         "Install Docker Engine on the server (https://docs.docker.com/engine/install/), "
                         "then run the readiness check again.", code="server.docker.missing")
    if res.exit_status != 0:
        err = res.stderr.strip()
        if "permission denied" in err.lower():
            raise StackError(f"{remote.user} may not use Docker on {remote.host} (permission denied on the Docker socket).",
                             f"On the server, run `sudo usermod -aG docker {remote.user}`, then log out and in again.",
                             code="server.docker.permission")
        raise StackError(f"Docker on {remote.host} does not answer: {err.splitlines()[-1] if err else 'no output'}",
                         "Start the Docker service on the server (`sudo systemctl start docker`).",
                         code="server.docker.not_running")


def _write_if_changed(remote, path: str, content: str, mode: int, result: PrepareResult,
                      reporter: Reporter, keep_foreign: bool = True, in_place: bool = False) -> bool:
    """Write `path` when its content differs. `in_place` keeps the file's inode (a file Docker
    mounts into a container is only seen there when changed in place)."""
    data = content.encode()
    try:
        current = remote.get_bytes(path) if remote.exists(path) else None
    except OSError:
        current = None
    if current == data:
        result.unchanged.append(path)
        return False
    if keep_foreign and current is not None and OWN_MARK not in current[:200]:
        # Someone else's file (e.g. an older Dallinger setup): keep a copy, never just replace it.
        backup = f"{path}.before-labdeploy-{time.strftime('%Y%m%d-%H%M%S')}"
        remote.put_bytes(backup, current, mode=0o600)
        result.backups.append(backup)
        reporter(WarningEvent(f"~/{path} was not written by labdeploy; the old one is kept as ~/{backup}.",
                          "Compare the two if you had changed it by hand."))
    if in_place and current is not None:
        remote.put_bytes(f"{path}.new", data, mode=mode)
        remote.run(caddy_commands.replace_in_place(path))
        result.previous[path] = current
    else:
        remote.put_bytes(path, data, mode=mode)
    result.written.append(path)
    reporter(LogLine(f"wrote ~/{path}", "stack"))
    return True


def _write_trust(remote, ca_root: Optional[bytes], result: PrepareResult, reporter: Reporter) -> bool:
    """The ACME server's CA root in ~/dallinger/caddy.trust (Caddy sees it read-only); removed
    when the settings no longer name one. True when it changed."""
    remote.makedirs(layout.caddy_trust_dir(), 0o755)
    path = f"{layout.caddy_trust_dir()}/{ACME_CA_ROOT_NAME}"
    if ca_root is not None:
        return _write_if_changed(remote, path, ca_root.decode("ascii", "replace"), 0o644, result, reporter,
                                 keep_foreign=False)
    if remote.exists(path):
        remote.remove(path)
        reporter(LogLine(f"removed ~/{path}", "stack"))
        return True
    return False


def _ensure_password(remote, result: PrepareResult) -> None:
    path = layout.postgres_password_file()
    if remote.exists(path):
        remote.chmod(path, 0o600)
        return
    # Generated here, sent over SFTP (never a command line), never kept locally.
    remote.put_bytes(path, secrets.token_urlsafe(32).encode(), mode=0o600)
    result.password_created = True


def _running_images(remote) -> dict[str, str]:
    """{container name: image} of the stack's running containers, in one round trip."""
    res = remote.run(docker.running_images(layout.POSTGRES_CONTAINER, layout.CADDY_CONTAINER,
                                           layout.BACKUP_CONTAINER, alerts.CONTAINER), check=False)
    return docker.parse_running_images(res.stdout)


def _container_running(remote, name: str) -> bool:
    res = remote.run(docker.is_running(name), check=False)
    return docker.parse_is_running(res.exit_status, res.stdout)


def wait_postgres(remote, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        q = remote.run(postgres.ready(layout.POSTGRES_CONTAINER), check=False)
        if postgres.is_ready(q.exit_status, q.stdout):
            return
        if time.monotonic() > deadline:
            logs = remote.run(docker.logs_tail(layout.POSTGRES_CONTAINER, 20), check=False)
            raise StackError(f"PostgreSQL did not become ready within {timeout:.0f} s.\n{logs.stderr or logs.stdout}",
                             "Look at `cd ~/dallinger && docker compose logs postgresql` on the server.",
                             code="stack.postgres.not_ready")
        time.sleep(1.0)


def prepare(remote, settings: Optional[StackSettings] = None, reporter: Optional[Reporter] = None) -> PrepareResult:
    """Write the shared stack's files and start PostgreSQL and Caddy. Safe to run again. A
    changed Caddyfile or CA root on a running stack is a graceful reload of Caddy."""
    settings = (settings or StackSettings()).validate()
    ca_root = read_ca_root(settings.acme_ca_root) if settings.acme_ca_root else None  # before touching anything
    reporter = reporter or null_reporter
    result = PrepareResult()
    with step(reporter, "check docker"):
        remote.connect()
        check_docker(remote)
        compose.compose_argv(remote)
    lock = _prepare_lock(remote, reporter).acquire()
    try:
        running = _running_images(remote)
        with step(reporter, "write files"):
            changed = _write_files(remote, settings, ca_root, result, reporter)
        with step(reporter, "start services"):
            _start_services(remote, settings, running, changed, result, reporter)
        with step(reporter, "wait for postgresql"):
            wait_postgres(remote)
        with step(reporter, "record settings"):
            state = json.dumps({"settings": asdict(settings)}, indent=2, sort_keys=True) + "\n"
            _write_if_changed(remote, layout.stack_state(), state, 0o644, result, reporter, keep_foreign=False)
    finally:
        lock.release()
    return result


def _write_files(remote, settings: StackSettings, ca_root: Optional[bytes], result: PrepareResult,
                 reporter: Reporter) -> dict:
    """Every file of the shared stack; which of the ones Caddy reads changed."""
    remote.makedirs(layout.ROOT, 0o755)
    remote.makedirs(layout.caddy_dir(), 0o755)
    remote.makedirs(layout.secrets_dir(), 0o700)
    remote.chmod(layout.secrets_dir(), 0o700)
    _ensure_password(remote, result)
    remote.makedirs(layout.backup_script_dir(), 0o755)
    remote.makedirs(layout.BACKUPS_ROOT, 0o700)
    remote.chmod(layout.BACKUPS_ROOT, 0o700)
    _write_if_changed(remote, f"{layout.backup_script_dir()}/{backupservice.SCRIPT_NAME}",
                      backupservice.script(), 0o755, result, reporter, keep_foreign=False)
    trust = _write_trust(remote, ca_root, result, reporter)
    user = remote.run(backup_commands.login_ids()).stdout.strip()
    access = _write_watcher(remote, settings, result, reporter)
    compose_file = _write_if_changed(remote, layout.stack_compose(), stack_compose_yaml(settings, user, access),
                                     0o644, result, reporter)
    caddyfile_ = _write_if_changed(remote, layout.caddyfile(), caddyfile(settings), 0o644, result, reporter,
                                   in_place=True)
    return {"compose": compose_file, "caddyfile": caddyfile_, "trust": trust, "watcher": access is not None}


def _write_watcher(remote, settings: StackSettings, result: PrepareResult, reporter: Reporter) -> Optional[tuple]:
    """The alert watcher's script and state folder; Docker's socket and group for its service
    (None: no watcher, e.g. a DOCKER_HOST over TCP)."""
    if not settings.watcher_image:
        return None
    access = alert_commands.parse_docker_access(remote.run(alert_commands.docker_access(), check=False).stdout)
    if access is None:
        reporter(WarningEvent("No alert watcher: Docker is not reached through a socket on this server.",
                              "Alerts need the watcher; ask for help if the server's Docker is remote."))
        return None
    remote.makedirs(alerts.script_dir(), 0o755)
    remote.makedirs(alerts.state_dir(), 0o700)
    _write_if_changed(remote, f"{alerts.script_dir()}/{alerts.SCRIPT_NAME}", alerts.script(), 0o644, result,
                      reporter, keep_foreign=False)
    return access


def _start_services(remote, settings: StackSettings, running: dict, changed: dict, result: PrepareResult,
                    reporter: Reporter) -> None:
    lines: list[str] = []

    def on_line(line: str, stream: str) -> None:
        lines.append(line)
        reporter(LogLine(line, "compose"))

    wanted = {layout.POSTGRES_CONTAINER: settings.postgres_image, layout.CADDY_CONTAINER: settings.caddy_image,
              layout.BACKUP_CONTAINER: settings.postgres_image,
              **({alerts.CONTAINER: settings.watcher_image} if changed.get("watcher") else {})}
    # Same files, both containers up on the right images: Compose would do nothing.
    skip_compose = not result.changed and running == wanted
    if skip_compose:
        reporter(LogLine("PostgreSQL and Caddy already run with these settings", "stack"))
    try:
        if not skip_compose:
            compose.run_compose(remote, layout.ROOT, ["-p", layout.STACK_PROJECT, "up", "-d"],
                                timeout=600, on_line=on_line)
    except CommandFailed as exc:
        raise StackError(f"Starting the shared services failed:\n{exc.stderr.strip()[-1500:]}",
                         "Check that the images exist on the server (or can be pulled) and that "
                         f"ports {settings.http_port}/{settings.https_port} are free.",
                         code="stack.start_failed") from exc
    result.compose_output = "\n".join(lines)
    if layout.CADDY_CONTAINER in running and (changed["caddyfile"] or changed["trust"]):
        if changed["compose"] or not _reload_gracefully(remote, force=not changed["caddyfile"], result=result,
                                                        reporter=reporter):
            # The container itself changed (image, ports, mounts), or it reads an older copy of
            # the Caddyfile: a new container reads the new files.
            compose.run_compose(remote, layout.ROOT, ["-p", layout.STACK_PROJECT, "up", "-d",
                                                      "--force-recreate", "caddy"], timeout=300, on_line=on_line)
    result.previous.clear()


def _reload_gracefully(remote, *, force: bool, result: PrepareResult, reporter: Reporter) -> bool:
    """Caddy reads its new configuration without dropping a connection. False when its container
    can't see the new Caddyfile; a configuration Caddy refuses is put back and raises."""
    res = remote.run(caddy_commands.reload_mounted(layout.CADDY_CONTAINER, layout.caddyfile(), force),
                     check=False, timeout=120)
    if res.exit_status == caddy_commands.STALE_MOUNT:
        return False
    if res.exit_status != 0:
        err = (res.stderr or res.stdout).strip()
        before = result.previous.get(layout.caddyfile())
        if before is not None:  # the running configuration stays; so does the file that made it
            remote.put_bytes(f"{layout.caddyfile()}.new", before, mode=0o644)
            remote.run(caddy_commands.replace_in_place(layout.caddyfile()))
        raise StackError(f"Caddy refused the new configuration; it goes on with the old one:\n{err[-1500:]}",
                         "Check the ACME directory URL, the CA root and the contact email, then prepare again.",
                         code="stack.caddy.config_refused")
    reporter(LogLine("Caddy reloaded its configuration (no connection dropped)", "stack"))
    return True


def read_settings(remote) -> Optional[StackSettings]:
    """The settings the stack was last prepared with (from ~/dallinger/stack.json), or None."""
    if not remote.exists(layout.stack_state()):
        return None
    data = json.loads(remote.get_bytes(layout.stack_state()))
    return StackSettings.from_dict(data.get("settings", {}))


def is_running(remote) -> bool:
    """PostgreSQL and Caddy run (what apps need; the backup service is reported on its own)."""
    return {layout.POSTGRES_CONTAINER, layout.CADDY_CONTAINER} <= set(_running_images(remote))


def backup_service_running(remote) -> bool:
    return layout.BACKUP_CONTAINER in _running_images(remote)


def route_site(remote, app: str, text: str) -> None:
    """Write the app's site file and make Caddy serve it, in one round trip. Caddy not running:
    nothing is written. A site Caddy refuses: the previous file is back, the old config live."""
    res = remote.run(caddy_commands.route(layout.caddy_dir(), names.app_name(app)), stdin=text.encode(),
                     check=False, timeout=60)
    if res.exit_status == caddy_commands.NOT_RUNNING:
        raise _caddy_not_running()
    if res.exit_status == caddy_commands.REFUSED:
        raise _caddy_refused(res)
    if res.exit_status != 0:
        raise CommandFailed(f"Writing the site of {app!r} failed on {remote.host}:\n{(res.stderr or res.stdout).strip()}",
                            "Check the free disk space and the permissions of ~/dallinger/caddy.d on the server.",
                            argv=list(res.argv), exit_status=res.exit_status, stdout=res.stdout, stderr=res.stderr)


def _caddy_not_running() -> StackError:
    return StackError("The web proxy (Caddy) is not running on the server.",
                      code="stack.caddy.not_running", remedy=Remedy("stack.prepare"))


def _caddy_refused(res) -> StackError:
    err = (res.stderr or res.stdout).strip()
    return StackError(f"Caddy refused the new configuration:\n{err[-1500:]}",
                      "Fix or remove the site file it names in ~/dallinger/caddy.d/, then reload again.",
                      code="stack.caddy.config_refused")


def reload_caddy(remote) -> None:
    """Make Caddy read the Caddyfile and caddy.d/* again (after a site was added or removed).

    A bad site file is rejected by Caddy and the old config stays live; the error says which.
    """
    if not _container_running(remote, layout.CADDY_CONTAINER):
        raise _caddy_not_running()
    res = remote.run(caddy_commands.reload(layout.CADDY_CONTAINER), check=False, timeout=60)
    if res.exit_status != 0:
        raise _caddy_refused(res)
