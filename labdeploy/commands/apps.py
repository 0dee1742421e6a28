"""The apps on a server as its folders show them: every app's deploy.json with the stack's
settings and the locks (one round trip), and what of one app is still there.

Only an app's own paths and labels are looked at.
"""

from __future__ import annotations

import contextlib
import json
from typing import Optional

from . import sections
from .docker import app_filter
from .shell import script

# Every app folder with its deploy.json, the stack settings and the locks, in one round trip.
LISTING = ('cd dallinger 2>/dev/null || exit 0; echo @@stack; cat stack.json 2>/dev/null; echo; '
           'for d in */; do d=${d%/}; [ -f "$d/docker-compose.yml" ] || [ -f "$d/deploy.json" ] || continue; '
           'echo "@@app $d"; cat "$d/deploy.json" 2>/dev/null; echo; done; '
           'echo @@locks; ls .locks 2>/dev/null; echo @@end')


def listing() -> list[str]:
    return script(LISTING)


def read_listing(text: str) -> tuple[Optional[dict], dict[str, dict], set[str]]:
    """(stack.json's content or None, {folder: its deploy.json, {} when unreadable}, lock
    names) from `listing`. Folder names are as found: the caller checks they are app names."""
    stack, states, locks = None, {}, set()
    for name, body in sections.parse(text, names=("stack", "app", "locks", "end")).items():
        body = body.strip()
        if name == "stack" and body:
            with contextlib.suppress(ValueError):
                found = json.loads(body)
                stack = found if isinstance(found, dict) else None
        elif name.startswith("app "):
            try:
                states[name[4:]] = json.loads(body) if body else {}
            except ValueError:
                states[name[4:]] = {}
        elif name == "locks":
            locks.update(x for x in body.split() if x)
    return stack, states, locks


# $1 = the app's folder, $2 = its Caddy site file, $3 = its label filter.
TRACES = ('[ -d "$1" ] && echo dir; [ -f "$2" ] && echo site; '
          'docker ps -aq --filter "$3" | head -1 | sed "s/.*/containers/"')


def traces(app: str, app_dir: str, site: str) -> list[str]:
    """Whether the app's folder, its web address and any of its containers exist."""
    return script(TRACES, app_dir, site, app_filter(app))


def read_traces(stdout: str) -> dict[str, bool]:
    found = stdout.split()
    return {k: k in found for k in ("dir", "site", "containers")}


# $1 = the Redis volume, $2 = the app (its Compose project), $3 = its data folder: "volume"
# when the volume exists and Compose made it for this very project, "files" when the folder is there.
DATA_TRACES = ('p=$(docker volume inspect -f \'{{index .Labels "com.docker.compose.project"}}\' "$1" 2>/dev/null) '
               '&& [ "$p" = "$2" ] && echo volume; [ -d "$3" ] && echo files; exit 0')


def data_traces(volume: str, project: str, data_dir: str) -> list[str]:
    return script(DATA_TRACES, volume, project, data_dir)


def read_data_traces(stdout: str) -> dict[str, bool]:
    found = stdout.split()
    return {"volume": "volume" in found, "files": "files" in found}
