"""The `labdeploy` command line: the notebooks' workflow in a terminal.

No logic of its own: each command parses its options, asks for what is missing (passwords,
confirmations, host keys), calls the same core functions the panels call, and renders the
result (tables, JSON, progress). Run `labdeploy --help`.
"""

from __future__ import annotations

from ._app import cli, main  # noqa: F401
from . import cmd_servers, cmd_apps, cmd_backups, cmd_maintenance, cmd_fleet, cmd_upkeep, cmd_rehearse  # noqa: F401,E402  (registers the commands)

__all__ = ["cli", "main"]
