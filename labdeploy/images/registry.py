"""Registry logins on both machines, push with per-layer progress, pull on the server by digest.

Passwords travel only on stdin or inside the Docker API request body, never on a command
line. Locally, a password is stored only through a Docker credential helper; without one it
stays in this process's memory for the session (and the caller is warned why), because
`docker login` would otherwise write it unencrypted into ~/.docker/config.json.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import build
from ..commands import images as image_commands, registry as registry_commands
from .. import names
from ..errors import CommandFailed, LabdeployError, Remedy, RemoteError, ValidationError
from .build import disk_full_error
from ..errors import is_disk_full
from ..progress import LogLine, Progress, Reporter, WarningEvent, null_reporter, step


class RegistryError(LabdeployError):
    """Something went wrong talking to a registry."""

    code = "registry.failed"


class RegistryAuthFailed(RegistryError):
    """The registry refused the user name / password (or token)."""

    code = "registry.auth"


class RegistryUnreachable(RegistryError):
    """No connection to the registry."""

    code = "registry.unreachable"


class RegistryTLSError(RegistryError):
    """The registry's certificate is not trusted."""

    code = "registry.tls"


@dataclass(frozen=True)
class Credentials:
    registry: str   # "registry.gitlab.com" or "host:port"
    username: str
    password: str = field(repr=False)  # never shown in reprs, logs or tracebacks

    def __post_init__(self) -> None:
        registry_address(self.registry)
        # The user name reaches `docker login --username` on both machines: printable text only
        # (no NUL, line break or other control or invisible character), no spaces.
        user = self.username
        if not isinstance(user, str) or not user or len(user) > USERNAME_MAX or \
                any(c.isspace() or not c.isprintable() for c in user):
            raise ValidationError("The registry user name is empty, too long, or contains spaces or control "
                                  "characters.",
                                  "Enter the user name you log in to the registry with (for GitLab: your user "
                                  "name, with a personal access token as password).", code="invalid.registry.user")
        if not isinstance(self.password, str) or not self.password:
            raise ValidationError("The registry password (or access token) is empty.",
                                  "Type the password or paste an access token into the password box.",
                                  code="invalid.registry.password")
        if any(c in self.password for c in "\0\r\n"):
            # `docker login --password-stdin` reads the password as one line.
            raise ValidationError("The registry password (or access token) contains a line break or NUL.",
                                  "Type or paste only the password or token itself, on one line.",
                                  code="invalid.registry.password")


def ask_credentials(registry: str, username: str) -> Credentials:
    """Ask for the password / token without echoing it (terminal or notebook `getpass`)."""
    import getpass

    return Credentials(registry_address(registry), username,
                       getpass.getpass(f"Password or access token for {username} at {registry}: "))


USERNAME_MAX = 255


def registry_address(address: str) -> str:
    """'host' or 'host:port' (no scheme, no path)."""
    if not isinstance(address, str) or not address:
        raise ValidationError("The registry address is empty.",
                              "Enter the registry's host name, e.g. 'registry.gitlab.com' or 'ghcr.io'.",
                              code="invalid.registry.address")
    host, colon, port = address.partition(":")
    try:
        names.host(host)
        if colon:
            # int() alone would take ' 5000', '+5000' or '5_000'.
            if not re.fullmatch(r"[0-9]{1,5}", port):
                raise ValidationError("bad port", code="invalid.registry.address")
            names.port(port)
    except ValidationError:
        raise ValidationError(f"{address!r} is not a registry address.",
                              "Give just the host (and port), e.g. 'registry.gitlab.com' or '10.0.0.5:5000', "
                              "without 'https://' or a path.", code="invalid.registry.address") from None
    return address


# --------------------------------------------------------------------------- error mapping

_AUTH = ("unauthorized", "authentication required", "incorrect username or password", "401",
         "no basic auth credentials", "denied")
_UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "no route to host", "timeout",
                "network is unreachable", "dial tcp", "connection reset", "timed out")
_TLS = ("x509", "certificate")


