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
