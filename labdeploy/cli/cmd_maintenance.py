"""`labdeploy maintenance on|off`: the page new arrivals see while a study is being changed."""

from __future__ import annotations

import click

from . import _ui
from ._app import CONTEXT_SETTINGS, app_option, cli, common_options, core, open_server, server_option, with_hints
from ..errors import ValidationError


@cli.command("maintenance", context_settings=CONTEXT_SETTINGS)
@click.argument("state", type=click.Choice(("on", "off")))
@app_option()
@server_option
@click.option("--message", default=None, help="The page's text for participants (plain text).")
@click.option("--path", "paths", multiple=True, metavar="PATH",
              help="An entry route of an app that is not Dallinger or PsyNet ('/x' exactly, '/x*' all under it); "
                   "repeat for each.")
@click.option("--retry-after", type=int, default=300, show_default=True,
              help="Seconds browsers are told to wait before trying again.")
@common_options
@with_hints
def maintenance_cmd(state, app, server, message, paths, retry_after):
    """Show new arrivals a maintenance page (503 with Retry-After), or stop showing it.

    Participants already in the experiment go on; only the entry routes answer with the page
    (Dallinger and PsyNet: the ad, the consent page and the creation of a participant). An
    update keeps the page on until you turn it off.

    \b
    Examples:
      labdeploy maintenance on --app stroop-pilot --path / --path /api/participants
      labdeploy maintenance on --app psynet-study --message "Back at 14:00, sorry!"
      labdeploy maintenance off --app psynet-study
    """
    maintenance = core("maintenance")
    on = state == "on"
    with _ui.usage_errors(ValidationError):  # refused before anything connects
        maintenance.check_inputs(list(paths), message, retry_after)
    remote = open_server(server)
    with _ui.reporting() as reporter:
        result = maintenance.maintenance(app, remote, on, message=message, paths=list(paths) or None,
                                         retry_after=retry_after, reporter=reporter)
    _ui.ok(result.summary())
    _ui.output({"app": result.app, "on": result.on, "arrivals": result.arrivals}, render=lambda _v: None)
