"""The shared PostgreSQL, reached through `docker exec` (no port, no password).

SQL always travels on stdin, never on the command line.
"""

from __future__ import annotations

import json
from typing import Optional

from ..server import layout


def psql(database: str = "dallinger", *extra: str, container: str = layout.POSTGRES_CONTAINER,
         superuser: str = layout.POSTGRES_SUPERUSER, stop_on_error: bool = True,
         app_name: Optional[str] = None) -> list[str]:
    """psql inside the PostgreSQL container as the superuser, reading SQL from stdin.
    `stop_on_error`: a failing statement ends the script; `app_name`: what pg_stat_activity
    shows for the connection. The caller checks the names (labdeploy.server.psql.database_name)."""
    return ["docker", "exec", "-i", *(["-e", f"PGAPPNAME={app_name}"] if app_name else []), container,
            "psql", "-U", superuser, "-X", *(["-v", "ON_ERROR_STOP=1"] if stop_on_error else []),
            "-d", database, *extra]


# TCP, not only the socket: during first-start init a temporary server answers on the socket
# alone; apps come over TCP. Then a real query, which prints 1.
READY = "pg_isready -q -h 127.0.0.1 -U dallinger && psql -U dallinger -X -tAc 'select 1'"


def ready(container: str = layout.POSTGRES_CONTAINER) -> list[str]:
    return ["docker", "exec", container, "sh", "-c", READY]


def is_ready(exit_status: int, stdout: str) -> bool:
    return exit_status == 0 and stdout.strip() == "1"


def networks(container: str = layout.POSTGRES_CONTAINER) -> list[str]:
    """The container's networks and its addresses on them, as JSON."""
    return ["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", container]


def address_on(stdout: str, network: str = layout.NETWORK) -> Optional[str]:
    """The container's IP address on `network` (or its first network) from `networks`."""
    found = json.loads(stdout)
    net = found.get(network) or next(iter(found.values()), {})
    return net.get("IPAddress") or None
