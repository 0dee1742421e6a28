"""Who in this process wants to hear that an app was deployed or destroyed.

The panels of one notebook share a kernel: when the export panel destroys an app, the deploy
panel must not go on showing its address. A panel subscribes a bound method here and re-reads
what is deployed when it is called; the core calls `announce` after a deploy, an update or a
destroy succeeded. Subscribers are held weakly (a closed or forgotten panel just drops out).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Callable

log = logging.getLogger("labdeploy.app.changes")

_lock = threading.Lock()
_subscribers: list[weakref.WeakMethod] = []


def subscribe(method: Callable[[str, str, str], None]) -> None:
    """Call `method(operation, app, server_host)` after each deploy/update/destroy in this process
    ("deploy", "update", "destroy"); `method` must be a bound method (held weakly)."""
    with _lock:
        _subscribers.append(weakref.WeakMethod(method))


def announce(operation: str, app: str, host: str) -> None:
    """Tell every subscriber; one that fails is logged, never breaks the operation that announced."""
    with _lock:
        _remember(operation, app, host)
        alive = [ref for ref in _subscribers if ref() is not None]
        _subscribers[:] = alive
    for ref in alive:
        method = ref()
        if method is None:
            continue
        try:
            method(operation, app, host)
        except Exception:  # noqa: BLE001 - a listener's bug must not fail a deploy or a destroy
            log.exception("a listener to app changes failed")


_latest: dict[str, str] = {}  # host -> the app last deployed or updated in this process


def _remember(operation: str, app: str, host: str) -> None:
    if operation in ("deploy", "update"):
        _latest[host] = app
    elif operation == "destroy" and _latest.get(host) == app:
        del _latest[host]


def latest_deployed(host: str) -> str | None:
    """The app this process (this notebook) last deployed or updated on `host` and has not
    destroyed since, else None: the app a monitor opens on."""
    return _latest.get(host)


def focus(current: str | None, wanted: str | None, latest: str | None, apps) -> str | None:
    """The app a monitoring view is about: the one chosen, else the one asked for, else the one
    this notebook deployed, as long as it is on the server; else None (the view of all apps).
    Never someone else's app just because its name sorts first."""
    for app in (current, wanted, latest):
        if app and app in apps:
            return app
    return None
