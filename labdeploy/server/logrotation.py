"""Bounded container logs: Docker's json-file driver with a size and a file count, on every app
service and every service of the shared stack. A study left alone for weeks then keeps at most
`max_size` x `max_files` of log per container; `docker logs` (and so labdeploy's logs()) still
reads across the rotated files.

The server's choice lives in the stack settings (log_max_size, log_max_files); apps take it at
their next deploy or update.
"""

from __future__ import annotations

import re

from ..errors import ValidationError

DEFAULT_MAX_SIZE = "10m"
DEFAULT_MAX_FILES = 3
_SIZE_RE = re.compile(r"([1-9][0-9]{0,5})([kmg])")
_MIN_BYTES = 10 * 1024  # below this, a single long line (a traceback) would fill a file
_MAX_BYTES = 10 * 1024 ** 3
_UNITS = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def size_bytes(size) -> int:
    """Bytes in a Docker size such as "10m" (k, m or g); refuses anything else."""
    m = _SIZE_RE.fullmatch(size) if isinstance(size, str) else None
    number = int(m.group(1)) * _UNITS[m.group(2)] if m else 0
    if not _MIN_BYTES <= number <= _MAX_BYTES:
        raise ValidationError(f"The log size {size!r} is not a size between 10k and 10g.",
                              "Give a number with k, m or g, such as 10m (the default).", code="invalid.log_size")
    return number


def file_count(files) -> int:
    try:
        number = int(files) if not isinstance(files, bool) and str(files).strip().isdigit() else 0
    except (TypeError, ValueError):
        number = 0
    if not 1 <= number <= 100:
        raise ValidationError(f"The number of log files {files!r} is not between 1 and 100.",
                              f"{DEFAULT_MAX_FILES} is the default.", code="invalid.log_files")
    return number


def options(max_size: str = DEFAULT_MAX_SIZE, max_files=DEFAULT_MAX_FILES) -> dict:
    """The `logging:` section of a compose service."""
    size_bytes(max_size)
    return {"driver": "json-file", "options": {"max-size": max_size, "max-file": str(file_count(max_files))}}


def of(settings) -> dict:
    """The `logging:` section for the stack settings given (missing fields: the defaults)."""
    return options(getattr(settings, "log_max_size", DEFAULT_MAX_SIZE) or DEFAULT_MAX_SIZE,
                   getattr(settings, "log_max_files", DEFAULT_MAX_FILES) or DEFAULT_MAX_FILES)
