"""`labdeploy prune`: keeping a server's disk bounded while a study runs for weeks."""

from __future__ import annotations

import click

from . import _ui
from ._app import CONTEXT_SETTINGS, cli, common_options, core, open_server, server_option, with_hints
from ..errors import ValidationError


@cli.command("prune", context_settings=CONTEXT_SETTINGS)
@server_option
@click.option("--keep", type=int, default=2, show_default=True,
              help="Unused images kept per app for going back to an earlier version.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--no-build-cache", is_flag=True, help="Leave Docker's dangling build cache alone.")
@common_options
@with_hints
def prune_cmd(server, keep, dry_run, no_build_cache):
    """Remove old app images, leftover stopped containers and dangling build cache.

    The deployed image of each app and the KEEP newest earlier ones stay; nothing without
    labdeploy's labels and none of the shared services' images is ever removed.

    \b
    Examples:
      labdeploy prune --dry-run
      labdeploy prune --keep 3
    """
    prune = core("prune")
    with _ui.usage_errors(ValidationError):  # refused before anything connects
        prune.check_keep(keep)
    remote = open_server(server)
    df = prune.prune(remote, keep=keep, dry_run=dry_run, build_cache=not no_build_cache)

    def render(d):
        _ui.table(d, columns=["kind", "app", "name", "id", "size_bytes", "action", "reason"], empty="Nothing to prune.")

    _ui.output(df, render=render)
    _ui.ok(prune.summary(df))
