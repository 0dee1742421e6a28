"""One connection per call: public functions that take a server (a Remote, a Server or a
registered name) open a connection when given a name, and close it when they return.

A Remote handed in by the caller stays open (it is theirs, and reusing it is the point).
"""

from __future__ import annotations

import contextvars
import functools

_opened: contextvars.ContextVar = contextvars.ContextVar("labdeploy_opened", default=None)


def connect(server):
    """A connected Remote for `server`; remembered for closing when opened here."""
    from .servers import resolve

    remote = resolve(server)
    opened = _opened.get()
    if remote is not server and opened is not None:
        opened.append(remote)
    remote.connect()
    return remote


def closes_what_it_opens(fn):
    """Decorator: connections `connect()` opened during the call are closed after it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        opened: list = []
        token = _opened.set(opened)
        try:
            return fn(*args, **kwargs)
        finally:
            _opened.reset(token)
            for remote in opened:
                remote.close()

    return wrapper
