"""Database access: one short-lived connection per request keeps within the app's
PostgreSQL connection limit however many gunicorn workers run."""

from __future__ import annotations

import contextlib
import os

import psycopg
from psycopg.rows import dict_row

# Varied column types on purpose: exports must keep integer, float, boolean, timestamptz,
# JSONB and text apart.
SCHEMA = """
CREATE TABLE IF NOT EXISTS participants (
    id          SERIAL PRIMARY KEY,
    worker_id   TEXT NOT NULL,
    user_agent  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished    BOOLEAN NOT NULL DEFAULT FALSE,
    finished_at TIMESTAMPTZ,
    score       DOUBLE PRECISION,
    n_trials    INTEGER NOT NULL DEFAULT 0,
    details     JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE TABLE IF NOT EXISTS responses (
    id             SERIAL PRIMARY KEY,
    participant_id INTEGER NOT NULL REFERENCES participants(id),
    trial          INTEGER NOT NULL,
    word           TEXT NOT NULL,
    ink            TEXT NOT NULL,
    answer         TEXT NOT NULL,
    congruent      BOOLEAN NOT NULL,
    correct        BOOLEAN NOT NULL,
    rt_ms          DOUBLE PRECISION NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    extra          JSONB
);
CREATE TABLE IF NOT EXISTS jobs (
    id      SERIAL PRIMARY KEY,
    kind    TEXT NOT NULL,
    source  TEXT NOT NULL,
    ran_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    payload JSONB
);
CREATE TABLE IF NOT EXISTS launches (
    id          SERIAL PRIMARY KEY,
    launched_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version     TEXT
);
"""


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("DATABASE_URL is not set")
    return url


@contextlib.contextmanager
def connect():
    with psycopg.connect(database_url(), row_factory=dict_row, connect_timeout=5,
                         application_name=os.environ.get("APP_PROCESS", "stroop")) as conn:
        yield conn


def create_tables() -> None:
    with connect() as conn:
        conn.execute(SCHEMA)
