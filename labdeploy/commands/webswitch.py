"""The app's web containers during a switch: list them, stop one gracefully, remove others.

Chosen by the app's own labels, never by a name pattern. Scripts are constants; every value
travels as a positional parameter.
"""

from __future__ import annotations

from typing import Iterable

from .. import names
from ..server import layout
from .shell import script

# $1 = the app's label filter. One line per web container: id, name, created, state,
# restart count, address on the shared network ("-" without one), image.
WEB_CONTAINERS = ('ids=$(docker ps -aq --filter "$1" --filter label=labdeploy.service=web); [ -n "$ids" ] || exit 0; '
                  'docker inspect -f \'{{.Id}} {{.Name}} {{.Created}} {{.State.Status}} {{.RestartCount}} '
                  '{{with index .NetworkSettings.Networks "dallinger"}}{{if .IPAddress}}{{.IPAddress}}'
                  '{{else}}-{{end}}{{else}}-{{end}} {{.Config.Image}}\' $ids')
assert layout.NETWORK == "dallinger"  # the shared network, named in the template above

# $1 = container id, $2 = the most seconds to wait, $3 = the web port in hex as /proc shows it.
# Waits until no connection to the web port is open in the container: requests Caddy sent
# before the switch may still sit in the listen queue, and a stopping gunicorn closes that
# queue with a reset (a 502 for the participant). Read from the host's /proc, so it works
# whatever the image holds. Prints the connections still open.
DRAIN = ('pid=$(docker inspect -f "{{.State.Pid}}" "$1") || exit 0; [ "$pid" -gt 0 ] || exit 0; '
         'end=$(( $(date +%s) + $2 )); while :; do '
         'n=$(cat /proc/$pid/net/tcp /proc/$pid/net/tcp6 2>/dev/null | '
         'awk -v p=":$3" \'substr($2, length($2) - 4) == p && $4 == "01"\' | wc -l); '
         '[ "$n" -eq 0 ] || [ "$(date +%s)" -ge "$end" ] && break; sleep 0.2; done; echo "$n"')

# $1 = container id, $2 = seconds to drain, then to finish (gunicorn stops gracefully on
# SIGTERM; Docker kills it after), $3 = the web port in hex: DRAIN, then a
# graceful stop, in one round trip (the drain in a subshell: its early exits end only it).
# Prints the connections still open after the drain. The container stays, stopped: Compose
# may be listing the project's containers meanwhile (worker and clock being replaced), and
# one removed under it fails that `compose up`. `remove` takes it afterwards.
RETIRE = '(' + DRAIN + '); docker stop -t "$2" "$1" >/dev/null'

# $1... = container ids to remove at once (never served, or already replaced).
REMOVE = '[ $# -eq 0 ] || docker rm -f "$@" >/dev/null'


def web_containers(app: str) -> list[str]:
    return script(WEB_CONTAINERS, f"label=labdeploy.app={names.app_name(app)}")


def parse_web_containers(stdout: str) -> list[dict]:
    """[{id, name, created, state, restarts, ip, image}], oldest first."""
    out = []
    for line in stdout.splitlines():
        parts = line.split(" ")
        if len(parts) != 7:
            continue
        cid, name, created, state, restarts, ip, image = parts
        out.append({"id": cid, "name": name.lstrip("/"), "created": created, "state": state,
                    "restarts": int(restarts) if restarts.isdigit() else 0, "ip": "" if ip == "-" else ip,
                    "image": image})
    return sorted(out, key=lambda c: c["created"])


def _container_id(value: str) -> str:
    if not isinstance(value, str) or not value or not all(c in "0123456789abcdef" for c in value):
        raise ValueError(f"not a container id: {value!r}")
    return value


def drain(container_id: str, seconds: int, port: int = layout.WEB_PORT) -> list[str]:
    return script(DRAIN, _container_id(container_id), int(seconds), f"{int(port):04X}")


def retire(container_id: str, grace: int, port: int = layout.WEB_PORT) -> list[str]:
    return script(RETIRE, _container_id(container_id), int(grace), f"{int(port):04X}")


def remove(container_ids: Iterable[str]) -> list[str]:
    return script(REMOVE, *(_container_id(c) for c in container_ids))
