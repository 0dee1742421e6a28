"""Docker on this computer: is it there, and which transfer modes does it allow?

Only two things build an image on this computer: the 'ssh-copy' and 'registry' transfer
modes, and PsyNet's preparation (in every mode). Everything else -- 'server-build' deploys
and updates, monitoring, exports, backups, destroy -- talks to the server's Docker over SSH
and needs none here. `probe()` says which case this computer is in; `require(mode)` refuses
a mode that needs a local Docker before anything touches the server (no lock, no upload).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Optional

from ..errors import LabdeployError, Remedy

NEEDS_LOCAL_DOCKER = ("ssh-copy", "registry")  # the modes that build the image here
SERVER_BUILD_ONLY = "no local Docker: server-build mode only"
DEFAULT_ADDRESS = "unix:///var/run/docker.sock"  # where the Docker SDK looks without DOCKER_HOST


class DockerUnavailable(LabdeployError):
    """The local Docker engine can't be reached."""

    code = "docker.local.unavailable"


@dataclass(frozen=True)
class LocalDocker:
    """What `probe()` found: whether the engine answered, where the `docker` command is."""

    engine: bool          # the engine answered (at DOCKER_HOST, or the default socket)
    cli: Optional[str]    # path of the `docker` command, None when it is not on PATH
    detail: str           # "Docker 26.1.5 at unix:///var/run/docker.sock", or why not

    @property
    def modes(self) -> tuple:
        return ("server-build", *NEEDS_LOCAL_DOCKER) if self.engine else ("server-build",)

    def summary(self) -> str:
        if self.engine:
            return f"{self.detail}: every transfer mode"
        return f"{SERVER_BUILD_ONLY} ({self.detail})"


def address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_ADDRESS


def probe(timeout: float = 5.0) -> LocalDocker:
    """Ask the local engine for its version (one short request); never raises."""
    cli = shutil.which("docker")
    try:
        import docker  # here, not at the top: importing labdeploy never needs it
    except ImportError:
        return LocalDocker(False, cli, "the Python package 'docker' is not installed")
    try:
        client = docker.from_env(timeout=timeout)  # asks the engine for its API version already
        try:
            version = client.version().get("Version", "?")
        finally:
            client.close()
    except Exception as exc:  # DockerException, requests' errors, OSError: all mean "not usable"
        return LocalDocker(False, cli, f"no engine answers at {address()}: {_short(exc)}")
    return LocalDocker(True, cli, f"Docker {version} at {address()}")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def unavailable(why: str, *, mode: Optional[str] = None) -> DockerUnavailable:
    """The error for a step that needs the local engine; its remedy: start Docker here, or
    choose the mode that builds on the server."""
    return DockerUnavailable(why, remedy=Remedy("docker.local", mode=mode))


def require(mode: str, found: Optional[LocalDocker] = None) -> Optional[LocalDocker]:
    """Refuse `mode` when it builds here and this computer has no usable Docker. Modes that
    build on the server pass without asking the engine (None)."""
    if mode not in NEEDS_LOCAL_DOCKER:
        return None
    found = found or probe()
    if not found.engine:
        raise unavailable(f"The '{mode}' transfer mode builds the image on this computer, and this computer has "
                          f"no usable Docker ({found.detail}). Nothing was sent to the server.", mode=mode)
    return found


def require_for_psynet(found: Optional[LocalDocker] = None) -> LocalDocker:
    """PsyNet's preparation runs in containers on this computer, with the `docker` command."""
    found = found or probe()
    if not found.engine or found.cli is None:
        why = found.detail if not found.engine else "the `docker` command is not on PATH"
        raise DockerUnavailable(
            "A PsyNet experiment is prepared (`psynet prepare`) in Docker on this computer before its image is "
            f"built, whichever transfer mode is chosen, and this computer has no usable Docker ({why}). "
            "Nothing was sent to the server.",
            "Install Docker on this computer and start it (Docker Desktop, or `sudo systemctl start docker` on "
            "Linux), or deploy from a computer that has Docker.", code="docker.local.psynet")
    return found
