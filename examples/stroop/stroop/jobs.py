"""The Redis job queue shared by web (enqueues), clock (enqueues) and worker (runs)."""

from __future__ import annotations

import json
import os

import redis

QUEUE = "stroop:jobs"


def client() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://redis:6379/0"),
                                socket_connect_timeout=5, socket_timeout=10)


def enqueue(kind: str, source: str, **payload) -> None:
    client().rpush(QUEUE, json.dumps({"kind": kind, "source": source, "payload": payload}))
