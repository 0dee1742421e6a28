"""`labdeploy backup`, `backups` and `restore`: the server's scheduled backups from a terminal."""

from __future__ import annotations

from pathlib import Path

import click

from . import _ui
from ._app import CONTEXT_SETTINGS, _check_app, app_option, cli, common_options, core, open_server, pick_server, \
    server_option, with_hints, yes_option
from ._ui import UsageProblem


def _size(value) -> str:
    from ..progress import human_bytes

    try:
        return human_bytes(float(value))
    except (TypeError, ValueError):
        return ""


@cli.group("backup", context_settings=CONTEXT_SETTINGS, invoke_without_command=True)
@app_option(required=False)
@server_option
@common_options
@with_hints
@click.pass_context
def backup_group(ctx, app, server):
    """Back up an app's database now (the server also backs up every app on its own schedule).

    \b
    Examples:
      labdeploy backup --app stroop-pilot
      labdeploy backups --app stroop-pilot
      labdeploy backup pull --app stroop-pilot --to ~/study-backups
      labdeploy backup verify --app stroop-pilot
      labdeploy backup schedule --app stroop-pilot --every 2h
    """
    if ctx.invoked_subcommand is not None:
        return
    if app is None:
        raise UsageProblem("Which app? Give --app NAME.", "List the apps with `labdeploy apps`.")
    backup = core("backup")
    remote = open_server(server)
    with _ui.reporting() as reporter:
        manifest = backup.now(app, remote, reporter=reporter)
    _ui.ok(f"Backed up {app}: {manifest['id']}, {_size(manifest.get('size'))}, {manifest.get('tables')} tables.")
    _ui.output(manifest, render=lambda m: None)


@cli.command("backups", context_settings=CONTEXT_SETTINGS)
@app_option()
@server_option
@click.option("--no-checksums", is_flag=True, help="Do not read every dump again to check its sha256 (faster).")
@common_options
@with_hints
def backups_cmd(app, server, no_checksums):
    """List an app's backups on the server: time, age, size, tables, rows, checksum, drill.

    \b
    Examples:
      labdeploy backups --app stroop-pilot
      labdeploy backups --app stroop-pilot --json
    """
    backup = core("backup")
    remote = open_server(server)
    df = backup.backups(app, remote, checksums=not no_checksums)
    health = backup.health(remote, app)

    def render(d):
        d = d.copy()
        d["size"] = d["size"].map(_size)
        d["age"] = d["age"].map(lambda a: "" if a is None or str(a) == "NaT" else str(a).split(".")[0])
        _ui.table(d, columns=["id", "time", "age", "kind", "size", "tables", "rows", "checksum_ok", "drill", "version"],
                  empty=f"No backups of {app} yet.")
        for row in health.itertuples():
            if row.warning:
                _ui.warn(f"{app}: {row.warning}")

    _ui.output(df, render=render)


