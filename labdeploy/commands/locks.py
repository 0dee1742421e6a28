"""A lock on the server: a folder that `mkdir` creates atomically, with an owner's info.json.

Whoever creates the folder holds the lock; info.json (sent on stdin, never on a command line)
names the owner by a random token and says when the lock expires. Used for an app's deploy
lock (~/dallinger/.locks/<app>) and the shared stack's prepare lock (~/dallinger/.locks/_stack);
labdeploy.server.locks.ServerLock runs these commands.
"""

from __future__ import annotations

from typing import Optional

from .shell import script

ACQUIRED = "acquired"
BUSY = 3  # exit status of ACQUIRE: someone holds the lock (its age and info.json follow)
NOT_OURS = 4  # REFRESH / BREAK: the lock now belongs to another token
NO_LOCK = 5  # READ: there is no lock

# $1 = locks folder, $2 = lock folder; info.json on stdin. Takes the lock and stores the info,
# or prints the holder (the lock's age by the server's clock, then its info.json) and exits 3.
ACQUIRE = ('mkdir -p "$1" && if mkdir "$2" 2>/dev/null; then cat > "$2/info.json"; echo acquired; '
           'else cat >/dev/null; echo "$(( $(date +%s) - $(stat -c %Y "$2" 2>/dev/null || date +%s) ))"; '
           'cat "$2/info.json" 2>/dev/null; exit 3; fi')
# $1 = lock folder, $2 = token: replace info.json (stdin) atomically and touch the lock, if still ours.
REFRESH = ('grep -qF "$2" "$1/info.json" 2>/dev/null || { cat >/dev/null; exit 4; }; '
           'cat > "$1/.info.json.tmp" && mv "$1/.info.json.tmp" "$1/info.json" && touch "$1"')
# $1 = lock folder, $2 = token: remove the lock only if it is still the one named by the token.
RELEASE = 'grep -qF "$2" "$1/info.json" 2>/dev/null && rm -rf "$1" || true'
# $1 = lock folder, $2 = token (or "" for any holder): rename away atomically, then remove.
BREAK = ('[ -d "$1" ] || exit 0; if [ -n "$2" ]; then grep -qF "$2" "$1/info.json" 2>/dev/null || exit 4; fi; '
         't="$1.broken.$$"; mv "$1" "$t" && rm -rf "$t"')
# $1 = lock folder: its age and info.json, or exit 5 when there is no lock.
READ = ('[ -d "$1" ] || exit 5; echo "$(( $(date +%s) - $(stat -c %Y "$1") ))"; '
        'cat "$1/info.json" 2>/dev/null')


def acquire(locks_dir: str, path: str) -> list[str]:
    """Take the lock at `path` (inside `locks_dir`); the owner's info.json goes on stdin."""
    return script(ACQUIRE, locks_dir, path)


def refresh(path: str, token: str) -> list[str]:
    """Rewrite info.json (stdin) and restart the expiry clock, while the token still holds it."""
    return script(REFRESH, path, token)


def release(path: str, token: str) -> list[str]:
    return script(RELEASE, path, token)


def break_(path: str, token: str = "") -> list[str]:
    """Remove the lock: only the holder named by `token`, or whoever holds it with ""."""
    return script(BREAK, path, token)


def read(path: str) -> list[str]:
    return script(READ, path)


def parse_holder(stdout: str) -> tuple[Optional[float], str]:
    """(age in seconds by the server's clock or None, info.json text) from ACQUIRE's exit-3
    answer or READ's. A lock whose time lies ahead of the server's clock is 0 s old."""
    first, _, rest = stdout.partition("\n")
    first = first.strip()
    age = max(0.0, float(first)) if first.lstrip("-").isdigit() else None
    return age, rest
