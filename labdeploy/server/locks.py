"""Locks on the server: one deploy / update / destroy of an app at a time (`DeployLock`), one
prepare of the shared stack at a time (the stack's lock), across machines.

Both are a `ServerLock`: `mkdir` on the server is atomic, so whoever creates
~/dallinger/.locks/<name>/ holds the lock; its info.json names the owner by a random token and
says who, from where, when and which version. A lock expires (its holder may have lost the
connection for good), a lock left by a process of this machine that no longer runs is stale
at once, and a lock can be broken deliberately (`break_lock(..., confirm=True)`). The commands
are labdeploy.commands.locks.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional

from . import layout
from .. import names
from ..commands import locks as lock_commands
from ..errors import LabdeployError, Remedy

DEFAULT_TTL = 30 * 60  # seconds; longer than a slow image build, short enough not to block a day

_held: set[str] = set()  # tokens this process holds right now
_held_lock = threading.Lock()

class DeployInProgress(LabdeployError):
    """Someone else is deploying, updating or destroying this app right now."""

    code = "app.busy"

    def __init__(self, message: str, hint: str = "", *, info: Optional["LockInfo"] = None, **kw) -> None:
        super().__init__(message, hint, **kw)
        self.info = info


@dataclass
class LockInfo:
    app: str
    token: str
    operation: str = "deploy"
    version: str = ""
    who: str = ""  # local user@machine
    host: str = ""  # local machine name
    pid: int = 0
    acquired_at: str = ""  # ISO time, local clock (for people)
    ttl: int = DEFAULT_TTL
    age: Optional[float] = field(default=None, compare=False)  # seconds, by the server's clock

    @classmethod
    def from_json(cls, text: str, age: Optional[float] = None) -> Optional["LockInfo"]:
        try:
            data = json.loads(text)
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "age"}
            return cls(**known, age=age)
        except (ValueError, TypeError):
            return None

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("age")
        return json.dumps(data, sort_keys=True)

    def describe(self) -> str:
        when = f" {int(self.age // 60)} min ago" if self.age is not None else ""
        ver = f" (version {self.version})" if self.version else ""
        return f"{self.operation}{ver} by {self.who or 'someone'}{when}"


def _local_identity() -> tuple[str, str]:
    host = socket.gethostname()
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = str(os.getuid())
    return f"{user}@{host}", host


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(info: Optional[LockInfo], age: Optional[float], *, local_host: str, my_pid: int,
                 held: set[str], pid_alive=_pid_alive) -> Optional[str]:
    """Why a found lock may be taken over, or None if it must be respected. Pure (given
    `pid_alive`), so the rules are unit-tested."""
    if info is None:
        # mkdir happened but info.json is missing or half-written: only stale when old.
        if age is not None and age > 120:
            return "it has no owner information and is older than two minutes"
        return None
    if age is not None and age > info.ttl:
        return f"it expired ({int(age // 60)} min old, limit {info.ttl // 60} min)"
    if info.host and info.host == local_host:
        if info.pid == my_pid and info.token not in held:
            return "it was left by an earlier attempt in this session that lost its connection"
        if info.pid != my_pid and info.pid and not pid_alive(info.pid):
            return f"the program that took it (process {info.pid} on this machine) no longer runs"
    return None


class ServerLock:
    """`with ServerLock(remote, path, subject=..., operation=...):` — held for the block,
    released after. `wait` seconds: how long to wait for a lock that must be respected
    (`on_wait` is called once when the waiting starts); then `busy(holder)` is raised."""

    kind = "server"  # what the lock is called in messages ("deploy lock", "prepare lock")

    def __init__(self, remote, path: str, *, subject: str, operation: str, version: str = "",
                 ttl: int = DEFAULT_TTL, reporter=None, wait: float = 0.0,
                 on_wait: Optional[Callable[[], None]] = None,
                 busy: Optional[Callable[[Optional["LockInfo"]], LabdeployError]] = None) -> None:
        self.remote = remote
        self.path = path
        who, host = _local_identity()
        self.info = LockInfo(app=subject, token=uuid.uuid4().hex, operation=operation, version=version,
                             who=who, host=host, pid=os.getpid(),
                             acquired_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), ttl=int(ttl))
        self.reporter = reporter
        self.wait = float(wait)
        self._on_wait = on_wait
        self._busy = busy
        self.held = False
        self.broke: Optional[LockInfo] = None  # the stale lock taken over, if any

    def busy(self, other: Optional["LockInfo"]) -> LabdeployError:
        if self._busy is not None:
            return self._busy(other)
        what = other.describe() if other else "another operation"
        return LabdeployError(f"The {self.kind} lock {self.path} is held ({what}).",
                              "Wait for the other operation to finish and try again.", code="lock.busy")

    def acquire(self) -> "ServerLock":
        # Counted as held before the mkdir: another thread of this process that sees the new
        # lock must not take it for one left behind by a lost connection.
        with _held_lock:
            _held.add(self.info.token)
        try:
            return self._acquire()
        except BaseException:
            with _held_lock:
                _held.discard(self.info.token)
            raise

    def _acquire(self) -> "ServerLock":
        deadline = time.monotonic() + self.wait
        breaks = 0
        waiting = False
        while True:
            res = self.remote.run(lock_commands.acquire(layout.locks_dir(), self.path),
                                  stdin=self.info.to_json().encode(), check=False)
            if res.exit_status == 0 and res.stdout.strip() == lock_commands.ACQUIRED:
                self.held = True
                return self
            if res.exit_status != lock_commands.BUSY:
                raise LabdeployError(f"Could not take the {self.kind} lock on the server: {res.stderr.strip()}",
                                     "Check that the login user can write to ~/dallinger on the server.",
                                     code="lock.failed")
            age, text = lock_commands.parse_holder(res.stdout)
            other = LockInfo.from_json(text, age)
            with _held_lock:
                held = set(_held)
            reason = stale_reason(other, age, local_host=self.info.host, my_pid=self.info.pid, held=held)
            if reason is None:
                if time.monotonic() >= deadline:
                    raise self.busy(other)
                if not waiting and self._on_wait is not None:
                    self._on_wait()
                waiting = True
                time.sleep(1.0)
                continue
            self._break(other)
            self.broke = other
            if self.reporter is not None:
                from ..progress import WarningEvent
                self.reporter(WarningEvent(f"Took over a stale {self.kind} lock of {self.info.app}: {reason}."))
            breaks += 1
            if breaks >= 3:
                raise self.busy(None)

    def _break(self, other: Optional[LockInfo]) -> None:
        self.remote.run(lock_commands.break_(self.path, other.token if other else ""), check=False)

    def refresh(self) -> None:
        """Rewrite info.json (e.g. with the version, known once the image is built) and restart
        the expiry clock, so a slow build doesn't expire the lock. Only while still ours."""
        if self.held:
            self.remote.run(lock_commands.refresh(self.path, self.info.token),
                            stdin=self.info.to_json().encode(), check=False)

    def release(self) -> None:
        if not self.held:
            return
        try:
            self.remote.run(lock_commands.release(self.path, self.info.token), check=False)
        finally:
            self.held = False
            with _held_lock:
                _held.discard(self.info.token)

    def __enter__(self) -> "ServerLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class DeployLock(ServerLock):
    """`with DeployLock(remote, app, version=...):` — one deploy / update / destroy of the app
    at a time; held for the block, released after."""

    kind = "deploy"

    def __init__(self, remote, app: str, *, operation: str = "deploy", version: str = "",
                 ttl: int = DEFAULT_TTL, reporter=None) -> None:
        self.app = names.app_name(app)
        super().__init__(remote, layout.app_lock(self.app), subject=self.app, operation=operation,
                         version=version, ttl=ttl, reporter=reporter, busy=lambda other: busy_error(self.app, other))


