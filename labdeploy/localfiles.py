"""Local files written whole or not at all: temp file (created with its final mode), fsync,
then rename over the target, or hard-link when an existing file must never be replaced."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Union


def write_atomic(path: Union[str, os.PathLike], data: Union[bytes, str], mode: int = 0o600, *,
                 overwrite: bool = True) -> None:
    """Write `data` to `path` atomically with permission bits `mode`.

    With overwrite=False an existing `path` raises FileExistsError and is left untouched.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(f".{path.name}.labdeploy-{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the mode given to open() is masked by the umask
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the name exists
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


PRIVATE_FILE = 0o600  # files with participant data (exports, downloads, logs)
PRIVATE_DIR = 0o700  # folders labdeploy creates for them


def make_private_dirs(path: Union[str, os.PathLike]) -> Path:
    """Create `path` and any missing parents, each one labdeploy creates with mode 0700.
    Folders that already exist are left as they are (they are the user's own)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR)
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to change
        os.chmod(d, PRIVATE_DIR)  # mkdir's mode is masked by the umask
    return path


def open_private(path: Union[str, os.PathLike], *, exclusive: bool = True, append: bool = False):
    """A binary file opened for writing with mode 0600 whatever the umask, never through a
    symlink. exclusive=True (temporary files) fails if the name exists."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_EXCL if exclusive else 0
    flags |= os.O_APPEND if append else (0 if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # also tightens a file made by an older version
        return os.fdopen(fd, "ab" if append else "wb")
    except BaseException:
        os.close(fd)
        raise


def temp_name(path: Union[str, os.PathLike], suffix: str = ".part") -> Path:
    """A short hidden name next to `path` (short, so a 255-byte final name still fits)."""
    path = Path(path)
    return path.with_name(f".labdeploy-{uuid.uuid4().hex[:16]}{suffix}")
