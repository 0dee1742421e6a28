"""The one redaction function for everything that leaves the server as text.

Progress events, error messages, log lines, deploy history and monitoring DataFrames all
pass through `redact`, so a password that an app prints (a DATABASE_URL in a traceback, a
`FLASK_SECRET_KEY=...` in `env`) never reaches a notebook, a terminal or a local file.

Two kinds of masking:
* by shape: the password part of a URL (`postgresql://user:***@host`), and the value of a
  variable whose *name ends in* a secret word (`SMTP_PASSWORD=***`, `HX_API_TOKEN: ***`).
  Only the end of the name counts, so `generate_tokens=1&mode=live` stays readable;
* by value: the exact secret values a caller knows (an app's own secrets.env values), which
  catches a secret printed without any telling name around it.

Experiment exports are the researcher's data and are never altered here.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

MASK = "***"

_URL_PASSWORD_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s/]+)(@)", re.I)
# The name's last words say "secret": PASSWORD, SMTP_PASSWD, FLASK_SECRET_KEY, HX_API_TOKEN,
# aws_secret_access_key, AWS_ACCESS_KEY_ID, client_secret, auth-token. Then `=` or `:`.
_SECRET_NAME = (r"[A-Za-z0-9_.-]*?(?:password|passwd|pwd|passphrase|secret|secret_key|token|api_key|apikey|"
                r"access_key|access_key_id|access_id|private_key|credentials?|auth_key)")
_SECRET_VAR_RE = re.compile(r"(?<![A-Za-z0-9_.-])(" + _SECRET_NAME + r")(?![A-Za-z0-9_])(\s*[=:]\s*)(['\"]?)"
                            r"([^\s'\",&;]+)", re.I)
_SQL_PASSWORD_RE = re.compile(r"(\bpassword\s+)'(?:[^']|'')*'", re.I)  # ALTER ROLE ... PASSWORD '...'
_MIN_KNOWN = 6  # shorter "secrets" (e.g. a 1-character flag value) would mask ordinary text


def redact(text: Optional[str], known: Iterable[str] = ()) -> Optional[str]:
    """`text` with secrets masked (see the module's doc). `known` are exact values to mask."""
    if not text or not isinstance(text, str):
        return text
    for value in sorted({str(v) for v in known if v and len(str(v)) >= _MIN_KNOWN}, key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _URL_PASSWORD_RE.sub(r"\1" + MASK + r"\3", text)
    text = _SQL_PASSWORD_RE.sub(r"\1'" + MASK + "'", text)
    return _SECRET_VAR_RE.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + MASK, text)


def redact_frame(frame, columns: Optional[Iterable[str]] = None, known: Iterable[str] = ()):
    """A copy of `frame` with its text columns (or `columns`) redacted."""
    out = frame.copy()
    known = tuple(known)
    for col in (columns if columns is not None else out.columns):
        if col in out.columns and (out[col].dtype == object or str(out[col].dtype).startswith(("str", "string"))):
            out[col] = out[col].map(lambda v: redact(v, known) if isinstance(v, str) else v)
    return out


def redacting(reporter, known: Iterable[str] = ()):
    """A reporter that masks `known` values in every event's text before passing it on
    (events already mask secrets by shape when they are made)."""
    known = tuple(v for v in known if v)
    if not known:
        return reporter

    def report(event) -> None:
        reporter(_redact_event(event, known))

    return report


def _redact_event(event, known):
    import dataclasses

    changes = {f.name: redact(getattr(event, f.name), known) for f in dataclasses.fields(event)
               if isinstance(getattr(event, f.name), str)}
    return dataclasses.replace(event, **changes)
