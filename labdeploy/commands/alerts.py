"""The alert watcher's commands: where Docker's socket is (the watcher talks to it), asking the
running watcher to send a test message or to check once, reading its history."""

from __future__ import annotations

from .shell import script

# The socket the login user's `docker` uses (DOCKER_HOST=unix://..., else the usual one) and its
# group, so the watcher (running as the login user) may use it; nothing for a TCP DOCKER_HOST.
DOCKER_ACCESS = ('case "${DOCKER_HOST:-}" in unix://*) s=${DOCKER_HOST#unix://} ;; "") s=/var/run/docker.sock ;; '
                 '*) exit 0 ;; esac; [ -S "$s" ] && printf "%s %s\\n" "$s" "$(stat -c %g "$s")"')


def docker_access() -> list[str]:
    return script(DOCKER_ACCESS)


def parse_docker_access(stdout: str):
    """(socket path, group id) or None."""
    parts = stdout.split()
    return (parts[0], parts[1]) if len(parts) == 2 and parts[0].startswith("/") and parts[1].isdigit() else None


def in_watcher(container: str, command: str) -> list[str]:
    """`watcher.py test|once` in the running watcher (its network, its view of the server)."""
    return ["docker", "exec", container, "python3", "/labdeploy/watcher.py", command]
