"""What `prune` needs from the server, in one round trip, and the removal itself.

Only objects that carry labdeploy's app label are ever candidates (images built for an app,
containers Compose made for one); the stack's containers carry `labdeploy.server.stack` and its
images no app label. Every container's image is listed so an image any container uses (ours
or not) is never chosen.
"""

from __future__ import annotations

import json
from typing import Sequence

from .docker import APP_LABEL
from .shell import script

SECTION = "@@"
_IMAGE_FORMAT = ('{{.Id}}\t{{index .Config.Labels "labdeploy.app"}}\t{{.Created}}\t{{.Size}}\t'
                 '{{json .RepoTags}}')
_CONTAINER_FORMAT = ('{{.Id}}\t{{.Image}}\t{{.State.Status}}\t{{index .Config.Labels "labdeploy.app"}}\t'
                     '{{index .Config.Labels "labdeploy.version"}}\t{{index .Config.Labels "labdeploy.server.stack"}}\t'
                     '{{.Name}}')

# $1 = ~/dallinger, $2 = the app label filter, $3 = image format, $4 = container format.
FACTS = ('echo "@@images"; ids=$(docker image ls -q --no-trunc --filter "$2" | sort -u); '
         '[ -z "$ids" ] || docker image inspect --format "$3" $ids; '
         'echo "@@containers"; cids=$(docker ps -aq --no-trunc); '
         '[ -z "$cids" ] || docker inspect --format "$4" $cids; '
         'echo "@@deployed"; for f in "$1"/*/deploy.json; do [ -f "$f" ] || continue; '
         'printf "%s\\t%s\\n" "$(basename "$(dirname "$f")")" "$(tr -d "\\n\\t" < "$f")"; done; '
         'echo "@@locks"; ls -1 "$1/.locks" 2>/dev/null; '
         'echo "@@df"; docker system df --format "{{json .}}"')

# Arguments in order: c:<container id>, t:<image reference> (untag), i:<image id>, b: (dangling
# build cache). One line per argument: "ok <arg> [output]" or "fail <arg> <error>". Then the
# engine's disk use after.
REMOVE = ('for a in "$@"; do v=${a#?:}; case "$a" in '
          'c:*) out=$(docker rm "$v" 2>&1) ;; t:*|i:*) out=$(docker rmi "$v" 2>&1) ;; '
          'b:*) out=$(docker builder prune -f 2>&1 | tail -n 1) ;; *) continue ;; esac '
          '&& echo "ok $a $(echo "$out" | tail -n 1)" || echo "fail $a $(echo "$out" | tr "\\n" " ")"; done; '
          'echo "@@df"; docker system df --format "{{json .}}"')


def facts(root: str) -> list[str]:
    return script(FACTS, root, f"label={APP_LABEL}", _IMAGE_FORMAT, _CONTAINER_FORMAT)


def remove(containers: Sequence[str], tags: Sequence[str], image_ids: Sequence[str], build_cache: bool) -> list[str]:
    args = [f"c:{c}" for c in containers] + [f"t:{t}" for t in tags] + [f"i:{i}" for i in image_ids]
    return script(REMOVE, *args, *(["b:"] if build_cache else []))


def sections(stdout: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith(SECTION):
            current = out.setdefault(line[len(SECTION):].strip(), [])
        elif current is not None and line.strip():
            current.append(line)
    return out


def read_images(lines: Sequence[str]) -> list[dict]:
    rows = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 5 or not parts[0].startswith("sha256:"):
            continue
        try:
            tags = [t for t in (json.loads(parts[4]) or []) if isinstance(t, str)]
        except ValueError:
            tags = []
        rows.append({"id": parts[0], "app": parts[1] if parts[1] != "<no value>" else "", "created": parts[2],
                     "size": int(parts[3]) if parts[3].isdigit() else 0, "tags": tags})
    return rows


def read_containers(lines: Sequence[str]) -> list[dict]:
    rows = []
    for line in lines:
        parts = [p if p != "<no value>" else "" for p in line.split("\t")]
        if len(parts) == 7:
            rows.append(dict(zip(("id", "image", "state", "app", "version", "stack", "name"), parts)))
    return rows


def read_deployed(lines: Sequence[str]) -> dict[str, dict]:
    out = {}
    for line in lines:
        app, _, text = line.partition("\t")
        try:
            state = json.loads(text)
        except ValueError:
            state = {}
        out[app] = state if isinstance(state, dict) else {}
    return out


_UNITS = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def human_bytes(text: str) -> int:
    """Docker's "1.632GB" (decimal units) as bytes."""
    text = (text or "").split(" ")[0]
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            try:
                return int(float(text[:-len(unit)]) * _UNITS[unit])
            except ValueError:
                return 0
    return 0


def read_df(lines: Sequence[str]) -> dict[str, tuple[int, int]]:
    """{"Images": (size, reclaimable), "Build Cache": ...} in bytes, from `docker system df`."""
    out = {}
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "Type" in row:
            out[row["Type"]] = (human_bytes(str(row.get("Size", ""))), human_bytes(str(row.get("Reclaimable", ""))))
    return out


def read_removed(lines: Sequence[str]) -> dict[str, tuple[bool, str]]:
    """{argument: (ok, detail)} from REMOVE's lines."""
    out = {}
    for line in lines:
        status, _, rest = line.partition(" ")
        arg, _, detail = rest.partition(" ")
        if status in ("ok", "fail") and arg:
            out[arg] = (status == "ok", detail.strip())
    return out
