"""The experiment's image: its name, building it on this computer (with a step-by-step log),
and what Docker's errors mean (disk full, Docker missing or not allowed on the server).

The tag comes from the experiment's content (labdeploy.experiment.folder.content_tag), so
the same content always gets the same tag on every machine and in every transfer mode.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Optional

from .. import names
from ..errors import DiskFull, LabdeployError, ValidationError, is_disk_full
# LinkOutsideFolder: scan_context raises it, and it was always one of this module's errors.
from ..experiment.folder import BuildContext, LinkOutsideFolder, check_build_args, content_tag, scan_context
from ..progress import LogLine, Progress, Reporter, null_reporter, step
from .localdocker import DockerUnavailable, unavailable  # noqa: F401 - DockerUnavailable was always here

DEFAULT_BASE_NAME = "labdeploy"
LABEL_APP = "labdeploy.app"
LABEL_CONTENT = "labdeploy.content"


# --------------------------------------------------------------------------- errors


class BuildFailed(LabdeployError):
    """`docker build` stopped at a step; the step and its output are kept."""

    code = "build.failed"

    def __init__(self, message: str, hint: str = "", *, failed_step: str = "", output: str = "", **kw) -> None:
        super().__init__(message, hint, **kw)
        self.failed_step = failed_step
        self.output = output


class ServerDockerUnavailable(LabdeployError):
    """The server's `docker` command is missing, not allowed, or its engine is down."""

    code = "server.docker.unavailable"


def server_docker_error(remote, exit_status: int, stderr: str) -> Optional[ServerDockerUnavailable]:
    """Why a `docker ...` command failed on the server, if the reason is Docker itself."""
    text = (stderr or "").lower()
    who = getattr(remote, "user", "the login user")
    label = getattr(remote, "label", "the server")
    if exit_status == 127 or "docker: command not found" in text or "docker: not found" in text:
        return ServerDockerUnavailable(
            f"Docker is not installed on {label}: the `docker` command is not found for {who}.",
            "Install Docker on the server (https://docs.docker.com/engine/install/ or the distribution's "
            "docker.io package) and make sure `docker` is on the PATH of SSH sessions.", code="server.docker.missing")
    if "permission denied" in text and "docker" in text:
        return ServerDockerUnavailable(
            f"The user {who} may not use Docker on {label} (permission denied on Docker's socket).",
            f"On the server, add the user to the docker group: `sudo usermod -aG docker {who}`; it applies "
            "from the next login, so reconnect afterwards.", code="server.docker.permission")
    if "cannot connect to the docker daemon" in text or "is the docker daemon running" in text:
        return ServerDockerUnavailable(
            f"Docker's engine is not running on {label}.",
            "Start it on the server (`sudo systemctl start docker`) and enable it at boot "
            "(`sudo systemctl enable docker`).", code="server.docker.not_running")
    return None


def disk_full_error(where: str, detail: str = "") -> DiskFull:
    """The real 'no space left on device' error from Docker, said plainly."""
    tail = f"\n{detail.strip()[-500:]}" if detail.strip() else ""
    cleanup = ("`docker image prune` removes unused images (add `-a` to remove every image no container "
               "uses); `docker builder prune` removes the build cache; `df -h` shows what is full.")
    return DiskFull(f"The {where} has run out of disk space, so the image could not be stored.{tail}",
                    f"Free space on the {where}: {cleanup} Then try again.")


# --------------------------------------------------------------------------- names

def image_reference(ref: str) -> str:
    """A full `repository:tag` reference, both parts checked."""
    if not isinstance(ref, str) or ":" not in ref.rpartition("/")[2]:
        raise ValidationError(f"{ref!r} is not an image reference with a tag.",
                              "Use the form 'repository:tag', e.g. 'labdeploy/stroop:3f2a9c0d1e2b4a5c'.",
                              code="invalid.image_ref")
    repository, _, tag = ref.rpartition(":")
    names.image_repository(repository)
    names.image_tag(tag)
    return ref


def registry_of(repository: str) -> Optional[str]:
    """The registry host of a repository name, or None for Docker Hub style names."""
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def image_ref(base_name: str, app: str, tag: str) -> str:
    """`<base>/<app>:<tag>` — one repository per app under the docker_image_base_name."""
    return f"{names.image_repository(base_name)}/{names.app_name(app)}:{names.image_tag(tag)}"


# --------------------------------------------------------------------------- .dockerignore


# --------------------------------------------------------------------------- context


# --------------------------------------------------------------------------- build output

_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_BUILDKIT_STEP_RE = re.compile(r"^#\d+ \[(?:[^\]]* )?(\d+)/(\d+)\] (.*)$")


