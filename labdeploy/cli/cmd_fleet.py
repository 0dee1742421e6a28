"""`labdeploy fleet status|apps|connections|usage`: every registered server at once."""

from __future__ import annotations

import click

from ._app import CONTEXT_SETTINGS, cli, common_options, core
from . import _ui


def _servers_option(f):
    return click.option("--server", "-s", "servers", multiple=True, metavar="NAME",
                        help="Only this registered server (repeatable). Default: every registered one.")(f)


def _show(df, columns: list, empty: str) -> None:
    """The table, then one line per server that did not answer (the others are still shown)."""
    def render(d):
        answered = d[d["answered"]] if len(d) else d
        _ui.table(answered, columns=["server", *[c for c in columns if c in d.columns]], empty=empty)
        for row in d[~d["answered"]].itertuples() if len(d) else ():
            _ui.warn(f"{row.server}: did not answer: {row.error}",
                     "Check that the server is up and reachable; the other servers are shown.")

    _ui.output(df, render=render)


@cli.group("fleet", context_settings=CONTEXT_SETTINGS)
@common_options
def fleet() -> None:
    """Every registered server at once: one table with a server column, each server asked over
    its own connection at the same time. A server that does not answer is a row saying so.

    \b
    Examples:
      labdeploy fleet status
      labdeploy fleet apps --json
      labdeploy fleet connections
      labdeploy fleet usage
    """


@fleet.command("status", context_settings=CONTEXT_SETTINGS)
@_servers_option
@common_options
def status_cmd(servers):
    """The containers of every app on every server: state, health, restarts.

    \b
    Examples:
      labdeploy fleet status
      labdeploy fleet status --server lab1 --server lab2 --json
    """
    df = core("fleet").status(servers or None)
    _show(df, ["app", "service", "state", "health", "restarts", "image"], "No app containers on any server.")


@fleet.command("apps", context_settings=CONTEXT_SETTINGS)
@_servers_option
@common_options
def apps_cmd(servers):
    """The apps on every server: state, version, URL.

    \b
    Examples:
      labdeploy fleet apps
      labdeploy fleet apps --json
    """
    df = core("fleet").apps(servers or None)
    _show(df, ["app", "state", "version", "url", "running"], "No apps on any server yet.")


@fleet.command("connections", context_settings=CONTEXT_SETTINGS)
@_servers_option
@common_options
def connections_cmd(servers):
    """Every server's PostgreSQL client connections (pg_stat_activity).

    \b
    Examples:
      labdeploy fleet connections
      labdeploy fleet connections --json
    """
    df = core("fleet").pg_activity(servers or None)
    _show(df, ["database", "user", "state", "application_name", "client_address", "max_connections"],
          "No client connections on any server.")


@fleet.command("usage", context_settings=CONTEXT_SETTINGS)
@_servers_option
@common_options
def usage_cmd(servers):
    """Memory, disk and apps per server, and how many more experiments fit (about 5 GB each).

    \b
    Examples:
      labdeploy fleet usage
      labdeploy fleet usage --json
    """
    df = core("fleet").usage(servers or None)
    _show(df, ["host", "memory_total_gb", "memory_free_gb", "disk_free_gb", "apps", "apps_running", "room"], "")
