"""Backups of an app's database (the entry point): the stack's backup service takes them on a
schedule; from here they are taken now, listed, drilled, pulled off the server and restored.
See data/backups.py and data/restore.py."""

from __future__ import annotations

from .data.backups import (BackupFailed, BackupServiceMissing, LocalBackup, backups, health,  # noqa: F401
                           now, pull, runs, schedule, verify_backup)
from .data.restore import RestoreNeedsConfirmation, RestoreResult, check_source, restore  # noqa: F401
from .data.encryption import DecryptionFailed, Encryption  # noqa: F401
from .server.backupservice import Schedule, schedule as check_schedule  # noqa: F401  (checks, connects nowhere)

__all__ = ["BackupFailed", "BackupServiceMissing", "DecryptionFailed", "Encryption", "LocalBackup", "RestoreNeedsConfirmation", "RestoreResult",
           "Schedule", "backups", "check_schedule", "check_source", "health", "now", "pull", "restore", "runs", "schedule", "verify_backup"]
