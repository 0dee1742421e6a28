"""The `@@name` output format: one round trip answers several questions, each answer after
its own marker line.

A script prints `echo @@docker_path; command -v docker; echo @@disk; df ...; echo @@end`;
`parse` splits what came back into {"docker_path": "...", "disk": "...", "end": ""}. Every
builder whose output has sections uses this one parser.
"""

from __future__ import annotations

from typing import Iterable, Optional

MARK = "@@"


def parse(text: str, *, mark: str = MARK, names: Optional[Iterable[str]] = None) -> dict[str, str]:
    """Section name -> its text (the lines after its marker, line ends kept).

    A marker is a line that starts with `mark`; its name is the rest of the line, stripped
    ("@@app my-app" names the section "app my-app"). With `names`, only lines whose first
    word is one of them are markers, so a file printed into a section can't start one by
    accident. Text before the first marker is dropped; a name seen twice keeps the later text.
    """
    wanted = set(names) if names is not None else None
    out: dict[str, str] = {}
    current: Optional[str] = None
    buf: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith(mark):
            name = line[len(mark):].strip()
            if wanted is None or (name.split(" ", 1)[0] if name else "") in wanted:
                if current is not None:
                    out[current] = "".join(buf)
                current, buf = name, []
                continue
        if current is not None:
            buf.append(line)
    if current is not None:
        out[current] = "".join(buf)
    return out


def lines(section: str) -> list[str]:
    """A section's non-blank lines, without their line ends and trailing blanks."""
    return [line.rstrip() for line in section.splitlines() if line.strip()]
