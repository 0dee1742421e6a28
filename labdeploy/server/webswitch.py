"""Replace an app's web container without a participant noticing: the health-gated switch.

`compose up` recreates the web container in place: participants get 502s while the new one
starts, and a broken version serves until the deploy notices. Instead the new container is
started beside the running one (`--scale web=2 --no-recreate`, so Compose still knows both as
its `web` service and `docker compose ps/logs` keep working), asked over the SSH connection
until it is healthy (and launched, when the caller's gate says so), and only then does Caddy
send requests to it, through a graceful reload. The old one then gets SIGTERM (gunicorn
finishes its requests in flight) and goes.

While a switch runs, Caddy's upstream is one container by its name: the web service's alias,
which both containers carry, would spread requests over both. Afterwards the site points at
the alias again, so a `docker compose up` by hand keeps working. A switch cut short (a
dropped connection) leaves Caddy pinned to the one that serves; the next switch removes the
other first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from . import appstate, caddy, compose, layout, stack, webcheck
from ..commands import docker, webswitch as commands
from ..errors import LabdeployError
from ..ssh import concurrent
from ..progress import LogLine, Reporter, null_reporter

DEFAULT_GRACE = 30  # seconds the old container has to finish its requests (gunicorn's own default)


class NoLiveWeb(LabdeployError):
    """There is no running web container to switch from (the caller starts one plainly)."""

    code = "app.web_not_running"


@dataclass(frozen=True)
class WebContainer:
    id: str
    name: str
    created: str
    state: str
    restarts: int
    ip: str
    image: str


def web_containers(remote, app: str) -> list[WebContainer]:
    """The app's web containers, oldest first (one round trip)."""
    res = remote.run(commands.web_containers(app), check=False, timeout=60)
    return [WebContainer(**c) for c in commands.parse_web_containers(res.stdout)]


def live_web(remote, app: str, site_text: Optional[str]) -> tuple[Optional[WebContainer], list[WebContainer]]:
    """(the web container participants reach, the others). Caddy pinned to one by name: that
    one; else the oldest running."""
    found = web_containers(remote, app)
    pinned = caddy.site_upstream(site_text)
    running = [c for c in found if c.state == "running"]
    live = next((c for c in running if c.name == pinned), None) or (running[0] if running else None)
    return live, [c for c in found if live is None or c.id != live.id]


def _route(remote, app: str, site_text: str, upstream: str) -> None:
    """Caddy sends the app's requests to `upstream` (graceful: requests in flight finish where
    they are), in one round trip. A refused configuration leaves the old one live, and its file
    back in place."""
    stack.route_site(remote, app, caddy.with_upstream(site_text, upstream))


_UNREAD = object()


@dataclass(frozen=True)
class Pinned:
    """A switch's first half done: Caddy sends everything to `live` by its name."""
    live: WebContainer
    site_text: str
    alias_site: str


def pin(remote, app: str, *, site_text=_UNREAD, reporter: Optional[Reporter] = None) -> Pinned:
    """The first half of a switch, which participants do not notice: find the live web
    container, remove any an earlier switch left, and pin Caddy to the live one by name.
    Raises NoLiveWeb when nothing serves now (then a plain `compose up` loses nothing).
    `site_text`: the app's site file as the caller read it under the app's lock (saves a read)."""
    report = reporter or null_reporter
    if site_text is _UNREAD:
        site_text = appstate.read_text(remote, layout.caddy_site(app))
    live, others = live_web(remote, app, site_text)
    if live is None or site_text is None or caddy.site_upstream(site_text) is None:
        raise NoLiveWeb(f"No web container of {app!r} is serving through Caddy now.",
                        "Nothing to switch from: the app is started plainly.")
    if others:  # left by a switch cut short: Caddy never sent them a request
        remote.run(commands.remove(c.id for c in others), timeout=120)
        report(LogLine(f"removed {len(others)} web container(s) an earlier switch left", "switch"))
    alias_site = caddy.with_upstream(site_text, layout.web_alias(app))
    _route(remote, app, alias_site, live.name)  # pinned: the new one gets nothing yet
    return Pinned(live, site_text, alias_site)


def unpin(remote, app: str, pinned: Pinned) -> None:
    """Caddy names the alias again (after a switch given up before its second half)."""
    _route(remote, app, pinned.alias_site, layout.web_alias(app))