def busy_error(app: str, other: Optional[LockInfo]) -> DeployInProgress:
    what = other.describe() if other else "another operation"
    expires = ""
    if other is not None and other.age is not None:
        left = max(0, other.ttl - other.age)
        expires = f" The lock expires by itself in about {int(left // 60) + 1} min."
    return DeployInProgress(
        f"Another {what} of the app {app!r} is in progress, so this one was not started.",
        remedy=Remedy("lock.wait_or_break", app=app, expires=expires), info=other)


def read_lock(remote, app: str) -> Optional[LockInfo]:
    """The current lock of an app, or None."""
    res = remote.run(lock_commands.read(layout.app_lock(app)), check=False)
    if res.exit_status == lock_commands.NO_LOCK:
        return None
    age, text = lock_commands.parse_holder(res.stdout)
    return LockInfo.from_json(text, age) or LockInfo(app=app, token="", age=age)


def break_lock(remote, app: str, *, confirm: bool = False) -> Optional[LockInfo]:
    """Remove an app's deploy lock on purpose. Returns what it was, or None if there was none."""
    app = names.app_name(app)
    if not confirm:
        raise LabdeployError(f"Breaking the deploy lock of {app!r} needs confirmation.",
                             code="confirmation.required", remedy=Remedy("lock.break.confirm", app=app))
    from ..ssh import pool

    @pool.closes_what_it_opens
    def work(server):
        r = pool.connect(server)  # a registered name, a Server or a Remote
        info = read_lock(r, app)
        if info is not None:
            r.run(lock_commands.break_(layout.app_lock(app)), check=False)
        return info

    return work(remote)
