"""An update's start step through the health-gated web switch (labdeploy.server.webswitch).
Each function takes the update's Deploy object (labdeploy.app.deploy), whose state it reads.

The new web container is checked (health, and `/launch` when asked) while the old one keeps
serving; Caddy moves to it only then; worker and clock are replaced after that. An update
that changes more than the processes (Redis, the pooler, networks) is started plainly.
"""

from __future__ import annotations

import contextlib
import time

import yaml

from ..progress import LogLine
from ..server import appstate, compose, layout, webcheck, webswitch
from ..ssh import concurrent
from . import webprobe

PROCESSES = set(layout.PROCESS_SERVICES)


def switchable(d, document: dict) -> bool:
    """True when only the app's processes change and a web container serves through Caddy now."""
    before = d.facts
    if d.operation != "update" or not before.deployed or not before.compose_text or not before.site_text:
        return False
    try:
        old = yaml.safe_load(before.compose_text) or {}
    except yaml.YAMLError:
        return False
    if not isinstance(old, dict) or "web" not in (old.get("services") or {}):
        return False

    def rest(doc: dict) -> dict:
        return {**doc, "services": {k: v for k, v in (doc.get("services") or {}).items() if k not in PROCESSES}}

    return rest(old) == rest(document)


def start(d, compose_yaml: str, alongside=()) -> bool:
    """Write the new compose file and switch the web process; then replace worker and clock.
    False (nothing changed) when no web container serves now: the caller starts plainly.
    `alongside`: independent calls (assets, ...) run with the switch's first steps, each on its
    own channel; they have run when this returns or raises."""
    remote, app, opts = d.remote, d.app, d.options
    d.undo.append(("processes", lambda: switch_back(d)))
    found: list = []

    def pin() -> None:  # nothing a participant notices: Caddy names the live container
        found.append(webswitch.pin(remote, app, site_text=d.facts.site_text, reporter=d.report))

    try:
        # Their failures first: NoLiveWeb must not hide one (the caller would go on plainly).
        concurrent.together(*alongside, lambda: appstate.write(remote, layout.app_compose(app), compose_yaml, 0o644),
                            pin)
    except webswitch.NoLiveWeb:
        d.undo.pop()
        return False
    except BaseException:
        if found:  # best effort: Caddy names the alias again
            with contextlib.suppress(Exception):
                webswitch.unpin(remote, app, found[0])
        raise
    launch = bool(opts.launch)
    d.gated = True  # from here on the running version is only replaced once the new one passed

    def gate(port: int) -> None:
        if launch:
            webprobe.launch(port, d.host, opts.launch_attempts, d.report)
        webcheck.healthy(port, d.host, opts.health_path, 30)

    def after_switch() -> None:  # worker and clock, while the old web container finishes
        d.switched = True
        _replace_others(d)

    # Without worker or clock, `compose up` names no service and would touch web: after the switch.
    overlap = any(p != "web" for p in d.processes)
    webswitch.switch(remote, app, gate=gate, host=d.host, start_timeout=opts.start_timeout, reporter=d.report,
                     pinned=found[0], after_switch=after_switch if overlap else None)
    if not overlap:
        after_switch()
    d.switched = True
    return True


def _replace_others(d) -> None:
    others = [p for p in d.processes if p != "web"]
    compose.run_app(d.remote, d.app, ["up", "-d", "--no-deps", "--remove-orphans", *others], reporter=d.reporter,
                    timeout=300)
    d.started_at = time.monotonic()
    d.healthy = True  # the gate asked the health path


def switch_back(d) -> bool:
    """Undo: the previous compose file, and (once the switch was made) its web container
    switched back the same way, then its worker and clock. True when the previous version runs."""
    remote, app, before = d.remote, d.app, d.facts
    appstate.write(remote, layout.app_compose(app), before.compose_text, 0o644)
    if not getattr(d, "switched", False):
        return True  # the running version was never touched

    def gate(port: int) -> None:
        webcheck.healthy(port, d.host, d.options.health_path, 30)

    d.report(LogLine("switching participants back to the previous version", "rollback"))
    webswitch.switch(remote, app, gate=gate, host=d.host, start_timeout=d.options.start_timeout, reporter=d.report)
    services = (yaml.safe_load(before.compose_text) or {}).get("services") or {}
    compose.run_app(remote, app, ["up", "-d", "--no-deps", "--remove-orphans",
                                  *[p for p in layout.PROCESS_SERVICES if p != "web" and p in services]],
                    reporter=d.reporter, timeout=300)
    return True
