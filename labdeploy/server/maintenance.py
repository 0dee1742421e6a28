"""An app's maintenance page, as lines of its Caddy site: new arrivals get a friendly page with
`503` and `Retry-After`, while the requests of participants already in the experiment still
reach the app.

"New arrivals" are the routes a participant takes to enter: for Dallinger and PsyNet apps the
recruitment ad, the consent page and the creation of a participant (which is a POST to
`/participant/<worker>/<hit>/<assignment>/<mode>`; `/participant/<id>` of a participant already
in stays open). Other apps name their own entry paths.

The block sits between two marker comments in the site file, so an update that rewrites the
site carries it over (`carry`), and turning it off removes exactly those lines.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import Remedy, ValidationError

BEGIN = "\t# labdeploy maintenance: on"
END = "\t# labdeploy maintenance: end"
MATCHER = "@labdeploy_arrivals"
DALLINGER_ARRIVALS = r"^/(ad|consent)(/.*)?$|^/participant/[^/]+/[^/]+/[^/]+/[^/]+/?$"
DEFAULT_MESSAGE = ("This study is being updated right now. Please come back in a few minutes: "
                   "if you had already started, your progress is kept.")
MAX_PATHS = 20
MAX_MESSAGE = 2000
_PATH_RE = re.compile(r"/[A-Za-z0-9._~/-]{0,200}\*?")
_BLOCK_RE = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END) + r"\n", re.S)


@dataclass(frozen=True)
class Maintenance:
    paths: tuple = ()         # entry paths of a non-Dallinger app ("/x" exact, "/x*" a prefix)
    message: str = DEFAULT_MESSAGE
    retry_after: int = 300    # seconds, told to browsers and crawlers


def check(paths: Optional[Sequence[str]], message: Optional[str], retry_after: int) -> Maintenance:
    """The researcher's settings, refused before anything reaches the server."""
    if isinstance(paths, str):
        paths = [paths]
    paths = tuple(paths or ())
    if len(paths) > MAX_PATHS or not all(isinstance(p, str) and _PATH_RE.fullmatch(p) for p in paths):
        raise ValidationError(f"The entry paths {list(paths)!r} can't be used.",
                              f"Give up to {MAX_PATHS} paths such as '/' or '/api/participants' (letters, digits, "
                              "'.', '_', '~', '-', '/'); end one with '*' to match everything under it.",
                              code="invalid.maintenance.paths")
    if message is None:
        message = DEFAULT_MESSAGE
    if not isinstance(message, str) or not message.strip() or len(message) > MAX_MESSAGE \
            or any(ord(c) < 32 and c not in "\n\t" for c in message):
        raise ValidationError("The maintenance message must be text of 1 to 2000 characters without control "
                              "characters.", "Write a short note for participants; line breaks are kept.",
                              code="invalid.maintenance.message")
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or not 1 <= retry_after <= 86400:
        raise ValidationError(f"retry_after={retry_after!r} is not a number of seconds between 1 and 86400.",
                              "Give e.g. retry_after=300.", code="invalid.maintenance.retry_after")
    return Maintenance(paths, message.strip(), retry_after)


def page(message: str) -> str:
    """The page as one Caddyfile string token: HTML-escaped, then nothing left that could end
    the token or be read as a placeholder or environment variable ({...}, {$...})."""
    text = html.escape(message, quote=True).replace("\n", "<br>")
    text = text.replace("\\", "&#92;").replace("{", "&#123;").replace("}", "&#125;").replace("\t", " ")
    body = ("<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport "
            "content='width=device-width,initial-scale=1'><title>Back soon</title>"
            "<body style='font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;"
            f"line-height:1.5'><h1>Back in a few minutes</h1><p>{text}</p></body></html>")
    assert not any(c in body for c in '"\\{}\n')
    return f'"{body}"'


def block(m: Maintenance, dallinger: bool) -> str:
    """The site lines: a matcher for new arrivals, their headers and the 503 page."""
    if m.paths:
        matcher = f"{MATCHER} path " + " ".join(m.paths)
    elif dallinger:
        matcher = f"{MATCHER} path_regexp {DALLINGER_ARRIVALS}"
    else:
        raise ValidationError("This app is not a Dallinger or PsyNet experiment, so labdeploy doesn't know which "
                              "requests are new arrivals.",
                              code="invalid.maintenance.paths", remedy=Remedy("maintenance.paths"))
    return "\n".join([
        BEGIN,
        f"\t{matcher}",
        f"\theader {MATCHER} Retry-After {int(m.retry_after)}",
        f"\theader {MATCHER} Cache-Control no-store",
        f'\theader {MATCHER} Content-Type "text/html; charset=utf-8"',
        f"\trespond {MATCHER} {page(m.message)} 503",
        END,
    ]) + "\n"


def is_on(site_text: Optional[str]) -> bool:
    return bool(site_text) and BEGIN in site_text


def without(site_text: str) -> str:
    return _BLOCK_RE.sub("", site_text)


def with_block(site_text: str, lines: str) -> str:
    """The site with `lines` right after its opening line (replacing a block already there)."""
    text = without(site_text)
    head, brace, rest = text.partition("{\n")
    if not brace:
        raise ValueError("the site file has no block written by labdeploy")
    return head + brace + lines + rest


def carry(old_site: Optional[str], new_site: str) -> str:
    """The new site with the old one's maintenance block, if it had one (an update keeps it on)."""
    m = _BLOCK_RE.search(old_site or "")
    return with_block(new_site, m.group(0)) if m else new_site
