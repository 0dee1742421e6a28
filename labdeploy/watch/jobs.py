"""An app's background jobs (rq, as Dallinger and PsyNet use): proof that the worker runs
them, and how many wait, run or failed.

A worker process can look healthy (running, never restarted, quiet) and still fail every
job: Dallinger 12.4's gevent worker with rq 3 does exactly that. So a deploy of a
Dallinger/PsyNet app ends by enqueuing one harmless job (`builtins.abs(-7)`) on the worker's
first queue and waiting for it to finish; `counts` reads rq's queues and registries straight
from each app's Redis, for `status` and the monitor.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from ..commands import jobs as commands
from ..errors import LabdeployError

PROBE_QUEUE = commands.PROBE_QUEUE  # Dallinger's worker listens on high, default, low: first
PROBE_TIMEOUT = 30.0
COUNT_COLUMNS = list(commands.COUNT_FIELDS)


class WorkerNotRunningJobs(LabdeployError):
    """The worker process runs but does not complete jobs."""

    code = "worker.jobs_not_running"


def judge_probe(output: str, app: str) -> None:
    """Raise WorkerNotRunningJobs unless the probe's output says the job finished (pure)."""
    status, detail, head = commands.read_probe(output)
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
    res = remote.run(commands.probe(app, timeout), check=False, timeout=timeout + 60)
    judge_probe(res.stdout + ("\n" + res.stderr if commands.STATUS_MARK not in res.stdout else ""), app)


def parse_counts(text: str) -> pd.DataFrame:
    """Lines 'app queue queued started failed finished deferred scheduled' -> DataFrame (pure)."""
    df = pd.DataFrame(commands.read_counts(text), columns=COUNT_COLUMNS)
    for col in COUNT_COLUMNS[2:]:
        df[col] = df[col].astype("int64")
    return df.sort_values(["app", "queue"], ignore_index=True)


def counts(remote, app: Optional[str] = None) -> pd.DataFrame:
    """Per app and rq queue: jobs queued, started, failed, finished, deferred, scheduled.
    Apps whose worker does not use rq have no rows."""
    return parse_counts(remote.run(commands.counts(app), check=False, timeout=60).stdout)


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
