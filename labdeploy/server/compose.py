"""Run Docker Compose on the server, whichever version it has.

Real servers mostly have the v2 plugin (`docker compose`); Debian ships v1 (`docker-compose`).
Both must work everywhere labdeploy runs compose, so the choice is made once per connection.
"""

from __future__ import annotations

import weakref
from typing import Callable, Optional, Sequence

from . import layout
from ..commands import compose as compose_commands
from .. import names
from ..errors import LabdeployError

_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

NO_COMPOSE_HINT = ("Install Docker Compose on the server: the 'docker-compose-plugin' package from Docker's "
                   "repository (gives `docker compose`), or Debian/Ubuntu's 'docker-compose' package.")


def detect(remote) -> Optional[list[str]]:
    """The compose command the server has, or None. One round trip, cached per Remote."""
    if remote in _cache:
        return _cache[remote]
    argv = compose_commands.read_detect(remote.run(compose_commands.detect(), check=False).stdout)
    _cache[remote] = argv
    return argv


def compose_argv(remote) -> list[str]:
    argv = detect(remote)
    if argv is None:
        raise LabdeployError("Docker Compose is not available on the server.", NO_COMPOSE_HINT,
                             code="server.compose.missing")
    return list(argv)


def run_compose(remote, project_dir: str, args: Sequence[str], *, stdin: Optional[bytes] = None,
                timeout: Optional[float] = None, on_line: Optional[Callable[[str, str], None]] = None,
                check: bool = True):
    """Run `<compose> args...` inside `project_dir` (relative to the remote home)."""
    return remote.run([*compose_argv(remote), *args], cwd=project_dir, stdin=stdin, timeout=timeout,
                      on_line=on_line, check=check)


def run_app(remote, app: str, args: Sequence[str], *, reporter=None, timeout: Optional[float] = 600,
            check: bool = True):
    """`<compose> -p <app> args...` in ~/dallinger/<app>, output lines to `reporter` as log lines."""
    from ..progress import LogLine

    on_line = (lambda line, stream: reporter(LogLine(line, "compose"))) if reporter is not None else None
    return run_compose(remote, layout.app_dir(app), ["-p", names.app_name(app), *args], timeout=timeout,
                       check=check, on_line=on_line)
