"""`labdeploy prune`, `alerts` and `doctor`: a server that runs a study for weeks."""

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


@cli.group("alerts", context_settings=CONTEXT_SETTINGS)
def alerts_group():
    """Alerts from the server (app down, disk, memory, connections, backups) by webhook or e-mail.

    \b
    Examples:
      labdeploy alerts set --webhook-url-stdin < hook.txt
      labdeploy alerts set --email-to you@lab.org --smtp-host smtp.lab.org --smtp-user you --smtp-password-stdin
      labdeploy alerts test
      labdeploy alerts list
    """


@alerts_group.command("set", context_settings=CONTEXT_SETTINGS)
@server_option
@click.option("--webhook-url-stdin", is_flag=True, help="Read the webhook URL (a secret) from stdin.")
@click.option("--no-webhook", is_flag=True, help="Stop sending to the webhook.")
@click.option("--email-to", multiple=True, metavar="ADDRESS", help="Send alerts to this address (repeat for more).")
@click.option("--email-from", default=None, metavar="ADDRESS", help="The sender address (default: the first --email-to).")
@click.option("--smtp-host", default=None)
@click.option("--smtp-port", type=int, default=587, show_default=True)
@click.option("--smtp-security", type=click.Choice(("starttls", "ssl", "none")), default="starttls", show_default=True)
@click.option("--smtp-user", default=None)
@click.option("--smtp-password-stdin", is_flag=True, help="Read the SMTP password (a secret) from stdin.")
@click.option("--interval", "interval_s", type=int, default=None, help="Seconds between checks (60).")
@click.option("--quiet-minutes", type=int, default=None, help="Minutes before the same incident alerts again (30).")
@click.option("--disk-free-min", "disk_free_min_pct", type=float, default=None, help="Alert under this % of free disk (10).")
@click.option("--memory-max", "memory_max_pct", type=float, default=None, help="Alert over this % of memory used (90).")
@click.option("--connections-max", "connections_max_pct", type=float, default=None,
              help="Alert over this % of a connection limit (80).")
@click.option("--web-errors-max", "web_error_max_pct", type=float, default=None,
              help="Alert when over this % of an app's requests in one round fail with a server error (10).")
@click.option("--web-min-requests", type=int, default=None,
              help="Judge the error rate only from this many requests in a round (20).")
@common_options
@with_hints
def alerts_set(server, webhook_url_stdin, no_webhook, email_to, email_from, smtp_host, smtp_port, smtp_security,
               smtp_user, smtp_password_stdin, **thresholds):
    """Set where alerts go and when they fire (what is not given stays as it is)."""
    alerts = core("alerts")
    kwargs = {k: v for k, v in thresholds.items() if v is not None}
    lines = click.get_text_stream("stdin").read().splitlines() if webhook_url_stdin or smtp_password_stdin else []
    if webhook_url_stdin:
        kwargs["webhook_url"] = lines.pop(0).strip() if lines else ""
    elif no_webhook:
        kwargs["webhook_url"] = ""
    if smtp_password_stdin:
        kwargs["smtp_password"] = lines.pop(0).strip() if lines else ""
    if email_to:
        kwargs.update(email_to=list(email_to), email_from=email_from, smtp_host=smtp_host, smtp_port=smtp_port,
                      smtp_security=smtp_security, smtp_user=smtp_user)
    remote = open_server(server)
    with _ui.usage_errors(ValidationError):
        df = alerts.set(remote, **kwargs)
    _ui.output(df, render=lambda d: _ui.table(d))
    _ui.ok("Alert settings saved; the watcher uses them from its next round.")


@alerts_group.command("test", context_settings=CONTEXT_SETTINGS)
@server_option
@common_options
@with_hints
def alerts_test(server):
    """Send a test alert through every channel, from the server."""
    alerts = core("alerts")
    df = alerts.test(open_server(server))
    _ui.output(df, render=lambda d: _ui.table(d))
    if not df["ok"].all():
        raise click.exceptions.Exit(1)
    _ui.ok("The test alert was sent.")


@alerts_group.command("list", context_settings=CONTEXT_SETTINGS)
@server_option
@click.option("--history", is_flag=True, help="Past incidents instead of the settings.")
@common_options
@with_hints
def alerts_list(server, history):
    """The alert settings (secrets only as set / not set), or past incidents."""
    alerts = core("alerts")
    remote = open_server(server)
    df = alerts.history(remote) if history else alerts.list(remote)
    _ui.output(df, render=lambda d: _ui.table(d, empty="No incident yet."))


@cli.command("doctor", context_settings=CONTEXT_SETTINGS)
@server_option
@common_options
@with_hints
def doctor_cmd(server):
    """One report on the server: readiness, apps, disk, memory, connections, backups, alerts, locks.

    Each line that is not fine says what to do. Exit status 1 when a line is not fine.
    """
    doctor = core("doctor")
    df = doctor.doctor(open_server(server))
    _ui.output(df, render=lambda d: _ui.table(d, columns=["area", "subject", "ok", "detail", "what_to_do"]))
    if not df["ok"].all():
        raise click.exceptions.Exit(1)
    _ui.ok("Everything looks fine.")
