"""Simulated participants of examples/stroop looping through its routes through the testbed's
Caddy, as a browser would: start, answer trials, finish, again. Each request opens its own
connection: a browser retries a request whose reused keep-alive connection the server closed
before answering (RFC 9112, 9.3.1; Caddy closes idle ones when it reloads), a plain HTTP
client reports it as an error that no participant would see. Every request is recorded
(time, latency, status or error) so a test or benchmark can count what failed during one
operation. Bounded in participants and time; stops by itself."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import requests


@dataclass
class Hit:
    t: float          # monotonic start
    seconds: float
    status: int       # 0: no answer (connection refused, reset, timeout)
    route: str
    version: str = ""


@dataclass
class Window:
    hits: list

    @property
    def failed(self) -> list:
        return [h for h in self.hits if not 200 <= h.status < 300]

    def quantile(self, q: float) -> float:
        xs = sorted(h.seconds for h in self.hits)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def describe(self) -> str:
        return (f"{len(self.hits)} requests, {len(self.failed)} failed, p50 {self.quantile(0.5) * 1000:.0f} ms, "
                f"p95 {self.quantile(0.95) * 1000:.0f} ms")


@dataclass
class Participants:
    """`n` simulated participants of `app` through Caddy at `base` (http://host:port)."""
    base: str
    app: str
    n: int = 50
    think: float = 0.3            # seconds between two requests of one participant
    trials: int = 3
    max_seconds: float = 900      # stops by itself
    hits: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list = []

    def __enter__(self) -> "Participants":
        self.t0 = time.monotonic()
        for i in range(self.n):
            th = threading.Thread(target=self._participant, args=(i,), daemon=True, name=f"participant-{i}")
            th.start()
            self._threads.append(th)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=30)

    def window(self, since: float, until: float | None = None) -> Window:
        with self._lock:
            return Window([h for h in self.hits if h.t >= since and (until is None or h.t <= until)])

    def _request(self, session: requests.Session, method: str, path: str, route: str, **kw):
        t = time.monotonic()
        try:
            r = session.request(method, self.base + path, timeout=30, **kw,
                                headers={"Host": f"{self.app}.localhost", "Connection": "close"})
            status, body = r.status_code, r
        except requests.RequestException:
            status, body = 0, None
        with self._lock:
            self.hits.append(Hit(t, time.monotonic() - t, status, route))
        return body

    def _participant(self, i: int) -> None:
        rng = random.Random(i)
        session = requests.Session()
        time.sleep(rng.random() * self.think)  # arrivals spread, not all at once
        while not self._stop.is_set() and time.monotonic() - self.t0 < self.max_seconds:
            r = self._request(session, "POST", "/api/participants", "start", json={"worker_id": f"load-{i}"})
            if r is None or r.status_code != 200:
                self._stop.wait(self.think)
                continue
            pid = r.json()["id"]
            for trial in range(self.trials):
                if self._stop.wait(self.think * (0.5 + rng.random())):
                    return
                self._request(session, "POST", f"/api/participants/{pid}/responses", "answer",
                              json={"trial": trial, "word": "red", "ink": "red", "answer": "red", "rt_ms": 500})
            if self._stop.wait(self.think):
                return
            self._request(session, "POST", f"/api/participants/{pid}/finish", "finish")


def p95_ratio(during: Window, rest: Window) -> float:
    return during.quantile(0.95) / max(rest.quantile(0.95), 1e-6)


__all__ = ["Hit", "Participants", "Window", "p95_ratio"]
