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

import time
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import urlsplit

import requests

# How a page is read (its state, buttons, kind, what answering it posts) is the rehearsal's own
# reading, labdeploy.rehearsal.psynetpages: these tests walk real PsyNet pages with it.
from labdeploy.rehearsal import psynetpages
from labdeploy.rehearsal.psynetpages import Page


class JourneyError(AssertionError):
    pass


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
        consent = self.request("GET", _read(psynetpages.consent_link, ad)).text
        start_path = _read(psynetpages.start_link, consent)
        self.request("GET", start_path)
        entry = psynetpages.entry_information(start_path, "labdeploy-test")
        created = self.request("POST", "/participant", data=entry).json()
        self.visit.unique_id = created["participant"]["unique_id"]
        self.visit.participant_id = int(created["participant"]["id"])
        return self.visit.unique_id

    # ---------------------------------------------------------------- timeline

    def page(self) -> Page:
        res = self.request("GET", f"/timeline?unique_id={self.visit.unique_id}")
        page = _read(Page.parse, res.text)
        if page.progress_polled:
            self.request("GET", f"/timeline/progress_and_reward?participantId={page.participant_id}")
        return page

    def submit(self, page: Page, raw_answer, seconds_on_page: float = 1.5) -> dict:
        """What psynet.nextPage(raw_answer) sends, as the multipart form the browser builds."""
        form = psynetpages.response_form(page, raw_answer, seconds_on_page)
        res = self.request("POST", "/response", files={"json": (None, form["json"])}).json()
        if not psynetpages.approved(res):
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


def _read(reader: Callable, text: str):
    """What `reader` reads from a page, or the test's error with the page's start."""
    try:
        return reader(text)
    except psynetpages.PageError as exc:
        raise JourneyError(f"{exc}: {text[:800]}") from exc


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
