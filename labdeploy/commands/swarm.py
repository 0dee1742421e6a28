"""Docker Swarm on its manager: the manager's facts, the data node's label, stacks deployed and
removed, their tasks, and a reload of the ingress Caddy. Scripts get their values as $1, $2..."""

from __future__ import annotations

import json

from .shell import script

NOT_MANAGER = 3  # exit status of FACTS: this engine is not a Swarm manager

# One round trip: whether this engine manages a Swarm, its node's id and hostname, and the node
# labelled for the apps' data (PostgreSQL, Redis, their volumes). With none labelled yet, this
# manager's own node becomes it: the data then lives where labdeploy connects.
FACTS = r'''
[ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] || exit 3
self=$(docker info --format '{{.Swarm.NodeID}}') || exit 1
data=
for id in $(docker node ls -q); do
  [ "$(docker node inspect --format '{{index .Spec.Labels "labdeploy.data"}}' "$id")" = true ] && data=$id && break
done
if [ -z "$data" ]; then docker node update --label-add labdeploy.data=true "$self" >/dev/null || exit 1; data=$self; fi
printf '{"node_id": "%s", "hostname": "%s", "data_node": "%s"}\n' "$self" \
  "$(docker node inspect --format '{{.Description.Hostname}}' "$self")" \
  "$(docker node inspect --format '{{.Description.Hostname}}' "$data")"
'''

# $1 = the stack's folder, $2 = the Docker client's config folder (the registry login the
# nodes get: --with-registry-auth), $3 = the stack file's name, $4 = the stack's name.
# Images are named by digest or content tag, so the manager need not ask the registry again.
DEPLOY = ('cd "$1" && exec docker --config "$2" stack deploy --with-registry-auth --resolve-image never '
          '--prune -c "$3" "$4"')

# $1 = the ingress Caddy's service name: its container on this node reads its configuration again
# (waiting up to a minute for a new one to start).
RELOAD_CADDY = r'''
for i in $(seq 60); do
  c=$(docker ps -q --filter "label=com.docker.swarm.service.name=$1" | head -n 1)
  [ -n "$c" ] && docker exec "$c" caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile && exit 0
  sleep 1
done
exit 4
'''


def facts() -> list[str]:
    return script(FACTS)


def parse_facts(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def deploy(folder: str, config_dir: str, file_name: str, stack: str) -> list[str]:
    return script(DEPLOY, folder, config_dir, file_name, stack)


def remove(stack: str) -> list[str]:
    return ["docker", "stack", "rm", stack]


def tasks(stack: str) -> list[str]:
    """The stack's tasks that should run, one JSON object a line (docker stack ps)."""
    return ["docker", "stack", "ps", stack, "--filter", "desired-state=running", "--no-trunc", "--format", "{{json .}}"]


def parse_tasks(stdout: str) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        if line.strip().startswith("{"):
            rows.append(json.loads(line))
    return rows


def stacks() -> list[str]:
    return ["docker", "stack", "ls", "--format", "{{.Name}}"]


def volumes(stack: str) -> list[str]:
    """The stack's volumes on this node (where the data node is the manager: PostgreSQL's, Redis')."""
    return ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack}"]


def remove_volumes(names: list[str]) -> list[str]:
    return ["docker", "volume", "rm", "--", *names]


def reload_caddy(service: str) -> list[str]:
    return script(RELOAD_CADDY, service)


# The state of each service's last rolling update: name, state (updating, completed,
# rollback_started, rollback_completed, paused...), when it started, and Swarm's message.
UPDATE_FORMAT = ('{{.Spec.Name}}\t{{if .UpdateStatus}}{{.UpdateStatus.State}}\t{{.UpdateStatus.StartedAt}}\t'
                 '{{.UpdateStatus.Message}}{{end}}')


def update_status(services: list[str]) -> list[str]:
    return ["docker", "service", "inspect", "--format", UPDATE_FORMAT, "--", *services]


def parse_update_status(stdout: str) -> dict:
    """service -> {"state", "started", "message"} ("" when the service was never updated)."""
    out = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t") + ["", "", ""]
        out[parts[0]] = {"state": parts[1].strip(), "started": parts[2].strip(), "message": parts[3].strip()}
    return out


# $1 = a service (the app's PostgreSQL): its running task's node id, state and container id, one
# a line; then this manager's own node id. The container is reachable by `docker exec` only on
# its own node.
SERVICE_CONTAINERS = r'''
for t in $(docker service ps -q --no-trunc --filter desired-state=running "$1"); do
  docker inspect --format '{{.NodeID}} {{.Status.State}} {{.Status.ContainerStatus.ContainerID}}' "$t"
done
echo "self $(docker info --format '{{.Swarm.NodeID}}')"
'''


def service_containers(service: str) -> list[str]:
    return script(SERVICE_CONTAINERS, service)


def parse_service_containers(stdout: str) -> tuple[str, list[dict]]:
    """(this manager's node id, [{"node_id", "state", "container"}])."""
    self_id, rows = "", []
    for line in stdout.split("\n"):
        parts = line.split()
        if len(parts) == 2 and parts[0] == "self":
            self_id = parts[1]
        elif len(parts) == 3:
            rows.append({"node_id": parts[0], "state": parts[1], "container": parts[2]})
    return self_id, rows


# $1 = the stack, $2 = one service's short name or "", $3 = --tail's value. Every node's lines,
# through the manager (docker service logs), each '<task>@<node> | <time> <text>'.
SERVICE_LOGS = r'''
for s in $(docker stack services --format '{{.Name}}' "$1"); do
  [ -n "$2" ] && [ "$s" != "$1_$2" ] && continue
  docker service logs --timestamps --no-task-ids --no-trunc --tail "$3" "$s" </dev/null 2>&1
done
'''


def service_logs(stack: str, service: str, tail) -> list[str]:
    return script(SERVICE_LOGS, stack, service, str(tail))


def parse_service_log_line(line: str, stack: str) -> tuple[str, str, str]:
    """'2024-...Z <stack>_web.1@labsw2    | text' (--timestamps puts the time first) ->
    ("web", "labsw2", "2024-...Z text"); a line of another shape -> ("", "", line)."""
    head, sep, rest = line.partition("|")
    words = head.split()
    stamp, task = (words[0], words[1]) if len(words) == 2 else ("", words[0] if words else "")
    task, at, node = task.partition("@")
    if not sep or not at or not task.startswith(stack + "_"):
        return "", "", line
    service = task[len(stack) + 1:].split(".")[0]
    text = rest[1:] if rest.startswith(" ") else rest
    return service, node, f"{stamp} {text}" if stamp else text


# The apps this manager deployed: each app folder under ~/dallinger-swarm that holds a deploy
# record (written only once a deploy succeeded), one name a line. The record, not a flag the
# researcher repeats, is what makes an app a Swarm app for status, logs, export and destroy.
RECORDS = r'''
for f in dallinger-swarm/*/deploy.json; do
  [ -f "$f" ] || continue
  d=${f%/deploy.json}
  printf '%s\n' "${d##*/}"
done
'''


def records() -> list[str]:
    return script(RECORDS)


def history(stack: str) -> list[str]:
    """Every task the stack's services had, running or ended, newest first per slot (their errors)."""
    return ["docker", "stack", "ps", stack, "--no-trunc", "--format", "{{json .}}"]
