"""One PsyNet participant driven over plain HTTP, making the requests a browser makes.

Learned from PsyNet 13.3's own front end (templates ad.html, consent.html, start.html,
timeline-page.html; scripts/psynet.js) and its ParticipantDriver: the entry link hands out an
identity (/ad), the ad page leads to /consent, the consent page to /start, whose script
creates the participant (POST /participant) and opens /timeline. Every timeline page carries
its state in <script id="psynet-template-data"> (participant id, page uuid); a click
submits `{participant_id, page_uuid, raw_answer, metadata}` as the `json` field of a
multipart POST to /response, and the browser loads /timeline again. The last page runs
Dallinger's `submitAssignment()`: POST /worker_complete, then /recruiter-exit.

No JavaScript runs here: what a page's buttons would send is read from its HTML.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import parse_qsl, urlsplit

import requests

_TEMPLATE_DATA = re.compile(r'<script id="psynet-template-data" type="application/json">\s*(.*?)\s*</script>', re.S)
_PUSH_BUTTON = re.compile(r'<button\s[^>]*class="btn push-button[^"]*"\s+id="([^"]+)"', re.S)


class JourneyError(AssertionError):
    pass


@dataclass
class Page:
    """One timeline page as the browser got it."""

    html: str
    data: dict  # psynet-template-data

    @property
    def uuid(self) -> str:
        return self.data["jsVars"]["pageUuid"]

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
        return "unknown"

    def text(self) -> str:
        """The page's main body as plain text (for assertions)."""
        body = self.html.split('id="main-body"', 1)[-1]
        body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S)
        return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


@dataclass
class Visit:
    """What one participant went through: every page and what was sent."""

    unique_id: str = ""
    participant_id: Optional[int] = None
    pages: list = field(default_factory=list)    # (kind, text, raw_answer)
    requests: list = field(default_factory=list)  # (method, path, status)


class Browser:
    """A requests session that reaches one app through Caddy by its host name."""

    def __init__(self, base_url: str, host: str, timeout: float = 60) -> None:
        self.base, self.timeout = base_url.rstrip("/"), timeout
        self.session = requests.Session()
        self.session.headers.update({"Host": host, "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) labdeploy-test"})
        self.visit = Visit()

    def request(self, method: str, path: str, expect: int = 200, **kw) -> requests.Response:
        kw.setdefault("allow_redirects", False)
        res = self.session.request(method, self.base + path, timeout=self.timeout, **kw)
        self.visit.requests.append((method, path.split("?", 1)[0], res.status_code))
        if res.status_code != expect:
            raise JourneyError(f"{method} {path}: HTTP {res.status_code} (expected {expect}): {res.text[:800]}")
        return res

    # ---------------------------------------------------------------- entry

    def enter(self, mode: str = "live") -> str:
        """The recruiter's link -> ad -> consent -> start -> a new participant. Returns its unique id."""
        first = self.request("GET", f"/ad?recruiter=generic&generate_tokens=1&mode={mode}", expect=302)
        ad_path = _local(first.headers["Location"])
        ad = self.request("GET", ad_path).text
        # ad.html: the "Begin" button opens url_for('consent') + the same query string.
        consent_path = _js_string(ad, r'let url = "([^"]+)";', "the ad page's link to the consent page")
        consent = self.request("GET", html.unescape(consent_path)).text
        start_path = _js_string(consent, r"window\.location='(/start\?[^']*)'", "the consent page's link to /start")
        self.request("GET", html.unescape(start_path))
        # start.html: POST /participant with the entry information (query minus mode) and a fingerprint.
        entry = {k: v for k, v in parse_qsl(urlsplit(html.unescape(start_path)).query) if k != "mode"}
        created = self.request("POST", "/participant", data={**entry, "fingerprint_hash": "labdeploy-test"}).json()
        self.visit.unique_id = created["participant"]["unique_id"]
        self.visit.participant_id = int(created["participant"]["id"])
        return self.visit.unique_id

    # ---------------------------------------------------------------- timeline

    def page(self) -> Page:
        res = self.request("GET", f"/timeline?unique_id={self.visit.unique_id}")
        m = _TEMPLATE_DATA.search(res.text)
        if not m:
            raise JourneyError(f"/timeline gave no psynet-template-data: {res.text[:800]}")
        page = Page(res.text, json.loads(m.group(1)))
        if page.data["flags"].get("dynamicallyUpdateProgressBarAndReward"):
            self.request("GET", f"/timeline/progress_and_reward?participantId={page.data['participantId']}")
        return page

    def submit(self, page: Page, raw_answer, seconds_on_page: float = 1.5) -> dict:
        """What psynet.nextPage(raw_answer) sends, as the multipart form the browser builds."""
        body = {
            "participant_id": page.data["participantId"], "page_uuid": page.uuid,
            "assignment_id": page.data["assignmentId"], "unique_id": page.data["uniqueId"],
            "raw_answer": raw_answer,
            "metadata": {"time_taken": seconds_on_page, "platform": "labdeploy-test",
                         "download_speed_megabits_per_sec": None, "event_log": []},
        }
        res = self.request("POST", "/response", files={"json": (None, json.dumps(body))}).json()
        if res.get("submission") != "approved":
            raise JourneyError(f"the response to {page.text()[:200]!r} was not approved: {res}")
        return res

    def complete(self, page: Page) -> None:
        """dallinger.submitAssignment(): tell Dallinger the work is done, then show the exit page."""
        pid = page.data["participantId"]
        done = self.request("POST", "/worker_complete", data={"participant_id": pid}).json()
        if done.get("status") != "success":
            raise JourneyError(f"/worker_complete: {done}")
        self.request("GET", f"/recruiter-exit?participant_id={pid}")

    def take_experiment(self, answer: Callable[[Page], object], max_pages: int = 50) -> Visit:
        """Every page until the assignment is submitted. `answer(page)` gives the raw answer
        for a page with push buttons (one of page.buttons)."""
        for _ in range(max_pages):
            page = self.page()
            kind = page.kind
            if kind == "submit":
                self.visit.pages.append((kind, page.text(), None))
                self.complete(page)
                return self.visit
            if kind == "consent":
                raw = True  # "I agree"
            elif kind == "buttons":
                raw = answer(page)
                if raw not in page.buttons:
                    raise JourneyError(f"{raw!r} is not a button of {page.text()[:200]!r} ({page.buttons})")
            elif kind == "next":
                raw = None  # an InfoPage's Next button submits the staged (empty) answer
            else:
                raise JourneyError(f"a page this browser cannot answer: {page.text()[:500]!r}")
            self.visit.pages.append((kind, page.text(), raw))
            self.submit(page, raw)
        raise JourneyError(f"no end after {max_pages} pages: {[p[:2] for p in self.visit.pages]}")


def _local(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + ("?" + parts.query if parts.query else "")


def _js_string(text: str, pattern: str, what: str) -> str:
    m = re.search(pattern, text)
    if not m:
        raise JourneyError(f"could not find {what}: {text[:800]}")
    return m.group(1)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
