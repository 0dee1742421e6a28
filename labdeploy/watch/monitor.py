"""Monitoring, in one place: container status, logs, exec, stats, restart; PostgreSQL
connections (pg_stat_activity) with a per-app summary and warnings; a background sampler;
participants working right now.

Everything runs over the server's one SSH connection. The pieces live in small modules
(`containers`, `pgactivity`, `sampler`); this module gathers the public API.
"""

from __future__ import annotations

from .containers import (CommandNotFound, ExecResult, LogEntry, RestartTimeout, ServiceNotRunning, UnknownApp, UnknownService, exec_, logs, restart, stats, status)
from ..errors import CommandFailed, ConnectionLost, LabdeployError, ValidationError
from .pgactivity import (DEFAULT_THRESHOLD, ConnectionWarning, PersistentPsql, PostgresUnavailable, Snapshot, close_persistent_psql, connection_warnings, pg_activity, pg_summary, snapshot)
from .participants import IdleTimeout, ParticipantsWorking, set_working_query, wait_idle, working, working_all
from .sampler import Sampler

__all__ = [
    "status", "logs", "exec_", "stats", "restart", "working", "working_all", "wait_idle", "set_working_query",
    "pg_activity", "pg_summary", "snapshot", "connection_warnings", "Sampler", "close_persistent_psql",
    "ExecResult", "LogEntry", "Snapshot", "ConnectionWarning", "PersistentPsql", "DEFAULT_THRESHOLD",
    "LabdeployError", "ValidationError", "CommandFailed", "ConnectionLost", "UnknownApp", "UnknownService",
    "ServiceNotRunning", "CommandNotFound", "RestartTimeout", "PostgresUnavailable",
    "IdleTimeout", "ParticipantsWorking",
]