def classify(text: str, registry: str, where: str = "this computer", *, pulling: bool = False) -> LabdeployError:
    """Docker's error text about a registry, said in the researcher's words. `pulling`: the
    server was pulling (a refusal then means the server is not logged in)."""
    low = (text or "").lower()
    detail = (text or "").strip()[-400:]
    if is_disk_full(low):
        return disk_full_error("server" if where == "the server" else "local machine", text)
    if any(k in low for k in _TLS):
        return RegistryTLSError(
            f"{where.capitalize()} does not trust the certificate of the registry {registry}: {detail}",
            f"If the registry uses its own certificate authority, put its CA file at "
            f"/etc/docker/certs.d/{registry}/ca.crt on {where} (no Docker restart needed), then try again.")
    if any(k in low for k in _AUTH):
        return RegistryAuthFailed(
            f"The registry {registry} refused the login from {where}: {detail}",
            "" if pulling else "Check the user name and password. For GitLab/GitHub use a personal access token "
            "with the read_registry/write_registry (or packages) permission as the password.",
            remedy=Remedy("registry.login_server", registry=registry) if pulling else None)
    if any(k in low for k in _UNREACHABLE):
        return RegistryUnreachable(
            f"The registry {registry} can't be reached from {where}: {detail}",
            "Check the registry address (host and port) and that the registry is up; from the server, "
            "check that its firewall lets it connect out.")
    return RegistryError(f"The registry {registry} answered with an error on {where}: {detail}",
                         "Read the message above; check the address, the image name and your permissions.")


# --------------------------------------------------------------------------- local login

_session: dict = {}  # registry -> Credentials kept in memory for this session (no helper)
_session_lock = threading.Lock()


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def credential_helper(registry: str) -> Optional[str]:
    """The credential helper the local Docker config uses for this registry, or None."""
    p = docker_config_path()
    try:
        cfg = json.loads(p.read_text()) if p.exists() else {}
    except (OSError, ValueError):
        return None
    return (cfg.get("credHelpers") or {}).get(registry) or cfg.get("credsStore") or None


PLAINTEXT_HINT = ("Set up a Docker credential helper so passwords are kept in your system's keychain: on macOS "
                  "'osxkeychain' and on Windows 'wincred' (Docker Desktop sets these up); on Linux install "
                  "'docker-credential-pass' or 'docker-credential-secretservice', then put "
                  "{\"credsStore\": \"pass\"} (or \"secretservice\") in ~/.docker/config.json and log in again. "
                  "See https://docs.docker.com/reference/cli/docker/login/#credential-stores")


@dataclass(frozen=True)
class LoginResult:
    registry: str
    username: str
    stored: str  # "credential helper <name>" or "memory (this session only)"


def login_local(credentials: Credentials, *, reporter: Optional[Reporter] = None, client=None) -> LoginResult:
    """Check the credentials with the local Docker engine and keep them safely.

    The engine verifies them against the registry (a wrong password fails here). They are then
    stored through the configured credential helper (the secret on the helper's stdin), or, with
    no helper, kept in memory for this session only, with a warning that says how to set one up.
    """
    reporter = reporter or null_reporter
    client = client or build.docker_client()
    with step(reporter, "log in here", f"{credentials.username} at {credentials.registry}"):
        try:
            client.login(username=credentials.username, password=credentials.password,
                         registry=credentials.registry, reauth=True)
        except Exception as exc:  # docker.errors.APIError and requests errors
            raise classify(_api_error_text(exc), credentials.registry, "this computer") from None
        helper = credential_helper(credentials.registry)
        if helper:
            _helper_store(helper, credentials)
            stored = f"credential helper {helper}"
        else:
            reporter(WarningEvent(
                "Your Docker configuration has no credential helper, so `docker login` would store this "
                "password unencrypted in ~/.docker/config.json. labdeploy keeps it in memory for this "
                "session only.", PLAINTEXT_HINT))
            stored = "memory (this session only)"
        with _session_lock:
            _session[credentials.registry] = credentials
        return LoginResult(credentials.registry, credentials.username, stored)