class BuildLog:
    """Follows build output: reports steps as Progress, keeps the current step's lines."""

    def __init__(self, reporter: Reporter, step_name: str = "build image") -> None:
        self.reporter = reporter
        self.step_name = step_name
        self.current_step = ""
        self.step_lines: list[str] = []
        self.tail: list[str] = []

    def line(self, text: str) -> None:
        text = text.rstrip("\r\n")
        if not text.strip():
            return
        m = _STEP_RE.match(text) or _BUILDKIT_STEP_RE.match(text)
        if m:
            self.current_step = text if _STEP_RE.match(text) else f"Step {m.group(1)}/{m.group(2)} : {m.group(3)}"
            self.step_lines = []
            self.reporter(Progress(self.step_name, int(m.group(1)), int(m.group(2)), unit="steps",
                                   item=m.group(3)[:80]))
        else:
            self.step_lines.append(text)
            del self.step_lines[:-200]
        self.tail.append(text)
        del self.tail[:-200]
        self.reporter(LogLine(text, "build"))

    def failure(self, error: str, where: str = "local") -> LabdeployError:
        output = "\n".join(self.step_lines[-40:] + ([error] if error else []))
        if is_disk_full(error) or is_disk_full(output):
            return disk_full_error("server" if where == "server" else "local machine", error)
        at = self.current_step or "(before the first step)"
        return BuildFailed(
            f"Building the experiment image failed at {at}\n{output.strip()}",
            "Read the output of the failing step above: usually a command in the Dockerfile failed (a typo, "
            "a missing file or package). Fix the Dockerfile or the experiment and build again.",
            failed_step=self.current_step, output=output)


# --------------------------------------------------------------------------- local Docker

def docker_client():
    """The local Docker engine (DOCKER_HOST or the default socket)."""
    try:
        import docker  # imported here so the rest of labdeploy works without a local engine
    except ImportError:
        raise unavailable("Building here needs the Python package 'docker', and it is not installed.") from None
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception as exc:  # docker raises DockerException subclasses and requests errors
        raise unavailable(f"The Docker engine on this computer can't be reached ({exc}).") from exc


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    image_id: str
    tag: str


def build_local(experiment_dir, *, app: str, base_name: str = DEFAULT_BASE_NAME,
                build_args: Optional[dict] = None, dockerfile: str = "Dockerfile",
                reporter: Optional[Reporter] = None, client=None,
                context: Optional[BuildContext] = None) -> BuiltImage:
    """Build the experiment image with the local Docker engine; tag it `<base>/<app>:<content tag>`."""
    reporter = reporter or null_reporter
    names.app_name(app)
    names.image_repository(base_name)
    build_args = check_build_args(build_args)
    context = context or scan_context(experiment_dir, dockerfile)
    tag = content_tag(context, build_args)
    ref = image_ref(base_name, app, tag)
    client = client or docker_client()
    with step(reporter, "build image", ref):
        existing = _local_image_id(client, ref)
        if existing:  # same content: the image is already built
            reporter(LogLine(f"{ref} is already built (same content)", "build"))
            return BuiltImage(ref, existing, tag)
        log = BuildLog(reporter)
        image_id = None
        try:
            stream = client.api.build(
                path=str(context.root), dockerfile=context.dockerfile, tag=ref, rm=True, forcerm=True,
                decode=True, buildargs={k: str(v) for k, v in (build_args or {}).items()},
                labels={LABEL_APP: app, LABEL_CONTENT: tag})
            for chunk in stream:
                if "stream" in chunk:
                    for text in chunk["stream"].splitlines():
                        log.line(text)
                if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    raise log.failure(chunk.get("error", ""), "local")
        except LabdeployError:
            raise
        except Exception as exc:
            text = str(exc)
            if is_disk_full(text):
                raise disk_full_error("local machine", text) from exc
            raise log.failure(text, "local") from exc
        image_id = image_id or _local_image_id(client, ref)
        if not image_id:
            raise log.failure("the build ended without producing an image", "local")
        return BuiltImage(ref, image_id, tag)


def _local_image_id(client, ref: str) -> Optional[str]:
    import docker

    try:
        return client.api.inspect_image(ref)["Id"]
    except docker.errors.ImageNotFound:
        return None


def local_layers(client, ref: str) -> list[str]:
    """The image's layer diff IDs, bottom first."""
    return list(client.api.inspect_image(ref)["RootFS"]["Layers"])


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Docker's chain IDs: chain[0] = diff[0]; chain[n] = sha256(chain[n-1] + ' ' + diff[n])."""
    out: list[str] = []
    for diff in diff_ids:
        if not out:
            out.append(diff)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff}".encode()).hexdigest())
    return out
