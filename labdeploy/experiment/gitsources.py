"""Requirements installed from git: find them, and check before building that the machine
which builds the image can reach their hosts.

pip clones a `git+https://...` requirement while the image is built; an unreachable host then
fails the build minutes in, with git's message buried in pip's. A name lookup and one TCP
connection per host, from the machine that will build (this computer, or the server over the
existing SSH connection, in one command), say it before anything is built.
"""

from __future__ import annotations

import socket
import urllib.parse
from dataclasses import dataclass
from typing import Iterable, Sequence

from .. import names
from ..commands import network
from ..errors import ValidationError

DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
CONNECT_TIMEOUT = 5  # seconds per host


class GitSourceUnreachable(ValidationError):
    """requirements.txt installs from a git host that the building machine can't reach."""

    code = "invalid.requirements.git_unreachable"


@dataclass(frozen=True)
class GitSource:
    line: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def git_sources(lines: Iterable[str]) -> list[GitSource]:
    """The git hosts requirement lines install from (`git+https://`, `name @ git+ssh://`, ...);
    local `git+file:` ones are skipped."""
    out: list[GitSource] = []
    for line in lines:
        at = line.find("git+")
        if at < 0:
            continue
        url = line[at + 4:].split()[0].split(";")[0]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            continue
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ValidationError(f"requirements.txt: the line {line!r} has an unusable port.",
                                  "Fix the URL in requirements.txt.", code="invalid.requirements.url") from None
        names.host(parts.hostname)  # it reaches a shell on the server: checked first
        source = GitSource(line, parts.hostname, port)
        if source.address not in {s.address for s in out}:
            out.append(source)
    return out


def unreachable_here(sources: Sequence[GitSource]) -> dict[str, str]:
    """address -> why, for the sources this computer can't reach."""
    bad: dict[str, str] = {}
    for s in sources:
        try:
            socket.getaddrinfo(s.host, s.port, type=socket.SOCK_STREAM)
        except OSError:
            bad[s.address] = "its name does not resolve"
            continue
        try:
            socket.create_connection((s.host, s.port), timeout=CONNECT_TIMEOUT).close()
        except OSError as exc:
            bad[s.address] = f"no connection ({exc.strerror or exc})"
    return bad


def server_check_argv(sources: Sequence[GitSource]) -> list[str]:
    return network.reach([(names.host(s.host), s.port) for s in sources], CONNECT_TIMEOUT)


def parse_server_check(stdout: str) -> dict[str, str]:
    why = {"dns": "its name does not resolve", "tcp": "no connection"}
    return {address: why[problem] for address, problem in network.read_reach(stdout).items()}


def unreachable_on(remote, sources: Sequence[GitSource]) -> dict[str, str]:
    """address -> why, for the sources the server can't reach (one command)."""
    res = remote.run(server_check_argv(sources), check=False, timeout=CONNECT_TIMEOUT * len(sources) + 20)
    return parse_server_check(res.stdout)


def check(lines: Iterable[str], *, here: bool, remote=None, server_label: str = "the server") -> None:
    """Refuse (GitSourceUnreachable) when a git requirement's host can't be reached from where
    the image is built: this computer (`here`), the server (`remote`), or both."""
    sources = git_sources(lines)
    if not sources:
        return
    problems: list[str] = []
    if here:
        problems += [f"{addr} from this computer: {why}" for addr, why in unreachable_here(sources).items()]
    if remote is not None:
        problems += [f"{addr} from {server_label}: {why}" for addr, why in unreachable_on(remote, sources).items()]
    if problems:
        lines_of = {s.address: s.line for s in sources}
        shown = "; ".join(f"{p} (requirements.txt: {lines_of.get(p.split(' ', 1)[0], '')})" for p in problems)
        raise GitSourceUnreachable(
            f"requirements.txt installs from git, and the image build could not reach it: {shown}. "
            "Nothing was built.",
            "Install a released version instead (e.g. psynet==13.3.0 rather than psynet @ git+...), or make "
            "that host reachable from the machine that builds the image (a proxy, or a mirror of the "
            "repository), then deploy again.")