@backup_group.command("pull", context_settings=CONTEXT_SETTINGS)
@app_option(required=False)
@click.option("--all", "all_apps", is_flag=True, help="Every app's backups.")
@click.option("--to", "to", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Folder on this computer; backups go to DIR/<app>/ (0700 folders, 0600 files).")
@click.option("--encrypt-to", "encrypt_to", multiple=True, metavar="PUBLIC_KEY",
              help="Keep the copies encrypted (age format) to this public key: age1... or an SSH public key "
                   "line such as the content of ~/.ssh/id_ed25519.pub (repeatable).")
@click.option("--passphrase-stdin", is_flag=True, help="Keep the copies encrypted with a passphrase read from stdin.")
@server_option
@common_options
@with_hints
def pull_cmd(app, all_apps, to, encrypt_to, passphrase_stdin, server):
    """Copy the backups DIR does not have yet off the server, each checked against its sha256.

    \b
    Examples:
      labdeploy backup pull --app stroop-pilot --to ~/study-backups
      labdeploy backup pull --all --to /mnt/lab-nas/backups
    """
    if bool(app) == bool(all_apps):
        raise UsageProblem("Give either --app NAME or --all.", "e.g. labdeploy backup pull --app NAME --to DIR")
    backup = core("backup")
    phrase = _ui.read_secret("passphrase", from_stdin=True, flag="--passphrase-stdin") if passphrase_stdin else None
    with _ui.usage_errors():  # checked before connecting
        if encrypt_to or phrase is not None:
            backup.Encryption(tuple(encrypt_to), phrase).check()
    remote = open_server(server)
    with _ui.reporting() as reporter:
        df = backup.pull(remote, to, app, all_apps=all_apps, encrypt_to=list(encrypt_to) or None,
                         passphrase=phrase, reporter=reporter)
    new = int(df["pulled"].sum()) if len(df) else 0
    _ui.ok(f"{new} new backup(s) copied to {Path(to).expanduser()}; {len(df) - new} were there already.")
    _ui.output(df, render=lambda d: _ui.table(d, columns=["app", "id", "size", "pulled", "file"],
                                             empty="The server has no backups to pull."))


@backup_group.command("verify", context_settings=CONTEXT_SETTINGS)
@app_option()
@click.option("--id", "backup_id", default=None, metavar="ID", help="The backup to drill (default: the newest).")
@server_option
@common_options
@with_hints
def verify_cmd(app, backup_id, server):
    """A restore drill: restore a backup into a scratch database on the server and compare
    its row counts with the backup's manifest (the server also does this once a day).

    \b
    Examples:
      labdeploy backup verify --app stroop-pilot
    """
    backup = core("backup")
    remote = open_server(server)
    with _ui.reporting() as reporter:
        result = backup.verify_backup(app, remote, backup_id, reporter=reporter)
    _ui.ok(f"Backup {result['id']} of {app} restores: {result['detail']}")
    _ui.output(result, render=lambda r: None)


@backup_group.command("schedule", context_settings=CONTEXT_SETTINGS)
@app_option(required=False)
@click.option("--every", default="60min", show_default=True, metavar="INTERVAL",
              help="How often: minutes (90), 90min, 2h, 1d, or off.")
@click.option("--keep-hourly", default=24, show_default=True, type=int, help="Keep the newest backup of this many hours.")
@click.option("--keep-daily", default=14, show_default=True, type=int, help="Keep the newest backup of this many days.")
@server_option
@common_options
@with_hints
def schedule_cmd(app, every, keep_hourly, keep_daily, server):
    """Set how often an app's database is backed up on the server (without --app: the
    server's default for every app without its own) and which backups are kept.

    \b
    Examples:
      labdeploy backup schedule --app stroop-pilot --every 2h
      labdeploy backup schedule --every off --app old-pilot
    """
    backup = core("backup")
    with _ui.usage_errors():  # checked before connecting
        backup.check_schedule(every, keep_hourly, keep_daily)
    remote = open_server(server)
    plan = backup.schedule(remote, app, every=every, keep_hourly=keep_hourly, keep_daily=keep_daily)
    when = "off" if plan.every_minutes is None else f"every {plan.every_minutes} min"
    _ui.ok(f"Backups of {app or 'every app'}: {when}; keeping {plan.keep_hourly} hourly and {plan.keep_daily} daily.")
    _ui.output(plan, render=lambda p: None)


@cli.command("restore", context_settings=CONTEXT_SETTINGS)
@app_option()
@click.option("--from", "source", default="latest", show_default=True, metavar="SOURCE",
              help="latest, a backup id on the server, a pulled .dump file or an export .zip.")
@click.option("--into", "into", default=None, metavar="NAME", callback=_check_app,
              help="The app to restore into (default: APP-restore, side by side with the app).")
@click.option("--identity", "identity", default=None, type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="For an encrypted copy (.dump.age): the private key file (age identity or SSH private key).")
@click.option("--passphrase-stdin", is_flag=True, help="For an encrypted copy: read its passphrase from stdin.")
@server_option
@yes_option
@common_options
@with_hints
def restore_cmd(app, source, into, identity, passphrase_stdin, server, yes):
    """Restore an app's data from a backup, a pulled dump or an export zip. By default into a
    new app name side by side; into an existing app only with confirmation (it is stopped, its
    current data backed up first, then started again). Row counts are checked and shown.

    \b
    Examples:
      labdeploy restore --app stroop-pilot --into stroop-check
      labdeploy restore --app stroop-pilot --from ~/study-backups/stroop-pilot/20261130T140000Z.scheduled.dump --into stroop-pilot
      labdeploy restore --app stroop-pilot --from export.zip --into stroop-pilot --yes
    """
    backup = core("backup")
    phrase = _ui.read_secret("passphrase", from_stdin=True, flag="--passphrase-stdin") if passphrase_stdin else None
    with _ui.usage_errors():  # checked before connecting
        backup.check_source(source)
    keys = {"identity": identity, "passphrase": phrase}
    name = pick_server(server)
    remote = open_server(name)
    target = into or f"{app}-restore"
    try:
        with _ui.reporting() as reporter:
            result = backup.restore(app, remote, source, into=into, confirm=False, reporter=reporter, **keys)
    except backup.RestoreNeedsConfirmation:
        _ui.confirm(f"{target} on {name} holds an app or data already: replace its data with {source} "
                    "(a backup of it is taken first)?", yes=yes)
        with _ui.reporting() as reporter:
            result = backup.restore(app, remote, source, into=into, confirm=True, reporter=reporter, **keys)
    _ui.ok(f"Restored {result.source} into {result.app}"
           + (f" (its previous data is backup {result.pre_restore_backup})" if result.pre_restore_backup else ""))
    _ui.output(result, render=lambda r: _ui.table(r.counts, title="Row counts"))
