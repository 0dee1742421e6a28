"""Turn an app's maintenance page on or off (the block itself: labdeploy.server.maintenance).

While it is on, Caddy answers new arrivals with a friendly page, `503` and `Retry-After`;
participants already in the experiment go on. An update keeps it on; turning it off is the
researcher's call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .. import names
from ..errors import UnknownApp
from ..progress import LogLine, Reporter, null_reporter, step
from ..server import appstate, layout, maintenance as block, stack
from ..server.locks import DeployLock
from ..ssh import pool


@dataclass
class MaintenanceState:
    app: str
    on: bool
    arrivals: str  # what counts as a new arrival, in words

    def summary(self) -> str:
        return (f"{self.app}: maintenance page {'on' if self.on else 'off'}"
                + (f" for new arrivals ({self.arrivals}); participants already in go on" if self.on else ""))


def _arrivals(m: block.Maintenance, dallinger: bool) -> str:
    return ", ".join(m.paths) if m.paths else ("Dallinger's ad, consent and participant creation" if dallinger else "")


def _site(remote, app: str) -> str:
    text = appstate.read_text(remote, layout.caddy_site(app))
    if text is None:
        raise UnknownApp(f"The app {app!r} has no web address on {remote.host} (no deployed app of that name).",
                         "Check the name: it must be an app deployed on this server.", code="app.unknown")
    return text


def check_inputs(paths: Optional[Sequence[str]] = None, message: Optional[str] = None,
                 retry_after: int = 300) -> block.Maintenance:
    """Refuse bad settings the way maintenance() would, without connecting."""
    return block.check(paths, message, retry_after)


@pool.closes_what_it_opens
def maintenance(app: str, server, on: bool = True, *, message: Optional[str] = None,
                paths: Optional[Sequence[str]] = None, retry_after: int = 300,
                reporter: Optional[Reporter] = None) -> MaintenanceState:
    """Show (on=True) or stop showing (on=False) the maintenance page to new arrivals.

    Dallinger and PsyNet apps need nothing more; other apps give `paths`, their entry routes
    ("/x" exactly, "/x*" everything under it). `message` is the page's text (plain text; line
    breaks kept), `retry_after` the seconds browsers are told to wait. Every input is checked
    before connecting; a configuration Caddy refuses leaves the previous one live.
    """
    app = names.app_name(app)
    if on not in (True, False):
        raise TypeError("on must be True or False")
    settings = check_inputs(paths, message, retry_after)
    reporter = reporter or null_reporter
    remote = pool.connect(server)
    with DeployLock(remote, app, operation="maintenance", reporter=reporter):
        site_text = _site(remote, app)
        dallinger = bool((appstate.read_state(remote, app) or {}).get("experiment_id"))
        new = block.with_block(site_text, block.block(settings, dallinger)) if on else block.without(site_text)
        if new != site_text:
            with step(reporter, "route", f"maintenance page {'on' if on else 'off'}"):
                remote.put_bytes(layout.caddy_site(app), new, mode=0o644)
                try:
                    stack.reload_caddy(remote)
                except BaseException:
                    remote.put_bytes(layout.caddy_site(app), site_text, mode=0o644)
                    raise
        else:
            reporter(LogLine(f"the maintenance page was already {'on' if on else 'off'}", "maintenance"))
    return MaintenanceState(app, on, _arrivals(settings, dallinger) if on else "")


@pool.closes_what_it_opens
def is_on(app: str, server) -> bool:
    """Whether new arrivals get the maintenance page now."""
    return block.is_on(_site(pool.remote(server), names.app_name(app)))
