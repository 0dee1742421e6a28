"""Small reads of an app's files on the server that several layers need: its deploy.json (what
runs now) and a file that may not be there. One SFTP round trip each."""

from __future__ import annotations

import json
from typing import Optional

from . import layout


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