def _helper_store(helper: str, credentials: Credentials) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", helper):
        raise ValidationError(f"The credential helper name {helper!r} in your Docker config is not valid.",
                              "Fix 'credsStore'/'credHelpers' in ~/.docker/config.json.",
                              code="invalid.docker_config.helper")
    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        raise LabdeployError(f"Your Docker config names the credential helper {helper!r}, but "
                             f"docker-credential-{helper} is not installed.",
                             "Install it, or remove 'credsStore'/'credHelpers' from ~/.docker/config.json.",
                             code="docker_config.helper_missing")
    payload = json.dumps({"ServerURL": credentials.registry, "Username": credentials.username,
                          "Secret": credentials.password}).encode()
    proc = subprocess.run([exe, "store"], input=payload, capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise LabdeployError(f"The credential helper {helper} could not store the login: "
                             f"{proc.stdout.decode(errors='replace').strip()} {proc.stderr.decode(errors='replace').strip()}",
                             "Check that the helper works (e.g. unlock your keychain / `pass` store).",
                             code="docker_config.helper_failed")


def session_credentials(registry: str) -> Optional[Credentials]:
    with _session_lock:
        return _session.get(registry)


def forget_session(registry: Optional[str] = None) -> None:
    with _session_lock:
        if registry is None:
            _session.clear()
        else:
            _session.pop(registry, None)


def _api_error_text(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


# --------------------------------------------------------------------------- server login

def remote_docker_config(path: Optional[str], home: Optional[str] = None) -> Optional[str]:
    """A server folder for a registry login kept apart from ~/.docker, as a path relative to
    the login user's home; None stays None (the user's own ~/.docker).

    Allowed: a relative path inside the home without '..' (e.g. '.docker-lab'), or an absolute
    path under `home` (the server's home directory, needed to check it). Docker writes the
    password into this folder, so it must never point elsewhere on the server.
    """
    if path is None:
        return None
    hint = ("Give a folder relative to your home on the server, without '..', e.g. '.docker-lab' or "
            "'dallinger/.registry-login'.")
    if not isinstance(path, str) or not path.strip():
        raise ValidationError("The server's Docker config folder is empty.", hint,
                              code="invalid.registry.docker_config")
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        raise ValidationError(f"The server's Docker config folder {path!r} contains control characters.", hint,
                              code="invalid.registry.docker_config")
    if path.startswith("~"):
        raise ValidationError(f"The server's Docker config folder {path!r} starts with '~'.",
                              "Leave out '~/': relative folders are taken from your home on the server.",
                              code="invalid.registry.docker_config")
    if ".." in path.split("/"):
        raise ValidationError(f"The server's Docker config folder {path!r} contains '..'.", hint,
                              code="invalid.registry.docker_config")
    rel = path
    if posixpath.isabs(path):
        root = (home or "").rstrip("/")
        if not home or not posixpath.isabs(home):
            raise ValidationError(f"The server's Docker config folder {path!r} is absolute, and the server's home "
                                  "is not known to check it against.", hint, code="invalid.registry.docker_config")
        norm = posixpath.normpath(path)
        if not norm.startswith(root + "/"):
            raise ValidationError(f"The server's Docker config folder {path} is outside your home {home} on the "
                                  "server.", hint, code="invalid.registry.docker_config")
        rel = norm[len(root) + 1:]
    rel = posixpath.normpath(rel)
    if rel in (".", ""):
        raise ValidationError("The server's Docker config folder can't be your home folder itself.", hint,
                              code="invalid.registry.docker_config")
    return rel


def _config_dir(remote, docker_config: Optional[str]) -> Optional[str]:
    """The absolute DOCKER_CONFIG folder that keeps a login private on the server (e.g. per deploy)."""
    if not docker_config:
        return None
    return posixpath.join(remote.home, _checked_config(remote, docker_config))


def _checked_config(remote, docker_config: Optional[str]) -> Optional[str]:
    # The server's home is asked for only when an absolute path has to be checked against it.
    home = remote.home if isinstance(docker_config, str) and docker_config.startswith("/") else None
    return remote_docker_config(docker_config, home)


def login_server(remote, credentials: Credentials, *, docker_config: Optional[str] = None,
                 reporter: Optional[Reporter] = None, temporary: bool = False) -> None:
    """`docker login --password-stdin` on the server: the password goes over the SSH channel's stdin.

    `docker_config` (a folder relative to the home, see remote_docker_config) keeps this login
    apart from the server user's own ~/.docker; it is created with mode 0700. `temporary`:
    the caller deletes that folder right after use, so the password is not left stored and
    no warning about its storage is given.
    """
    reporter = reporter or null_reporter
    docker_config = _checked_config(remote, docker_config)  # refused before anything runs
    if temporary and not docker_config:
        raise ValidationError("A temporary server login needs its own docker_config folder.",
                              code="invalid.registry.docker_config", remedy=Remedy("registry.temporary_login"))
    with step(reporter, "log in on the server", f"{credentials.username} at {credentials.registry}"):
        if docker_config:
            remote.makedirs(docker_config, 0o700)
        argv = registry_commands.login(credentials.registry, credentials.username,
                                       config_dir=_config_dir(remote, docker_config))
        try:
            res = remote.run(argv, stdin=credentials.password.encode() + b"\n", timeout=120)
        except CommandFailed as exc:
            raise build.server_docker_error(remote, exc.exit_status, exc.stderr) or \
                classify(exc.stderr or exc.stdout, credentials.registry, "the server") from None
        # Docker says so when it wrote the password into config.json (no credential helper).
        if "unencrypted" in (res.stderr or "").lower() and not temporary:
            where = f"~/{docker_config}/config.json" if docker_config else "~/.docker/config.json"
            reporter(WarningEvent(
                f"The server's Docker stores this registry password unencrypted in {where} "
                f"(readable by {getattr(remote, 'user', None) or 'that user'} and root).",
                "Use 'log out after the pull' in the deploy, or set up a credential helper on the server."))


def logout_server(remote, registry: str, *, docker_config: Optional[str] = None) -> None:
    registry_address(registry)
    argv = registry_commands.logout(registry, config_dir=_config_dir(remote, docker_config))  # checked first
    remote.run(argv, check=False, timeout=60)


def _has_login(config_text: str, registry: str) -> bool:
    """Whether a Docker config.json names a login for `registry` (an `auths` entry, with or
    without the scheme Docker sometimes writes, or a credential helper for it) (pure)."""
    try:
        cfg = json.loads(config_text or "{}")
    except ValueError:
        return False
    if not isinstance(cfg, dict):
        return False
    auths = cfg.get("auths") if isinstance(cfg.get("auths"), dict) else {}
    names_ = {registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"}
    helpers = cfg.get("credHelpers") if isinstance(cfg.get("credHelpers"), dict) else {}
    return bool(names_ & set(auths)) or registry in helpers


@dataclass(frozen=True)
class LoginState:
    """Who is logged in to a registry: `here` says how this computer holds a login ("" for
    none), `server` whether the server's Docker config names one (None: not asked)."""
    registry: str
    here: str
    server: Optional[bool] = None


def login_state(registry: str, remote=None, *, docker_config: Optional[str] = None) -> LoginState:
    """Read, without logging in, whether this computer (this session's login, a credential
    helper, or ~/.docker/config.json) and the server (its Docker config) hold a login."""
    registry_address(registry)
    here = ""
    if session_credentials(registry) is not None:
        here = "this session"
    else:
        p = docker_config_path()
        try:
            text = p.read_text() if p.exists() else ""
        except OSError:
            text = ""
        if _has_login(text, registry):
            here = "Docker's config"
    server = None
    if remote is not None:
        folder = _checked_config(remote, docker_config) or ".docker"
        path = posixpath.join(folder, "config.json")
        server = remote.exists(path) and _has_login(remote.get_bytes(path).decode(errors="replace"), registry)
    return LoginState(registry, here, server)


# --------------------------------------------------------------------------- push / pull

def _auth_for(registry: Optional[str]) -> Optional[dict]:
    creds = session_credentials(registry) if registry else None
    if creds is None:
        return None  # the SDK falls back to ~/.docker/config.json and its helpers
    return {"username": creds.username, "password": creds.password, "serveraddress": creds.registry}


def push(ref: str, *, reporter: Optional[Reporter] = None, client=None) -> str:
    """Push `ref` from the local engine with per-layer progress; returns the manifest digest."""
    reporter = reporter or null_reporter
    build.image_reference(ref)
    repository, _, tag = ref.rpartition(":")
    registry = build.registry_of(repository)
    if registry is None:
        raise ValidationError(f"The image name {repository!r} names no registry, so it can't be pushed.",
                              "Set the base image name to include your registry, e.g. "
                              "'registry.gitlab.com/my-group/experiment-images'.",
                              code="invalid.image_name.no_registry")
    client = client or build.docker_client()
    digest = None
    with step(reporter, "push image", ref):
        try:
            stream = client.api.push(repository, tag=tag, stream=True, decode=True, auth_config=_auth_for(registry))
            for event in stream:
                if "error" in event:
                    raise classify(event.get("error", ""), registry, "this computer")
                detail = event.get("progressDetail") or {}
                layer = event.get("id", "")
                status = event.get("status", "")
                if status == "Pushing" and detail.get("total"):
                    reporter(Progress("push image", int(detail.get("current", 0)), int(detail["total"]), item=layer))
                elif status in ("Pushed", "Layer already exists", "Mounted from"):
                    reporter(LogLine(f"{layer}: {status}", "push"))
                aux = event.get("aux") or {}
                if "Digest" in aux:
                    digest = aux["Digest"]
        except LabdeployError:
            raise
        except Exception as exc:
            raise classify(_api_error_text(exc), registry, "this computer") from None
        if not digest:
            raise RegistryError(f"The push of {ref} ended without a digest from {registry}.", "Try the push again.",
                                code="registry.push.no_digest")
    return digest


_PULL_LINE = re.compile(r"^([0-9a-f]{12}): (.+)$")


def pull_on_server(remote, repository: str, digest: str, *, tag_as: Optional[str] = None,
                   docker_config: Optional[str] = None, reporter: Optional[Reporter] = None) -> str:
    """`docker pull repository@digest` on the server (layer progress), optionally tag it; returns the image ID."""
    reporter = reporter or null_reporter
    names.image_repository(repository)
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest or ""):
        raise ValidationError(f"{digest!r} is not an image digest.", "Use the digest the push returned.",
                              code="invalid.image_digest")
    if tag_as:
        build.image_reference(tag_as)
    config_dir = _config_dir(remote, docker_config)
    ref = f"{repository}@{digest}"
    layers: dict = {}

    image_id = []

    def on_line(line: str, _stream: str) -> None:
        found = image_commands.image_id_in(line)
        if found is not None:
            image_id.append(found)
            return
        reporter(LogLine(line, "pull"))
        m = _PULL_LINE.match(line.strip())
        if not m:
            return
        layer, status = m.groups()
        if status.startswith(("Pulling fs layer", "Waiting", "Already exists", "Pull complete", "Download complete",
                              "Verifying", "Extracting", "Downloading")):
            done = status.startswith(("Already exists", "Pull complete"))
            if layers.get(layer) is not True:
                layers[layer] = done
            reporter(Progress("pull on the server", sum(1 for v in layers.values() if v), len(layers),
                              unit="layers", item=layer))

    with step(reporter, "pull on the server", ref):
        try:
            # Pull, tag and read the ID in one round trip.
            remote.run(image_commands.pull(ref, tag_as or "", config_dir=config_dir),
                       timeout=7200, on_line=on_line)
        except CommandFailed as exc:
            raise classify((exc.stderr or "") + (exc.stdout or ""), build.registry_of(repository) or repository,
                           "the server", pulling=True) from None
        if not image_id or not image_id[-1]:
            raise RemoteError(f"The server pulled {ref} but its engine does not show the image.",
                              "Run `docker image ls` on the server; try the deploy again.",
                              code="registry.pull.missing_image")
        return image_id[-1]
