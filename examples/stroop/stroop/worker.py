"""The worker process: takes jobs from Redis and records their results in PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import time

from psycopg.types.json import Jsonb

from . import db, jobs

log = logging.getLogger("stroop.worker")


def score_participant(conn, participant_id: int) -> dict:
    row = conn.execute(
        "SELECT count(*) AS n, avg(correct::int)::float AS accuracy, "
        "avg(rt_ms) FILTER (WHERE congruent) AS rt_congruent, "
        "avg(rt_ms) FILTER (WHERE NOT congruent) AS rt_incongruent "
        "FROM responses WHERE participant_id = %s", (participant_id,)).fetchone()
    summary = {k: (float(v) if v is not None else None) for k, v in row.items()}
    if summary["rt_congruent"] is not None and summary["rt_incongruent"] is not None:
        summary["stroop_effect_ms"] = summary["rt_incongruent"] - summary["rt_congruent"]
    conn.execute("UPDATE participants SET score = %s, details = details || %s WHERE id = %s",
                 (summary["accuracy"], Jsonb({"summary": summary}), participant_id))
    return summary


def handle(job: dict) -> None:
    with db.connect() as conn:
        payload = job.get("payload") or {}
        if job["kind"] == "score":
            payload = {**payload, "summary": score_participant(conn, int(payload["participant_id"]))}
        conn.execute("INSERT INTO jobs (kind, source, payload) VALUES (%s, %s, %s)",
                     (job["kind"], job.get("source", "?"), Jsonb(payload)))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    os.environ.setdefault("APP_PROCESS", "stroop-worker")
    queue = jobs.client()
    log.info("waiting for jobs on %s", jobs.QUEUE)
    while True:
        try:
            item = queue.blpop([jobs.QUEUE], timeout=5)
            if item is None:
                continue
            job = json.loads(item[1])
            handle(job)
            log.info("done: %s", job["kind"])
        except Exception:  # a bad job or a DB hiccup must not kill the worker
            log.exception("job failed")
            time.sleep(1)


if __name__ == "__main__":
    main()
