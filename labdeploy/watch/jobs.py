"""An app's background jobs (rq, as Dallinger and PsyNet use): proof that the worker runs
them, and how many wait, run or failed.

A worker process can look healthy (running, never restarted, quiet) and still fail every
job: Dallinger 12.4's gevent worker with rq 3 does exactly that. So a deploy of a
Dallinger/PsyNet app ends by enqueuing one harmless job (`builtins.abs(-7)`) on the worker's
first queue and waiting for it to finish; `counts` reads rq's queues and registries straight
from each app's Redis, for `status` and the monitor.
"""

from __future__ import annotations

import shlex
from io import StringIO
from typing import Optional

import pandas as pd

from .. import names
from ..errors import LabdeployError

PROBE_QUEUE = "high"  # Dallinger's worker listens on high, default, low: first, so no backlog delays it
PROBE_TIMEOUT = 30.0
COUNT_COLUMNS = ["app", "queue", "queued", "started", "failed", "finished", "deferred", "scheduled"]


class WorkerNotRunningJobs(LabdeployError):
    """The worker process runs but does not complete jobs."""


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

# Lua run by the app's Redis: one line per rq queue with its counts. Registry key names
# differ across rq versions (rq:wip: for started jobs since rq 1.x); both are counted.
_COUNTS_LUA = r"""
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


def probe_script(app: str, timeout: float = PROBE_TIMEOUT) -> str:
    """Shell: run PROBE in the app's running worker container (found by its labels)."""
    flt = (f"--filter {shlex.quote('label=labdeploy.app=' + names.app_name(app))} "
           f"--filter label=labdeploy.service=worker --filter status=running")
    return (f"c=$(docker ps -q {flt} | head -n 1); [ -n \"$c\" ] || {{ echo '@@status no-worker'; exit 0; }}; "
            f"docker exec \"$c\" sh -c 'exec \"$(command -v python3 || command -v python)\" -c \"$0\" \"$@\"' "
            f"{shlex.quote(PROBE)} {PROBE_QUEUE} {float(timeout):g}")


def judge_probe(output: str, app: str) -> None:
    """Raise WorkerNotRunningJobs unless the probe's output says the job finished (pure)."""
    head, _, rest = output.partition("@@status ")
    status, _, detail = rest.partition("\n")
    status = status.strip() or "unknown"
    if status == "finished":
        return
    if status == "failed":
        tail = "\n".join(detail.strip().splitlines()[-8:])
        raise WorkerNotRunningJobs(
            f"The worker of {app} runs but fails its jobs: a test job failed with\n{tail}",
            "The packages in the image do not work together (often rq too new for this Dallinger). "
            "Pin them: deploy with labdeploy's generated Dockerfile (it installs the versions the "
            "Dallinger release was tested with), or add the pins to requirements.txt.")
    if status == "queued":
        raise WorkerNotRunningJobs(
            f"The worker of {app} did not take a test job within {PROBE_TIMEOUT:.0f} s: jobs stay queued.",
            "Read the worker's logs (`docker compose logs worker` in ~/dallinger/<app>): it may be stuck "
            "starting, or listen on other queues.")
    if status == "no-worker":
        raise WorkerNotRunningJobs(f"The worker of {app} is not running.", "Read the worker's logs.")
    raise WorkerNotRunningJobs(f"The worker check of {app} gave no answer ({status}): {head.strip()[-500:]}",
                               "Read the worker's logs; the image needs rq and redis importable by python3.")


def prove_worker(remote, app: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Enqueue one harmless job in the app's Redis and wait until its worker has run it."""
    res = remote.run(["sh", "-c", probe_script(app, timeout)], check=False, timeout=timeout + 60)
    judge_probe(res.stdout + ("\n" + res.stderr if "@@status" not in res.stdout else ""), app)


def counts_script(app: Optional[str] = None) -> str:
    """Shell: for every app's Redis (or one app's), its rq counts, each line prefixed by the app."""
    flt = "--filter label=labdeploy.service=redis --filter status=running"
    if app is not None:
        flt += f" --filter {shlex.quote('label=labdeploy.app=' + names.app_name(app))}"
    fmt = shlex.quote('{{.ID}} {{.Label "labdeploy.app"}}')
    return (f"docker ps {flt} --format {fmt} | while read -r id a; do "
            f"case \"$a\" in \"\"|*[!a-z0-9-]*) continue;; esac; "
            f"docker exec \"$id\" redis-cli --raw EVAL {shlex.quote(_COUNTS_LUA)} 0 </dev/null 2>/dev/null "
            f"| sed \"s/^/$a /\"; done")


def parse_counts(text: str) -> pd.DataFrame:
    """Lines 'app queue queued started failed finished deferred scheduled' -> DataFrame (pure)."""
    rows = []
    for line in StringIO(text):
        parts = line.split()
        if len(parts) == len(COUNT_COLUMNS) and all(p.isdigit() for p in parts[2:]):
            rows.append([parts[0], parts[1], *map(int, parts[2:])])
    df = pd.DataFrame(rows, columns=COUNT_COLUMNS)
    for col in COUNT_COLUMNS[2:]:
        df[col] = df[col].astype("int64")
    return df.sort_values(["app", "queue"], ignore_index=True)


def counts(remote, app: Optional[str] = None) -> pd.DataFrame:
    """Per app and rq queue: jobs queued, started, failed, finished, deferred, scheduled.
    Apps whose worker does not use rq have no rows."""
    return parse_counts(remote.run(["sh", "-c", counts_script(app)], check=False, timeout=60).stdout)


def attach(status: pd.DataFrame, counts_df: pd.DataFrame) -> pd.DataFrame:
    """The status table with each app's job counts (summed over its queues) on its worker row;
    other rows, and apps without rq, get <NA> (pure)."""
    out = status.copy()
    totals = counts_df.groupby("app")[["queued", "started", "failed"]].sum() if len(counts_df) else None
    for col in ("queued", "started", "failed"):
        values = [totals.loc[a, col] if totals is not None and s == "worker" and a in totals.index else None
                  for a, s in zip(out["app"], out["service"])]
        out[f"jobs_{col}"] = pd.array(values, dtype="Int64")
    return out
