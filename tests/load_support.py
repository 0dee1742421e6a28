"""Many participants at once, through the testbed's Caddy, while PostgreSQL's connections
are watched (labdeploy.monitor's snapshots): for the connection-budget tests (issue 15.3).

Each visit is what a participant's browser asks for, in order, over its own HTTP session;
all visits start together (a barrier) and run in threads (requests). Every answer's status
and time is kept, and a sampler reads pg_stat_activity as often as it can meanwhile.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import requests

from labdeploy.watch import monitor
from labdeploy import names

TIMEOUT = 300  # seconds per request: on a busy 2-core testbed a queued request is slow, not failed


class Visit:
    """One participant's session: `get`/`post` record (route, status, seconds, body tail)."""

    def __init__(self, testbed: dict, app: str) -> None:
        self.base = f"http://{testbed['http']['host']}:{testbed['http']['port']}"
        self.host = f"{app}.localhost"
        self.session = requests.Session()
        self.answers: list[tuple] = []

    def request(self, method: str, path: str, **kw):
        route = "/" + path.split("?")[0].lstrip("/").split("/")[0]
        t0 = time.monotonic()
        try:
            res = self.session.request(method, self.base + path, headers={"Host": self.host}, timeout=TIMEOUT,
                                       allow_redirects=False, **kw)
        except requests.RequestException as exc:
            self.answers.append((f"{method} {route}", type(exc).__name__, time.monotonic() - t0, str(exc)[:300]))
            return None
        self.answers.append((f"{method} {route}", res.status_code, time.monotonic() - t0,
                             res.text[-300:] if res.status_code >= 400 else ""))
        return res

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw):
        return self.request("POST", path, **kw)


def dallinger_visit(v: Visit, i: int) -> None:
    """examples/dallinger-hello: the ad, a new participant, its JSON, a question, the summary, the page."""
    w, a = f"LW{i}", f"LA{i}"
    v.get(f"/ad?recruiter=hotair&assignmentId={a}&hitId=LH&workerId={w}&mode=sandbox")
    created = v.post(f"/participant/{w}/LH/{a}/sandbox?recruiter=hotair&fingerprint_hash=load{i}")
    if created is None or created.status_code != 200:
        return
    pid = created.json()["participant"]["id"]
    v.get(f"/participant/{pid}")
    v.post(f"/question/{pid}", data={"question": "load", "number": 1, "response": f"visit {i}"})
    v.get("/summary")
    v.get(f"/exp?participant_id={pid}&hit_id=LH&assignment_id={a}&worker_id={w}&mode=sandbox")


def psynet_visit(v: Visit, i: int) -> None:
    """A PsyNet app: the recruiter's link (an identity, redirected to the ad), the ad, a new
    participant (as start.html makes it), its first timeline page and the progress JSON."""
    first = v.get("/ad?recruiter=generic&generate_tokens=1&mode=live")
    if first is None or first.status_code != 302:
        return
    location = first.headers["Location"]
    path = location[location.index("/ad?"):]
    v.get(path)
    entry = dict(part.split("=", 1) for part in path.split("?", 1)[1].split("&"))
    entry.pop("mode", None)
    created = v.post("/participant", data={**entry, "fingerprint_hash": f"load{i}"})
    if created is None or created.status_code != 200:
        return
    participant = created.json()["participant"]
    v.get(f"/timeline?unique_id={participant['unique_id']}")
    v.get(f"/timeline/progress_and_reward?participantId={participant['id']}")


@dataclass
class LoadResult:
    visits: int
    seconds: float
    answers: list = field(repr=False)
    peak_app: int = 0       # the app role's connections, most seen at once
    peak_total: int = 0     # every client connection of the server, most seen at once
    role_limit: int = 0
    max_connections: int = 0
    samples: int = 0
    pooled_only: bool = True  # every connection of the app's role came through its pooler

    @property
    def statuses(self) -> Counter:
        return Counter((route, status) for route, status, _, _ in self.answers)

    @property
    def errors(self) -> list:
        return [a for a in self.answers if not isinstance(a[1], int) or a[1] >= 500]

    def latency(self, q: float) -> float:
        times = sorted(a[2] for a in self.answers)
        return times[min(len(times) - 1, int(q * len(times)))]

    def describe(self) -> str:
        times = [a[2] for a in self.answers]
        return (f"{self.visits} visits, {len(self.answers)} requests in {self.seconds:.1f} s; "
                f"{len(self.errors)} errors; statuses {dict(sorted(self.statuses.items(), key=str))}; "
                f"latency median {statistics.median(times):.2f} s, p95 {self.latency(0.95):.2f} s, "
                f"max {max(times):.2f} s; peak connections of the app {self.peak_app} (role limit "
                f"{self.role_limit}), of the server {self.peak_total} (max_connections {self.max_connections}); "
                f"{self.samples} samples")


def drive(testbed: dict, remote, app: str, visit: Callable[[Visit, int], None], n: int = 200) -> LoadResult:
    """n visits at once through Caddy, PostgreSQL's connections sampled meanwhile."""
    role = names.db_identifier(app)
    result = LoadResult(visits=n, seconds=0.0, answers=[])
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            # What a researcher sees: monitor.pg_summary's row for the app (one snapshot).
            summary = monitor.pg_summary(monitor.snapshot(remote)).set_index("database")
            result.samples += 1
            result.peak_total = max(result.peak_total, int(summary.attrs["total"]))
            result.max_connections = int(summary.attrs["max_connections"])
            if role not in summary.index:
                continue
            row = summary.loc[role]
            # The app's own connections: the backup service's (the superuser's) are not its.
            result.peak_app = max(result.peak_app, int(row["connections"]) - int(row["maintenance"]))
            result.role_limit = int(row["role_limit"])
            if row["via_pooler"] + row["maintenance"] != row["connections"]:  # the backup service's are not the app's
                result.pooled_only = False

    visits = [Visit(testbed, app) for _ in range(n)]
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait(timeout=60)
        visit(visits[i], i)

    sampler = threading.Thread(target=sample, daemon=True, name="load-sampler")
    sampler.start()
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="visit") as pool:
            list(pool.map(one, range(n)))
    finally:
        result.seconds = time.monotonic() - t0
        stop.set()
        sampler.join(timeout=60)
    result.answers = [a for v in visits for a in v.answers]
    return result
