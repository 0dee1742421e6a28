"""An app's background jobs (rq): prove the worker runs them, count what waits, runs or failed.

Both run inside the app's own containers (found by their labels) with the app's own Python
and Redis; nothing secret is on any command line.
"""

from __future__ import annotations

from typing import Optional

from .docker import app_filter
from .shell import script

PROBE_QUEUE = "high"  # Dallinger's worker listens on high, default, low: first, so no backlog delays it
STATUS_MARK = "@@status "

# Runs inside the app's worker container with the app's own rq and redis packages.
# argv[1] = queue, argv[2] = seconds to wait. Prints "@@status <status>" and, for a failed
# job, its traceback. The job is deleted afterwards so it never shows in the app's counts.
PROBE = r"""
import os, sys, time
from redis import Redis
from rq import Queue
conn = Redis.from_url(os.environ.get("REDIS_URL", "redis://redis:6379/0"))
job = Queue(sys.argv[1], connection=conn).enqueue("builtins.abs", -7, description="labdeploy worker check",
                                                  result_ttl=60, failure_ttl=600)
deadline, status = time.monotonic() + float(sys.argv[2]), "queued"
while time.monotonic() < deadline:
    status = str(getattr(job.get_status(refresh=True), "value", job.get_status()))
    if status in ("finished", "failed", "stopped", "canceled"):
        break
    time.sleep(0.1)
print("@@status", status)
if status == "failed":
    text = getattr(job, "exc_info", None)
    try:
        text = text or job.latest_result().exc_string
    except Exception:
        pass
    print(text or "(no traceback recorded)")
try:
    job.delete()
except Exception:
    pass
"""

# $1 = the app's label filter, $2 = PROBE, $3 = queue, $4 = seconds: run PROBE in the app's
# running worker, with whichever python the image has.
RUN_PROBE = ('c=$(docker ps -q --filter "$1" --filter label=labdeploy.service=worker --filter status=running '
             '| head -n 1); [ -n "$c" ] || { echo \'@@status no-worker\'; exit 0; }; shift; '
             'docker exec "$c" sh -c \'exec "$(command -v python3 || command -v python)" -c "$0" "$@"\' "$@"')


def probe(app: str, timeout: float, queue: str = PROBE_QUEUE) -> list[str]:
    """Enqueue one harmless job (`builtins.abs(-7)`) and wait up to `timeout` s for the worker."""
    return script(RUN_PROBE, app_filter(app), PROBE, queue, f"{float(timeout):g}")


def read_probe(output: str) -> tuple[str, str, str]:
    """(status, detail after it, what came before it) from `probe`'s output. The status is
    finished, failed, queued, no-worker, ... or "unknown" when the probe printed none."""
    head, _, rest = output.partition(STATUS_MARK)
    status, _, detail = rest.partition("\n")
    return status.strip() or "unknown", detail, head


# Lua run by the app's Redis: one line per rq queue with its counts. Registry key names
# differ across rq versions (rq:wip: for started jobs since rq 1.x); both are counted.
COUNTS_LUA = r"""
local out = {}
for _, key in ipairs(redis.call('SMEMBERS', 'rq:queues')) do
  local q = string.sub(key, 10)
  local started = redis.call('ZCARD', 'rq:wip:' .. q) + redis.call('ZCARD', 'rq:started:' .. q)
  table.insert(out, table.concat({q, redis.call('LLEN', key), started, redis.call('ZCARD', 'rq:failed:' .. q),
    redis.call('ZCARD', 'rq:finished:' .. q), redis.call('ZCARD', 'rq:deferred:' .. q),
    redis.call('ZCARD', 'rq:scheduled:' .. q)}, ' '))
end
return out
"""

# $1 = label filter (one app's, or every labdeploy app's), $2 = COUNTS_LUA: for each app's
# running Redis, its rq counts, each line prefixed by the app.
COUNTS = ('docker ps --filter label=labdeploy.service=redis --filter status=running --filter "$1" '
          '--format \'{{.ID}} {{.Label "labdeploy.app"}}\' | while read -r id a; do '
          'case "$a" in ""|*[!a-z0-9-]*) continue;; esac; '
          'docker exec "$id" redis-cli --raw EVAL "$2" 0 </dev/null 2>/dev/null '
          '| sed "s/^/$a /"; done')
COUNT_FIELDS = ("app", "queue", "queued", "started", "failed", "finished", "deferred", "scheduled")


def counts(app: Optional[str] = None) -> list[str]:
    return script(COUNTS, app_filter(app), COUNTS_LUA)


def read_counts(text: str) -> list[tuple]:
    """(app, queue, queued, started, failed, finished, deferred, scheduled) per line of `counts`."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == len(COUNT_FIELDS) and all(p.isdigit() for p in parts[2:]):
            rows.append((parts[0], parts[1], *map(int, parts[2:])))
    return rows
