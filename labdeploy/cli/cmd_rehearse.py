"""`labdeploy rehearse`: simulated participants against a side-by-side copy of an experiment,
and how many participants it holds on the server."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import _ui
from ._app import CONTEXT_SETTINGS, UsageProblem, app_option, cli, common_options, core, open_server, server_option, \
    with_hints
from .cmd_apps import _pairs
from ..errors import ValidationError


def _read_flow(path):
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageProblem(f"{path} is not a readable JSON flow: {exc}.",
                           'Write a JSON list of requests, e.g. [{"method": "GET", "path": "/"}].') from None


@cli.command("rehearse", context_settings=CONTEXT_SETTINGS)
@app_option()
@click.argument("experiment", type=click.Path(exists=True, file_okay=False))
@server_option
@click.option("--participants", "-n", type=int, default=10, show_default=True, help="The most simulated participants at once.")
@click.option("--ramp", type=int, default=3, show_default=True, help="Steps from a few participants up to --participants.")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds in all (shared by the steps).")
@click.option("--think", type=float, default=1.0, show_default=True, help="Seconds a participant waits between requests.")
@click.option("--flow", "flow_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A JSON list of requests one participant makes (needed for apps other than Dallinger and "
                   "PsyNet).")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Docker build argument of the copy.")
@click.option("--config", "config", multiple=True, metavar="KEY=VALUE", help="Experiment config of the copy.")
@click.option("--redis-image", default=None, help="Redis image of the copy.")
@click.option("--data", type=click.Choice(["latest", "fresh", "empty"]), default="latest", show_default=True,
              help="What the copy starts with: the app's latest backup (a fresh one when it has none), a backup "
                   "taken now, or no rows.")
@click.option("--force", is_flag=True, help="Rehearse even while real participants take part on the server.")
@common_options
@with_hints
def rehearse_cmd(app, experiment, server, participants, ramp, duration, think, flow_file, build_args, config,
                 redis_image, data, force):
    """Rehearse an experiment with simulated participants on a copy of it, measure the server,
    and say how many participants it holds (Ctrl-C stops the load at once; the copy is removed).

    \b
    Examples:
      labdeploy rehearse --app hello ./dallinger-hello -n 40 --ramp 4 --duration 120
      labdeploy rehearse --app stroop-pilot ./stroop --flow stroop-flow.json -n 20
    """
    rehearsal = core("rehearsal")
    settings = {k: v for k, v in (("build_args", _pairs(build_args, "--build-arg") or None),
                                  ("config", _pairs(config, "--config") or None), ("redis_image", redis_image)) if v}
    flow = _read_flow(flow_file)
    kwargs = dict(experiment=Path(experiment), participants=participants, ramp=ramp, duration=duration, think=think,
                  flow=flow, force=force, deploy_settings=settings, data=data)
    with _ui.usage_errors(ValidationError):  # refused before any connection
        rehearsal.check(app, **kwargs)
    remote = open_server(server)
    with _ui.reporting() as reporter:
        with _ui.usage_errors(ValidationError):  # refused before anything is deployed
            running = rehearsal.start(app, remote, reporter=reporter, **kwargs)
        try:
            result = running.result()
        except KeyboardInterrupt:
            running.stop()
            _ui.info("Stopping the load; removing the copy...")
            result = running.result()
    _ui.table(result.latency.reset_index(), title="Latency and errors by simultaneous participants")
    _ui.table(result.resources.reset_index(), title="Resources by simultaneous participants")
    _ui.table(result.costs.reset_index(), title="Cost per participant")
    _ui.ok(result.sentence)
    _ui.output({"recommendation": result.recommendation.as_dict()}, render=lambda _v: None)
