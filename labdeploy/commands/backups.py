"""The backup service's commands: run inside its container (`docker exec`), each answering
one `@@ok ...` or `@@failed REASON` line; and the listing of an app's backups in one round trip."""

from __future__ import annotations

from . import shell
from .. import names
from ..server import layout

SCRIPT_IN_CONTAINER = "/labdeploy/backup.sh"
NOT_RUNNING = 197  # exit status when the backup container does not run


def _in_service(*args: str) -> list[str]:
    return shell.script(
        'if [ "$(docker inspect -f "{{.State.Running}}" "$1" 2>/dev/null)" != true ]; then exit 197; fi\n'
        'exec docker exec "$@"', layout.BACKUP_CONTAINER, "sh", SCRIPT_IN_CONTAINER, *args)


def now(app: str, kind: str = "manual") -> list[str]:
    return _in_service("once", names.app_name(app), kind)


def drill(app: str, backup_id: str = "") -> list[str]:
    return _in_service("drill", names.app_name(app), backup_id)


def counts(database: str) -> list[str]:
    return _in_service("counts", database)


def parse_outcome(stdout: str) -> tuple[bool, str]:
    """(ok, the rest of the line) from the last @@ok / @@failed line; (False, "") when none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("@@ok"):
            return True, line[4:].strip()
        if line.startswith("@@failed"):
            return False, line[8:].strip()
    return False, ""


_LISTING = r'''cd "$1" 2>/dev/null || exit 0
for f in *.json; do
    [ -f "$f" ] || continue
    echo "@@manifest $f"; cat "$f"; echo
done
echo "@@runs"; tail -n 200 runs.jsonl 2>/dev/null
echo "@@drills"; tail -n 200 drills.jsonl 2>/dev/null
echo "@@end"
'''


def listing(app: str) -> list[str]:
    """Every manifest of the app's backups, its last runs and drills (sections)."""
    return shell.script(_LISTING, layout.app_backups(app))


def read_listing(stdout: str) -> dict:
    """{"manifests": [text, ...], "runs": [line, ...], "drills": [line, ...]}"""
    manifests, runs, drills = [], [], []
    current = None
    for line in stdout.splitlines(keepends=True):
        if line.startswith("@@manifest "):
            manifests.append("")
            current = "manifest"
        elif line.startswith("@@runs"):
            current = "runs"
        elif line.startswith("@@drills"):
            current = "drills"
        elif line.startswith("@@end"):
            current = None
        elif current == "manifest":
            manifests[-1] += line
        elif current == "runs" and line.strip():
            runs.append(line.strip())
        elif current == "drills" and line.strip():
            drills.append(line.strip())
    return {"manifests": manifests, "runs": runs, "drills": drills}


_SUMS = r'''cd "$1" || exit 3
shift
for f in "$@"; do sha256sum -- "$f"; done
'''


def checksums(app: str, files: list[str]) -> list[str]:
    return shell.script(_SUMS, layout.app_backups(app), *files)


def login_ids() -> list[str]:
    """uid:gid of the login user (the backup service writes files as them)."""
    return shell.script('printf "%s:%s\\n" "$(id -u)" "$(id -g)"')


_REMOVE_APP = r'''[ -d "$1" ] || exit 0
rm -rf -- "$1"
'''


def remove_app(app: str) -> list[str]:
    return shell.script(_REMOVE_APP, layout.app_backups(app))


def restore(file_in_container: str, database: str, role: str) -> list[str]:
    """A dump under /backups (the container's view of ~/dallinger-data/backups) into a new
    database owned by `role`; answers `@@ok {row counts}`."""
    return _in_service("restore", file_in_container, database, role)


def container_path(app: str, file_name: str) -> str:
    return f"/backups/{names.app_name(app)}/{file_name}"


_HEALTH = r'''store=$1 root=$2
shift 2
if [ $# -eq 0 ]; then  # every deployed app
    set -- $(for f in "$root"/*/deploy.json; do [ -f "$f" ] && basename "$(dirname "$f")"; done)
fi
for app in "$@"; do
    d="$store/$app"
    echo "@@app $app"
    newest=$(ls "$d" 2>/dev/null | grep -E '^[0-9]{8}T[0-9]{6}Z\.[a-z-]+\.json$' | sort | tail -n 1)
    if [ -n "$newest" ]; then
        sed -n 's/^  "epoch": \([0-9]*\),$/epoch \1/p; s/^  "id": "\(.*\)",$/id \1/p' "$d/$newest"
    fi
    echo "count $(ls "$d" 2>/dev/null | grep -cE '^[0-9]{8}T[0-9]{6}Z\.[a-z-]+\.json$')"
    echo "run $(tail -n 1 "$d/runs.jsonl" 2>/dev/null)"
    echo "drill $(tail -n 1 "$d/drills.jsonl" 2>/dev/null)"
    echo "gooddrill $(grep '"ok": true' "$d/drills.jsonl" 2>/dev/null | tail -n 1)"
    echo "conf $(grep '^every_minutes=' "$root/$app/backup.conf" 2>/dev/null | tail -n 1)"
done
echo "@@server"
echo "conf $(grep '^every_minutes=' "$root/backup.conf" 2>/dev/null | tail -n 1)"
echo "service $(docker inspect -f '{{.State.Running}}' dallinger-backup 2>/dev/null)"
echo "now $(date +%s)"
'''


def health(apps: list[str]) -> list[str]:
    """For each app (none given: every deployed app): its newest backup, its last run and
    drill, its schedule; and whether the backup service runs."""
    return shell.script(_HEALTH, layout.BACKUPS_ROOT, layout.ROOT, *(names.app_name(a) for a in apps))


def read_health(stdout: str) -> tuple[dict, dict]:
    """({app: {key: text}}, {"conf": ..., "service": ..., "now": ...}) from `health`."""
    apps: dict = {}
    server: dict = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("@@app "):
            current = apps.setdefault(line[6:].strip(), {})
        elif line.startswith("@@server"):
            current = server
        elif current is not None:
            key, _, value = line.partition(" ")
            current[key] = value.strip()
    return apps, server
