"""Which Docker Compose the server has: the v2 plugin (`docker compose`) or v1 (`docker-compose`)."""

from __future__ import annotations

from typing import Optional

from .shell import script

DETECT = ("if docker compose version >/dev/null 2>&1; then echo v2; "
          "elif command -v docker-compose >/dev/null 2>&1; then echo v1; else echo none; fi")


def detect() -> list[str]:
    """Prints v2, v1 or none."""
    return script(DETECT)


def read_detect(stdout: str) -> Optional[list[str]]:
    """The compose command's argv prefix from `detect`, or None when there is none."""
    return {"v2": ["docker", "compose"], "v1": ["docker-compose"]}.get(stdout.strip())
