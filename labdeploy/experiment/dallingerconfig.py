"""`~/.dallingerconfig`: read and set `docker_image_base_name`, leaving every other line alone.

Dallinger reads the file with configparser and merges every section, so the key may live in
any section; a new key goes into a `[Docker]` section. The file may hold other secrets (AWS
keys), so it is rewritten atomically and keeps its permissions (a new file is 0600).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from ..names import image_repository
from ..localfiles import write_atomic

KEY = "docker_image_base_name"
SECTION = "Docker"
_KEY_RE = re.compile(r"^(\s*)" + KEY + r"(\s*)([=:])(\s*)(.*?)(\s*)$", re.IGNORECASE)
_SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def path() -> Path:
    return Path(os.path.expanduser("~")) / ".dallingerconfig"


def _lines(p: Path) -> list[str]:
    return p.read_text().splitlines(keepends=True) if p.exists() else []


def get_base_name(config_path: Optional[Path] = None) -> Optional[str]:
    """The configured `docker_image_base_name`, or None. The last occurrence wins, as in configparser."""
    value = None
    for line in _lines(Path(config_path) if config_path else path()):
        if line.lstrip().startswith(("#", ";")):
            continue
        m = _KEY_RE.match(line.rstrip("\r\n"))
        if m:
            value = m.group(5).strip() or None
    return value


def set_base_name(name: str, config_path: Optional[Path] = None) -> Path:
    """Set `docker_image_base_name` (validated); other lines stay byte for byte. Returns the file."""
    image_repository(name)
    p = Path(config_path) if config_path else path()
    lines = _lines(p)
    replaced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("#", ";")):
            continue
        ending = line[len(line.rstrip("\r\n")):]
        m = _KEY_RE.match(line.rstrip("\r\n"))
        if m:
            lines[i] = f"{m.group(1)}{KEY}{m.group(2)}{m.group(3)}{m.group(4) or ' '}{name}{ending}"
            replaced = True
    if not replaced:
        section_at = next((i for i, line in enumerate(lines)
                           if (m := _SECTION_RE.match(line)) and m.group(1).strip() == SECTION), None)
        if section_at is not None:
            lines.insert(section_at + 1, f"{KEY} = {name}\n")
        else:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            if lines and lines[-1].strip():
                lines.append("\n")
            lines += [f"[{SECTION}]\n", f"{KEY} = {name}\n"]
    _atomic_write(p, "".join(lines))
    return p


def _atomic_write(p: Path, text: str) -> None:
    # Keep the file's mode; a new file holds no secret but is private by default.
    write_atomic(p, text, (p.stat().st_mode & 0o777) if p.exists() else 0o600)
