"""Log the server's Docker in to (and out of) an image registry. The password goes on stdin."""

from __future__ import annotations

from typing import Optional

from .images import with_docker_config


def login(registry: str, username: str, *, config_dir: Optional[str] = None) -> list[str]:
    """`docker login --password-stdin`: the password travels on the SSH channel's stdin.
    `config_dir` (absolute) keeps the login in a folder of its own."""
    return with_docker_config(config_dir, ["docker", "login", "--username", username, "--password-stdin",
                                           registry])


def logout(registry: str, *, config_dir: Optional[str] = None) -> list[str]:
    return with_docker_config(config_dir, ["docker", "logout", registry])
