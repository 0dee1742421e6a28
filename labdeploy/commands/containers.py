"""An app's containers, found by their labels: status, a command in one, logs, resource use,
start times. One round trip each; no compose project folder needed (containers are found by
label, whichever Compose version named them).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Optional, Sequence

from .docker import APP_LABEL, COMPOSE_SERVICE_LABEL, SERVICE_LABEL, app_filter, service_filter
from .shell import script

NOT_FOUND = 197  # these scripts' "no such container" exit status; docker never uses it

# ------------------------------------------------------------------ status

INSPECT_TEMPLATE = (
    '{"id":{{json .Id}},"name":{{json .Name}},'
    '"app":{{json (index .Config.Labels "' + APP_LABEL + '")}},'
    '"service":{{json (index .Config.Labels "' + SERVICE_LABEL + '")}},'
    '"image":{{json .Config.Image}},"restarts":{{.RestartCount}},'
    '"memory":{{json .HostConfig.Memory}},"nano_cpus":{{json .HostConfig.NanoCpus}},'  # 0: no limit
    # Only the fields used: .State's health log holds the last probes' output (kilobytes each).
    '"st":{"Status":{{json .State.Status}},"StartedAt":{{json .State.StartedAt}},'
    '"ExitCode":{{json .State.ExitCode}},'
    '"Health":{{with (index .State "Health")}}{"Status":{{json (index . "Status")}}}{{else}}null{{end}}}}'
)
# $1 = label filter, $2 = inspect template: the server's clock, then one JSON line per container.
STATUS = ('date -u +%s.%N; ids=$(docker ps -aq --filter "$1") || exit $?; '
          '[ -z "$ids" ] || docker inspect --format "$2" $ids')


def status(app: Optional[str] = None) -> list[str]:
    """Every labdeploy container (or one app's), with the server's clock first."""
    return script(STATUS, app_filter(app), INSPECT_TEMPLATE)


def read_status(output: str) -> tuple[Optional[float], list[dict]]:
    """(the server's clock in seconds or None, one dict per container) from `status`."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    if not lines:
        return None, []
    return float(lines[0]), [json.loads(ln) for ln in lines[1:]]


# ------------------------------------------------------------------ exec

# $1, $2 = label filters (app, service), $3 = "-i" to pass stdin on, then the command's argv.
EXEC = ('c=$(docker ps -q --filter "$1" --filter "$2" --filter status=running | head -n 1); '
        '[ -n "$c" ] || exit 197; '
        'if [ "$3" = -i ]; then shift 3; exec docker exec -i "$c" "$@"; fi; shift 3; exec docker exec "$c" "$@"')


def exec_in(app: str, service: str, argv: Sequence[str], interactive: bool = False) -> list[str]:
    """`docker exec` the argv in the service's running container (no TTY); exit 197 when none
    runs. `interactive`: the command reads our stdin."""
    return script(EXEC, app_filter(app), service_filter(service), "-i" if interactive else "", *argv)


def in_shell(command: str) -> list[str]:
    """A researcher's own command line, run by the container's shell: the text is the script
    (it is theirs to write), and it runs inside their container, never on the server."""
    return ["sh", "-c", command]


# ------------------------------------------------------------------ logs

LOG_FORMAT = '{{.ID}} {{.Label "' + SERVICE_LABEL + '"}}'
# $1 = app filter, $2 = service filter or "", $3 = `docker ps` format, then `docker logs`
# options. Each line comes prefixed by its service's name. `sed -u` passes each line on at
# once (GNU sed; mawk would hold followed lines back for minutes); a sed without -u
# (busybox) still works, only with delayed lines when following.
LOGS = ('list=$(if [ -n "$2" ]; then docker ps -a --filter "$1" --filter "$2" --format "$3"; '
        'else docker ps -a --filter "$1" --format "$3"; fi) || exit $?; '
        '[ -n "$list" ] || exit 197; shift 3; '
        'u=-u; sed -u q </dev/null >/dev/null 2>&1 || u=; '
        'echo "$list" | { while read -r id svc; do '
        # The label goes into a sed expression: keep only name characters.
        'case "$svc" in ""|*[!A-Za-z0-9._-]*) svc=unknown;; esac; '
        'docker logs "$@" "$id" </dev/null 2>&1 | sed $u "s/^/$svc /" & '
        'done; wait; }')
# Following: a watcher ends everything when our stdin closes (the caller stopped or the
# connection dropped), so no `docker logs -f` lingers on the server.
LOGS_FOLLOW = 'exec 3<&0; { read -r _ <&3; kill 0; } & ' + LOGS


def logs(app: str, service: Optional[str], tail, since: Optional[str], follow: bool) -> list[str]:
    """Logs of all (or one) service of an app, with timestamps, each line '<service> <time> <text>'.
    `tail` is a line count or "all"; `since` what docker's --since takes."""
    opts = ["-t", "--tail", str(tail)]
    if since:
        opts += ["--since", since]
    if follow:
        opts.append("-f")
    return script(LOGS_FOLLOW if follow else LOGS, app_filter(app), service_filter(service) if service else "",
                  LOG_FORMAT, *opts)


# ------------------------------------------------------------------ stats

STATS_MARK = "#labdeploy-labels"
STATS_FORMAT = "{{.ID}}\t{{.Names}}\t{{.Label \"%s\"}}\t{{.Label \"%s\"}}\t{{.Label \"%s\"}}" % (
    APP_LABEL, SERVICE_LABEL, COMPOSE_SERVICE_LABEL)
# $1 = the mark between the two parts, $2 = `docker ps` format.
STATS = ('docker stats --no-stream --format \'{{json .}}\' || exit $?; echo "$1"; '
         'docker ps --no-trunc --format "$2"')


def stats() -> list[str]:
    """`docker stats` of every running container, then each container's labels."""
    return script(STATS, STATS_MARK, STATS_FORMAT)


def read_stats(output: str) -> tuple[list[dict], dict[str, tuple[str, str]]]:
    """(docker stats' JSON objects, {short container id: (app, service)}) from `stats`."""
    stats_part, _, labels_part = output.partition(STATS_MARK)
    labels = {}
    for line in labels_part.splitlines():
        if line.strip():
            cid, _name, app, svc, compose_svc = (line.split("\t") + [""] * 5)[:5]
            labels[cid[:12]] = (app, svc or compose_svc)
    rows = [json.loads(line) for line in stats_part.splitlines() if line.strip().startswith("{")]
    return rows, labels


# ------------------------------------------------------------------ start times

# $1 = label filter: "<service> <State.StartedAt>" per container.
STARTED = ('ids=$(docker ps -q --filter "$1"); [ -n "$ids" ] || exit 0; '
           'docker inspect -f \'{{index .Config.Labels "labdeploy.service"}} {{.State.StartedAt}}\' $ids')


def started(app: str) -> list[str]:
    """When each running container of the app started."""
    return script(STARTED, app_filter(app))


def instant(text: str) -> tuple[int, int]:
    """Docker's RFC 3339 time with nanoseconds -> a comparable (seconds, nanoseconds) pair."""
    head, _, rest = text.strip().partition(".")
    frac = "".join(c for c in rest if c.isdigit())
    zone = rest[len(frac):] or "Z"
    when = datetime.fromisoformat(head + (zone if zone != "Z" else "+00:00"))
    return int(when.timestamp()), int((frac + "000000000")[:9])


def read_started(output: str) -> dict[str, tuple[int, int]]:
    """{service: start instant} from `started`; lines that are not a time are left out."""
    out = {}
    for line in output.splitlines():
        service, _, when = line.strip().partition(" ")
        try:
            out[service] = instant(when)
        except ValueError:
            continue
    return out
