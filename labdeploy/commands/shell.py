"""The one shape of a shell command: `sh -c SCRIPT sh VALUE...`.

SCRIPT is a constant of a builder module; the values reach it as `$1`, `$2`, ... (and `"$@"`),
so a value is never read as shell text, whatever characters it holds. `Remote.run` quotes
the whole argv once for the SSH channel.
"""

from __future__ import annotations


def script(text: str, *values) -> list[str]:
    """`["sh", "-c", text, "sh", *values]`: `text` is a builder module's constant."""
    return ["sh", "-c", text, "sh", *(str(v) for v in values)]
