"""Who opens SSH connections for a server, and who closes them: one policy for every front end.

A `Pool` opens one connection per server on first use, shares it between threads (a `Remote`
is thread-safe) and closes what it opened when its owner is done with it. Each front end
owns one:

* an API call: a public function given a server (`@closes_what_it_opens`) uses the pool of
  the front end it runs under, or else a pool of its own, closed when the call returns;
* a CLI run: `labdeploy` makes one pool for the command (`using(pool)`) and closes it when the
  command ends;
* a notebook kernel: the panels share `kernel()`; each panel holds a `lease()`, and the last
  `panel.close()`, or the interpreter's exit, closes the connections.

A Remote handed in by the caller (anything with a `run` method) is used as it is and never
closed here: it is theirs, and reusing it is the point. This module is the only place that
opens connections for a server name and keeps them.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import os
import threading
import weakref
from typing import TYPE_CHECKING, Callable, Iterator, Optional

if TYPE_CHECKING:
    from ..remote import Remote
    from .servers import Server

# This module imports nothing heavy (paramiko, pandas come with `servers`, on first use): the
# command line sets up its pool before it knows whether the command needs a server at all.

Opener = Callable[["Server"], "Remote"]  # a registration -> a Remote, not connected yet


def _is_connection(server) -> bool:
    # Duck-typed like the rest of the core: tests and callers hand in stand-ins for a Remote.
    return hasattr(server, "run")


class Pool:
    """Connections by server, opened on first use, shared by threads, closed together.

    `get(server)` accepts a registered name, a `Server` or a Remote (returned as is, never
    owned). A name is looked up each time, so a server registered anew gets a new connection;
    HOME is part of the key because known_hosts and the server list live there. `close()`
    closes the connections the pool opened; it stays usable (the next use reconnects).
    """

    def __init__(self, opener: Optional[Opener] = None) -> None:
        self._open = opener
        self._lock = threading.Lock()
        self._remotes: dict = {}
        self._leases = 0
        with _live_lock:
            _live.add(self)

    def get(self, server) -> "Remote":
        """The Remote for `server`, not connected yet (it connects on first use)."""
        if _is_connection(server):
            return server
        from . import servers

        spec = servers.get(server) if isinstance(server, str) else server
        if not isinstance(spec, servers.Server):
            return servers.resolve(spec)  # says what it accepts (ValidationError)
        key = (spec, os.path.expanduser("~"))
        with self._lock:  # opening is only building the object: cheap enough to hold the lock
            remote = self._remotes.get(key)
            if remote is None:
                remote = self._remotes[key] = (self._open or servers.resolve)(spec)
        return remote

    def connect(self, server) -> "Remote":
        """The Remote for `server`, connected (first-contact errors are raised here)."""
        remote = self.get(server)
        remote.connect()
        return remote

    def owns(self, remote) -> bool:
        with self._lock:
            return any(r is remote for r in self._remotes.values())

    def close(self) -> None:
        """Close every connection this pool opened (never a caller's). Safe from any thread."""
        with self._lock:
            remotes = list(self._remotes.values())
        for remote in remotes:
            with contextlib.suppress(Exception):  # closing is best effort; one must not stop the rest
                remote.close()

    def lease(self) -> "Lease":
        """A user of this pool (a panel): the last lease released closes the connections."""
        with self._lock:
            self._leases += 1
        return Lease(self)

    def _release(self) -> None:
        with self._lock:
            self._leases -= 1
            last = self._leases == 0
        if last:
            self.close()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._lock:
            return f"Pool({', '.join(r.label for r in self._remotes.values()) or 'empty'})"


class Lease:
    """One user's hold on a pool; `release()` is idempotent (a panel closed twice counts once)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self.pool._release()


# Every pool alive, so that none leaves a connection open at the interpreter's exit.
_live: "weakref.WeakSet[Pool]" = weakref.WeakSet()
_live_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    with _live_lock:
        pools = list(_live)
    for pool in pools:
        pool.close()


_kernel: Optional[Pool] = None
_kernel_lock = threading.Lock()


def kernel() -> Pool:
    """The pool the panels of this Python process (a notebook kernel) share."""
    global _kernel
    with _kernel_lock:
        if _kernel is None:
            _kernel = Pool()
        return _kernel


# The pool of the front end the current code runs under (a CLI run, an API call). Context
# variables do not follow a new thread: code in a worker thread is handed a Remote instead.
_current: contextvars.ContextVar = contextvars.ContextVar("labdeploy_pool", default=None)


def current() -> Optional[Pool]:
    return _current.get()


@contextlib.contextmanager
def using(pool: Pool) -> Iterator[Pool]:
    """Run a block under `pool`: calls given a server name inside it use (and keep) its
    connections. The pool's owner closes it."""
    token = _current.set(pool)
    try:
        yield pool
    finally:
        _current.reset(token)


@contextlib.contextmanager
def scope() -> Iterator[Pool]:
    """The pool of the front end this runs under, or else a new one, closed when the block ends."""
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    with Pool() as pool, using(pool):
        yield pool


def closes_what_it_opens(fn):
    """Decorator for public functions that take a server: a connection opened for a server
    name during the call is closed when it returns, unless a front end's pool holds it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with scope():
            return fn(*args, **kwargs)

    return wrapper


def remote(server) -> "Remote":
    """The Remote for `server` from the current pool, not connected yet. Outside any pool (no
    `scope`, no front end) it is a new connection of the caller's, for them to close."""
    pool = _current.get()
    if pool is None:
        return detached(server)
    return pool.get(server)


def connect(server) -> "Remote":
    """`remote(server)`, connected."""
    r = remote(server)
    r.connect()
    return r


def detached(server) -> "Remote":
    """A Remote that outlives the current call (e.g. a tunnel's): the caller's own Remote as
    it is, or a new one for a name or a Server, which the caller must close."""
    if _is_connection(server):
        return server
    from . import servers

    return servers.resolve(server)
