"""Small reads of an app's files on the server that several layers need: its deploy.json (what
runs now) and a file that may not be there. One round trip each; `write` replaces a file in one
command (an SFTP write takes four round trips: open, mode, close, rename)."""

from __future__ import annotations

import json
import posixpath
from typing import Optional, Union

from . import layout
from ..commands import files


def read_text(remote, path: str) -> Optional[str]:
    """The file's text, or None when it does not exist."""
    try:
        return remote.get_bytes(path).decode()
    except FileNotFoundError:
        return None


def read_state(remote, app: str) -> Optional[dict]:
    """The app's deploy.json, or None (never deployed, or unreadable)."""
    text = read_text(remote, layout.app_state(app))
    try:
        state = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def write(remote, path: str, data: Union[bytes, str], mode: int = 0o644) -> None:
    """Replace the file at `path` (relative to home) with `data`, atomically and with exactly
    `mode`; its folder is made when missing. A secret in `data` travels on stdin."""
    folder, name = posixpath.split(path)
    remote.run(files.write(folder or ".", name, mode), stdin=data.encode() if isinstance(data, str) else data,
               timeout=120)
