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
