"""Can the server reach these hosts? (git sources an image build installs from)."""

from __future__ import annotations

from typing import Iterable

from .shell import script

# $1 = seconds per connection, then host port host port ...; one line per host:
# "ok|dns|tcp host port". `getent ahosts` resolves as getaddrinfo does (an IP address stands
# for itself; `getent hosts` would look for its reverse name). bash's /dev/tcp makes the
# connection (no nc or python needed); a tool that is missing (getent, bash, timeout) skips
# its part of the check rather than refuse.
REACH = ('t=$1; shift; while [ "$#" -ge 2 ]; do h=$1; p=$2; shift 2; '
         'if command -v getent >/dev/null 2>&1 && ! getent ahosts "$h" >/dev/null 2>&1; then echo "dns $h $p"; '
         'elif command -v bash >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1; then '
         'if timeout "$t" bash -c \'exec 3<>"/dev/tcp/$0/$1"\' "$h" "$p" 2>/dev/null; '
         'then echo "ok $h $p"; else echo "tcp $h $p"; fi; '
         'else echo "ok $h $p"; fi; done')


def reach(addresses: Iterable[tuple[str, int]], timeout: float) -> list[str]:
    """Try each (host, port): its name resolves, a TCP connection opens within `timeout` s.
    The caller checks the host names (labdeploy.names.host)."""
    return script(REACH, f"{float(timeout):g}", *(a for host, port in addresses for a in (host, str(int(port)))))


def read_reach(stdout: str) -> dict[str, str]:
    """'host:port' -> "dns" or "tcp" for the addresses `reach` could not reach."""
    bad: dict[str, str] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("dns", "tcp"):
            bad[f"{parts[1]}:{parts[2]}"] = parts[0]
    return bad
