"""What a PsyNet participant's browser reads from the pages it gets, without running their
JavaScript: the links of the entry pages, a timeline page's state and what answering it sends.

Learned from PsyNet 13's own front end (templates ad.html, consent.html, start.html,
timeline-page.html; psynet.js): /ad links to /consent, whose "I agree" opens /start, whose
script creates the participant (POST /participant with the entry query minus `mode`) and
opens /timeline. Every timeline page carries its state in <script id="psynet-template-data">
(participant id, page uuid); a click sends `{participant_id, page_uuid, raw_answer,
metadata}` as the `json` field of a POST to /response. The last page runs Dallinger's
`submitAssignment()`: POST /worker_complete.

Only pages whose answer is plain from their HTML are answered, as PsyNet's own bots answer
them (`get_bot_response`): a push button (one of the choices, at random), an info page's
Next, a consent. Any other page (free text, sliders, audio, a wait page...) is `Unanswerable`:
the simulated participant stops there and the rehearsal counts it as ended early, with the
page's kind, rather than posting an answer the experiment would reject or misread.
"""

from __future__ import annotations

import html
import json
import random
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import parse_qsl, urlsplit

_TEMPLATE_DATA = re.compile(r'<script id="psynet-template-data" type="application/json">\s*(.*?)\s*</script>', re.S)
_PUSH_BUTTON = re.compile(r'<button\s[^>]*class="btn push-button[^"]*"\s+id="([^"]+)"', re.S)
_AD_LINK = re.compile(r'let url = "(/consent[^"]*)";')
_CONSENT_LINK = re.compile(r"window\.location='(/start\?[^']*)'")
# What makes a page one the simulated participant cannot answer, by what its main body holds
# (first match names it in the counts).
_UNANSWERABLE = (("<textarea", "free text"), ('type="text"', "text input"), ('type="number"', "number input"),
                 ('type="range"', "slider"), ("<audio", "audio"), ("<video", "video"), ("<canvas", "canvas"),
                 ("<select", "drop-down"), ('type="checkbox"', "checkbox"), ('type="radio"', "radio button"))


class PageError(ValueError):
    """A page that is not what PsyNet's front end serves at that point of the flow."""


class Unanswerable(Exception):
    """A timeline page the simulated participant cannot answer sensibly (`kind` says what)."""

    def __init__(self, kind: str, text: str = "") -> None:
        super().__init__(f"a page it cannot answer ({kind}): {text[:120]}")
        self.kind = kind


def _local(link: str) -> str:
    """A link as a path on the app (an absolute URL's scheme and host dropped)."""
    parts = urlsplit(html.unescape(link))
    path = parts.path + ("?" + parts.query if parts.query else "")
    if not path.startswith("/") or path.startswith("//"):
        raise PageError(f"{link!r} is not a path on the app")
    return path


def consent_link(ad_html: str) -> str:
    """The ad page's "Begin" link to the consent page."""
    m = _AD_LINK.search(ad_html)
    if not m:
        raise PageError("the ad page has no link to the consent page")
    return _local(m.group(1))


def start_link(consent_html: str) -> str:
    """The consent page's "I agree" link to /start (which creates the participant)."""
    m = _CONSENT_LINK.search(consent_html)
    if not m:
        raise PageError("the consent page has no link to /start")
    return _local(m.group(1))


def entry_information(start_path: str, fingerprint: str) -> dict:
    """What start.html posts to /participant: its query minus `mode`, and a fingerprint."""
    entry = {k: v for k, v in parse_qsl(urlsplit(start_path).query) if k != "mode"}
    return {**entry, "fingerprint_hash": fingerprint}


@dataclass
class Page:
    """One timeline page as the browser got it."""

    html: str
    data: dict  # psynet-template-data

    @classmethod
    def parse(cls, text: str) -> "Page":
        m = _TEMPLATE_DATA.search(text)
        if not m:
            raise PageError("the timeline page has no psynet-template-data")
        try:
            data = json.loads(m.group(1))
            data["jsVars"]["pageUuid"], data["participantId"]  # noqa: B018 - both must be there
        except (ValueError, KeyError, TypeError) as exc:
            raise PageError(f"the timeline page's psynet-template-data is not PsyNet's: {exc}") from exc
        return cls(text, data)

    @property
    def uuid(self) -> str:
        return self.data["jsVars"]["pageUuid"]

    @property
    def participant_id(self):
        return self.data["participantId"]

    @property
    def progress_polled(self) -> bool:
        """The page asks for the progress bar and reward (a request a browser makes)."""
        return bool((self.data.get("flags") or {}).get("dynamicallyUpdateProgressBarAndReward"))

    @property
    def buttons(self) -> list[str]:
        """The ids of its push buttons (a click sends the id as the raw answer)."""
        return [html.unescape(b) for b in _PUSH_BUTTON.findall(self.html)]

    @property
    def kind(self) -> str:
        if 'onClick="psynet.nextPage(true);"' in self.html:
            return "consent"
        if "dallinger.submitAssignment()" in self.html:
            return "submit"  # ExecuteFrontEndJS: the page's script completes the assignment
        if self.buttons:
            return "buttons"
        if 'id="next-button"' in self.html:
            return "next"
        body = self.main_body
        return next((kind for marker, kind in _UNANSWERABLE if marker in body), "unknown")

    @property
    def main_body(self) -> str:
        """The page's own content (not the modals every page carries)."""
        body = self.html.split('id="main-body"', 1)[-1].split(">", 1)[-1]  # after the main body's own tag
        before, listener, _ = body.partition('id="psynet-event-listener"')
        return before.rsplit("<", 1)[0] if listener else before  # up to the listener's tag

    def text(self) -> str:
        """The page's main body as plain text."""
        body = re.sub(r"<(script|style)\b.*?</\1>", " ", self.main_body, flags=re.S)
        return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


def answer(page: Page, rng: random.Random) -> Any:
    """The raw answer a click sends, as PsyNet's bots choose it: True for a consent, a push
    button's id at random, None for an info page's Next. Raises Unanswerable otherwise (the
    submit page is no answer: it is the end, see `Page.kind`)."""
    kind = page.kind
    if kind == "consent":
        return True
    if kind == "buttons":
        return rng.choice(page.buttons)
    if kind == "next":
        return None
    raise Unanswerable(kind, page.text())


def response_form(page: Page, raw_answer: Any, seconds_on_page: float) -> dict:
    """The form psynet.nextPage(raw_answer) posts to /response (its `json` field)."""
    body = {
        "participant_id": page.participant_id, "page_uuid": page.uuid,
        "assignment_id": page.data.get("assignmentId"), "unique_id": page.data.get("uniqueId"),
        "raw_answer": raw_answer,
        "metadata": {"time_taken": round(seconds_on_page, 3), "platform": "labdeploy-rehearsal",
                     "download_speed_megabits_per_sec": None, "event_log": []},
    }
    return {"json": json.dumps(body)}


def approved(answer_json: Optional[dict]) -> bool:
    """PsyNet accepted the response (a failed validation or an error says otherwise)."""
    return isinstance(answer_json, dict) and answer_json.get("submission") == "approved"
