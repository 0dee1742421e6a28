"""The PsyNet participant flow's reading of pages, on pages captured from a real run: one
participant of examples/psynet-static walked through its rehearsal copy's configuration
(hotair, sandbox) on the testbed (tests/data/psynet-static: the entry pages, a timeline page of
each kind, PsyNet's answers). Then the whole flow against a small server on this computer's
loopback that replays those pages in PsyNet's order, so the flow's requests, answers and
participant counts are checked without a server (the testbed run is tests/test_rehearsal.py).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from labdeploy.rehearsal import flows, load, psynetpages as pages
from labdeploy.rehearsal.rehearse import FlowNotWalked, refuse_unwalked
from local_http import LocalHTTP

DATA = Path(__file__).resolve().parent / "data" / "psynet-static"
ENTRY = "recruiter=hotair&hitId=lbot-cap0&assignmentId=lbot-cap0-0-0-a&workerId=lbot-cap0-0-0&mode=sandbox"


def captured(name: str) -> str:
    path = DATA / name
    return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()


def page(kind: str) -> pages.Page:
    return pages.Page.parse(captured(f"timeline-{kind}.html.gz"))


def word_page_with(widget: str) -> str:
    """The captured word page with `widget` in place of its push buttons (a page of another kind)."""
    html = captured("timeline-buttons.html.gz")
    first = re.search(r'<button[^>]*push-button', html).start()
    return re.sub(r'<button[^>]*push-button.*?</button>', "", html[:first] + widget + html[first:], flags=re.S)


def test_the_entry_pages_lead_to_start_and_the_participant_is_created_with_the_bots_identity():
    assert pages.consent_link(captured("ad.html.gz")) == "/consent?" + ENTRY
    start = pages.start_link(captured("consent.html.gz"))
    assert start == "/start?" + ENTRY
    # start.html posts its query minus the mode, and a fingerprint.
    assert pages.entry_information(start, "lbot-cap0-0-0") == {
        "recruiter": "hotair", "hitId": "lbot-cap0", "assignmentId": "lbot-cap0-0-0-a", "workerId": "lbot-cap0-0-0",
        "fingerprint_hash": "lbot-cap0-0-0"}
    created = json.loads(captured("participant.json"))["participant"]
    assert created["unique_id"] == "lbot-cap0-0-0:lbot-cap0-0-0-a" and created["recruiter_id"] == "hotair"
    with pytest.raises(pages.PageError, match="no link to the consent page"):
        pages.consent_link("<html>Sorry, the experiment is full</html>")
    with pytest.raises(pages.PageError, match="no link to /start"):
        pages.start_link("window.location='https://elsewhere.example/start?x'")


def test_each_timeline_page_is_read_and_answered_as_psynets_front_end_answers_it():
    rng = random.Random(0)
    consent, info, buttons, finish, submit = (page(k) for k in ("consent", "next", "buttons", "finish", "submit"))
    assert [p.kind for p in (consent, info, buttons, finish, submit)] == ["consent", "next", "buttons", "buttons",
                                                                           "submit"]
    assert len({p.uuid for p in (consent, info, buttons, finish, submit)}) == 5
    assert {p.participant_id for p in (consent, info, buttons)} == {1}
    assert sorted(buttons.buttons) == ["round", "spiky"] and finish.buttons == ["Finish"]
    assert "Does this word sound round or spiky" in buttons.text() and "<" not in buttons.text()
    assert pages.answer(consent, rng) is True and pages.answer(info, rng) is None
    assert {pages.answer(buttons, rng) for _ in range(20)} == {"round", "spiky"}  # a choice at random
    form = pages.response_form(buttons, "round", 1.23456)
    assert set(form) == {"json"}
    sent = json.loads(form["json"])
    assert sent["page_uuid"] == buttons.uuid and sent["participant_id"] == 1 and sent["raw_answer"] == "round"
    assert sent["unique_id"] == "lbot-cap0-0-0:lbot-cap0-0-0-a" and sent["metadata"]["time_taken"] == 1.235
    assert pages.approved(json.loads(captured("response.json")))
    assert not pages.approved({"submission": "rejected"}) and not pages.approved(None)
    assert not buttons.progress_polled


def test_a_page_the_bot_cannot_answer_says_what_it_is_and_a_page_not_psynets_is_an_error():
    for widget, kind in (('<textarea id="text-input"></textarea>', "free text"),
                         ('<input type="range" min="0" max="1">', "slider"), ('<audio src="/a.wav"></audio>', "audio"),
                         ("<p>Please wait</p>", "unknown")):
        odd = pages.Page.parse(word_page_with(widget))
        assert odd.kind == kind
        with pytest.raises(pages.Unanswerable) as e:
            pages.answer(odd, random.Random(0))
        assert e.value.kind == kind
    with pytest.raises(pages.PageError, match="no psynet-template-data"):
        pages.Page.parse("<html><body>Internal Server Error</body></html>")
    with pytest.raises(pages.PageError, match="not PsyNet's"):
        pages.Page.parse('<script id="psynet-template-data" type="application/json">{"x": 1}</script>')


# ------------------------------------------------------------------ the flow against the replayed pages

class ReplayServer(LocalHTTP):
    """Serves the captured pages in PsyNet's order on 127.0.0.1 (a thread of its own): each
    participant's /timeline gives the next page after each answer to /response. `timeline`
    names the captured pages in order (or pages of `made`); the last one is served until the
    flow stops."""

    def __init__(self, timeline: list, made: dict) -> None:
        self.timeline, self.made, self.requests, self.at = timeline, made, [], {}
        super().__init__()

    def answer(self, method: str, target: str, body: bytes, conn: dict) -> tuple[int, str]:
        path, query = urlsplit(target).path, parse_qs(urlsplit(target).query)
        if path in ("/ad", "/consent"):
            return 200, captured(f"{path[1:]}.html.gz").replace(ENTRY, urlsplit(target).query)
        if path == "/start":
            return 200, "<html>Starting experiment...</html>"
        if method == "POST" and path == "/participant":
            form = parse_qs(body.decode())
            unique = f"{form['workerId'][0]}:{form['assignmentId'][0]}"
            self.at[unique] = 0
            return 200, json.dumps({"status": "success", "participant": {"id": len(self.at), "unique_id": unique}})
        if path == "/timeline":
            conn["unique"] = query["unique_id"][0]  # the captured pages all name one participant: each
            name = self.timeline[min(self.at[conn["unique"]], len(self.timeline) - 1)]  # bot has a connection
            return 200, self.made[name] if name in self.made else captured(f"timeline-{name}.html.gz")
        if method == "POST" and path == "/response":
            assert json.loads(parse_qs(body.decode())["json"][0])["page_uuid"]
            self.at[conn["unique"]] += 1
            return 200, captured("response.json")
        if path in ("/worker_complete", "/recruiter-exit"):
            return 200, captured("worker_complete.json")
        return 404, "not found"

    async def respond(self, method, target, headers, body, conn) -> tuple[int, bytes]:
        self.requests.append((method, urlsplit(target).path))
        status, text = self.answer(method, target, body, conn)
        return status, text.encode()


def _walk(timeline: list, made: dict = {}, seconds: float = 2.0,  # noqa: B006 - never changed
          participants: int = 2) -> tuple[load.LoadRun, ReplayServer]:
    server = ReplayServer(timeline, made)
    try:
        run = load.LoadRun(load.Target("127.0.0.1", server.port, "study.localhost"), flows.psynet, [participants],
                           seconds, think=0.01)
        with run:
            run.join(30)
    finally:
        server.close()
    return run, server


def test_the_flow_walks_the_entry_and_every_page_to_the_assignments_end():
    timeline = ["consent", "next", "buttons", "buttons", "next", "finish", "submit"]
    run, server = _walk(timeline)
    out = run.outcomes
    assert len(out) >= 2 and set(out["outcome"]) == {"completed"}, out
    assert out["worker_id"].str.startswith(load.BOT_PREFIX).all()
    hits = run.hits
    assert hits["ok"].all(), hits[~hits["ok"]]
    # One participant's round, in a browser's order: 4 entry requests, a timeline page and an
    # answer for each of the 6 pages before the submit page, the submit page, 2 to complete.
    first = hits[(hits["bot"] == 0)].head(4 + 2 * 6 + 1 + 2)["route"].tolist()
    assert first == (["GET /ad", "GET /consent", "GET /start", "POST /participant"]
                     + ["GET /timeline", "POST /response"] * 6 + ["GET /timeline", "POST /worker_complete",
                                                                  "GET /recruiter-exit"])
    assert ("POST", "/response") in server.requests


def test_a_page_it_cannot_answer_ends_the_participant_early_and_if_none_got_through_the_rehearsal_says_so():
    # The captured experiment has no page the bot cannot answer: its word page with a text box
    # in place of the buttons stands for one.
    made = {"text": word_page_with("<textarea></textarea>")}
    run, _ = _walk(["consent", "next", "text"], made)
    out = run.outcomes
    assert set(out["outcome"]) == {"ended early"} and set(out["reason"]) == {"cannot answer a free text page"}
    assert run.hits["ok"].all()  # the server did nothing wrong: no error in the latency curve
    refuse_unwalked(run, "study")  # two pages were answered: the flow did walk some of the experiment
    run, _ = _walk(["text"], made)
    with pytest.raises(FlowNotWalked, match="could not walk study's pages: cannot answer a free text page") as e:
        refuse_unwalked(run, "study")
    assert "Describe the flow" in e.value.hint