def switch(remote, app: str, *, gate: Callable[[int], None], host: str, start_timeout: float = 120,
           grace: int = DEFAULT_GRACE, reporter: Optional[Reporter] = None, pinned: Optional[Pinned] = None,
           after_switch: Optional[Callable[[], None]] = None) -> WebContainer:
    """Start a web container from the app's compose file beside the live one, `gate(port)` it
    (a forwarded port to it: check health, launch; raise to refuse it), switch Caddy to it,
    and let the old one finish and go. Until the switch, the live container is never touched:
    any failure removes the new one and raises. Returns the new container.
    Raises NoLiveWeb when nothing serves now (then a plain `compose up` loses nothing).
    `pinned`: the first half (`pin`), when the caller did it alongside other work.
    `after_switch`: work that needs the switch made (worker and clock) and runs on its own
    channel while the old container finishes; its failure is raised once that one is gone."""
    report = reporter or null_reporter
    pinned = pinned or pin(remote, app, reporter=report)
    live, site_text, alias_site = pinned.live, pinned.site_text, pinned.alias_site
    new = None
    try:
        compose.run_app(remote, app, ["up", "-d", "--no-deps", "--no-recreate", "--scale", "web=2", "web"],
                        timeout=300)
        new = next((c for c in web_containers(remote, app) if c.id != live.id), None)
        if new is None:
            raise LabdeployError("Compose started no second web container.", "Read the logs below.",
                                 code="app.web_not_running")
        report(LogLine(f"{new.name} started beside {live.name}; checking it before any participant reaches it",
                       "switch"))
        with remote.forward(_address(remote, app, new, start_timeout), layout.WEB_PORT) as port:
            webcheck.wait_answering(port, host, "/", start_timeout, lambda: _state(remote, app, new))
            gate(port)
        _route(remote, app, alias_site, new.name)
    except BaseException as exc:
        if new is not None and isinstance(exc, Exception):
            exc.switch_logs = _last_lines(remote, new)  # the refused container goes; its last words stay
        _abandon(remote, app, new, site_text, report)
        raise
    report(LogLine(f"participants now reach {new.name}; {live.name} finishes its requests (at most {grace} s)",
                   "switch"))
    # The old one drains and stops while worker and clock are replaced (each on its own channel);
    # then it is removed while Caddy names the alias again (a stopped container holds no alias).
    concurrent.together(lambda: _retire(remote, live, grace, report), *((after_switch,) if after_switch else ()))
    concurrent.together(lambda: remote.run(commands.remove([live.id]), timeout=120),
                        lambda: _back_to_alias(remote, app, new, alias_site, report))
    return new


def _retire(remote, live: WebContainer, grace: int, report: Reporter) -> None:
    """The old container finishes its requests and stops (one command)."""
    left = remote.run(commands.retire(live.id, grace), timeout=2 * grace + 120).stdout.strip()
    if left not in ("", "0"):
        report(LogLine(f"{left} connection(s) to {live.name} still open after {grace} s; stopping it", "switch"))


def _back_to_alias(remote, app: str, new: WebContainer, alias_site: str, report: Reporter) -> None:
    try:  # only the new one holds the alias now
        _route(remote, app, alias_site, layout.web_alias(app))
    except LabdeployError as exc:  # Caddy stays pinned to the new container, which serves
        report(LogLine(f"Caddy still names {new.name}, not the alias: {exc.message}", "switch"))


def _abandon(remote, app: str, new: Optional[WebContainer], site_text: str, report: Reporter) -> None:
    """After a refused or failed new container: it goes, the site is as it was. Best effort
    (the connection may be what failed); the live container was never touched."""
    try:
        leftover = [c for c in web_containers(remote, app) if new is not None and c.id == new.id]
        if leftover:
            remote.run(commands.remove(c.id for c in leftover), timeout=120)
            report(LogLine(f"removed {new.name}; the running version kept serving", "switch"))
        try:
            stack.route_site(remote, app, site_text)
        except LabdeployError:
            # Refused (another site is broken) or Caddy is down: the file as it was all the same;
            # Caddy takes it at its next reload.
            appstate.write(remote, layout.caddy_site(app), site_text, 0o644)
            raise
    except Exception as exc:  # noqa: BLE001 - the original failure matters more
        report(LogLine(f"(cleaning up after the failed switch: {exc})", "switch"))


def _last_lines(remote, new: WebContainer, lines: int = 40) -> str:
    try:
        res = remote.run(docker.logs_tail(new.id, lines), check=False, timeout=60)
        return (res.stdout + res.stderr).strip()
    except Exception:  # noqa: BLE001 - e.g. the connection that failed the switch
        return ""


def _address(remote, app: str, new: WebContainer, timeout: float) -> str:
    """The new container's address on the shared network (it has one once it runs)."""
    if new.ip and new.state == "running":
        return new.ip  # read just now, with the list that found it
    deadline = time.monotonic() + min(timeout, 30)
    while True:
        now = _state(remote, app, new)
        if now.ip:
            return now.ip
        if time.monotonic() > deadline:
            raise LabdeployError(f"The new web container {new.name} has no address on the shared network "
                                 f"({now.state}).", "Read the logs below.", code="app.web_not_running")
        time.sleep(0.3)


def _state(remote, app: str, new: WebContainer) -> WebContainer:
    now = next((c for c in web_containers(remote, app) if c.id == new.id), None)
    if now is None:
        raise LabdeployError(f"The new web container {new.name} disappeared.", "Read the logs below.",
                             code="app.crashed")
    if now.state in ("exited", "dead", "restarting") or now.restarts > 0:
        raise LabdeployError(f"The new web process stopped right after starting ({now.state}, restarted "
                             f"{now.restarts}x); the running version kept serving.",
                             "Read the logs below: usually the real error is at their end.", code="app.crashed")
    return now
