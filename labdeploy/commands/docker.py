"""The Docker engine on the server: is it there, which containers run, remove what carries an
app's label.

Everything labdeploy starts for an app carries the label `labdeploy.app=<app>` (and its
services `labdeploy.service=<service>`); anything removed is chosen by that label, never by a
name pattern another object could match.
"""

from __future__ import annotations

from typing import Iterable, Optional

from .. import names
from .shell import script

APP_LABEL = "labdeploy.app"
SERVICE_LABEL = "labdeploy.service"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
NO_DOCKER = 127  # exit status of SERVER_VERSION when there is no `docker` command


def app_filter(app: Optional[str] = None) -> str:
    """`--filter` value for an app's objects, or for every labdeploy app's with None."""
    return f"label={APP_LABEL}" + (f"={names.app_name(app)}" if app is not None else "")


def service_filter(service: Optional[str] = None) -> str:
    return f"label={SERVICE_LABEL}" + (f"={names.service(service)}" if service is not None else "")


# `docker version`, not `docker info`: Docker 26's `docker info --format` exits 0 when the daemon
# refuses the user (permission denied), which would pass for a usable Docker.
SERVER_VERSION = "command -v docker >/dev/null 2>&1 || exit 127; docker version --format '{{.Server.Version}}'"


def server_version() -> list[str]:
    """The engine's version; exit 127 without docker, docker's own error without access."""
    return script(SERVER_VERSION)


def running_images(*containers: str) -> list[str]:
    """'<name> <running> <image>' per container (docker's error for one that does not exist)."""
    return ["docker", "inspect", "-f", "{{.Name}} {{.State.Running}} {{.Config.Image}}", *containers]


def parse_running_images(stdout: str) -> dict[str, str]:
    """{container name: image} of the running ones, from `running_images`."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "true":
            out[parts[0].lstrip("/")] = parts[2]
    return out


def is_running(container: str) -> list[str]:
    return ["docker", "inspect", "-f", "{{.State.Running}}", container]


def parse_is_running(exit_status: int, stdout: str) -> bool:
    return exit_status == 0 and stdout.strip() == "true"


def logs_tail(container: str, lines: int = 20) -> list[str]:
    return ["docker", "logs", "--tail", str(int(lines)), container]


def restart(ids: Iterable[str], stop_timeout: int = 10) -> list[str]:
    return ["docker", "restart", "-t", str(int(stop_timeout)), *ids]


# $1 = label filter: remove every container (running or not) that carries it.
REMOVE_CONTAINERS = 'ids=$(docker ps -aq --filter "$1"); [ -z "$ids" ] || docker rm -f $ids'


def remove_app_containers(app: str) -> list[str]:
    """Every container of the app, by its label (also those no compose file knows any more)."""
    return script(REMOVE_CONTAINERS, app_filter(app))


# $1 = label filter: remove the images that carry it (`docker rmi` leaves one a container
# still uses) and print their names.
REMOVE_IMAGES = ('refs=$(docker images --filter "$1" --format \'{{.Repository}}:{{.Tag}}\' | grep -v \'<none>\'); '
                 '[ -z "$refs" ] || docker rmi $refs >/dev/null 2>&1; echo $refs')


def remove_app_images(app: str) -> list[str]:
    """The app's images (labelled at build); prints the names it tried to remove."""
    return script(REMOVE_IMAGES, app_filter(app))


# $1 = volume, $2 = Compose project: remove the volume only when Compose made it for that project.
REMOVE_PROJECT_VOLUME = ('p=$(docker volume inspect -f \'{{index .Labels "com.docker.compose.project"}}\' "$1" '
                         '2>/dev/null) || exit 0; [ "$p" = "$2" ] || exit 0; docker volume rm "$1" >/dev/null')


def remove_project_volume(volume: str, project: str) -> list[str]:
    return script(REMOVE_PROJECT_VOLUME, volume, project)
