"""The participant flows a rehearsal knows, walked as a browser walks them: Dallinger's
standard participant routes, and a PsyNet experiment's entry pages and timeline (each page
read and answered as PsyNet's front end answers it, see psynetpages). Other apps describe
their own (a list of requests, see load.Flow) or give an async function of one simulated
participant (load.Bot).
"""

from __future__ import annotations

import time
from typing import Optional

from . import psynetpages as pages
from .load import Answer, Bot, Flow, Step

MAX_PAGES = 500  # a timeline longer than this is taken for one that loops
# How a PsyNet round's reason starts when the pages, not the server, stopped it.
PAGE_REASONS = ("cannot answer", "not PsyNet's page")

# The routes Dallinger's own front end (dallinger2.js) calls, in a participant's order. The
# worker id carries the bot prefix and the recruiter is hotair, so a simulated participant is
# never taken for a recruited one. A full network answers 403 to a new node: that is the
# experiment turning the participant away, not the server failing, so it ends the round quietly.
DALLINGER_STEPS = (
    Step("GET", "/ad?recruiter=hotair&assignmentId={assignment_id}&hitId={hit_id}&workerId={worker_id}"
                "&mode=sandbox", name="GET /ad"),
    Step("POST", "/participant/{worker_id}/{hit_id}/{assignment_id}/sandbox?recruiter=hotair"
                 "&fingerprint_hash={worker_id}", save={"participant_id": "participant.id"},
         name="POST /participant"),
    Step("POST", "/node/{participant_id}", save={"node_id": "node.id"}, expect=(403,), name="POST /node"),
    Step("GET", "/node/{node_id}/received_infos", name="GET /node/infos"),
    Step("POST", "/info/{node_id}", data={"contents": "rehearsal {worker_id}", "info_type": "Info"},
         name="POST /info"),
    Step("POST", "/question/{participant_id}", data={"question": "rehearsal", "number": "1",
                                                     "response": "{{\"engagement\": 5}}"}, name="POST /question"),
    Step("GET", "/worker_complete?participant_id={participant_id}", name="GET /worker_complete"),
)


def dallinger(think: float = 1.0) -> Flow:
    """A Dallinger participant: ad, new participant, a node, the infos it received, an info
    of its own, the questionnaire, worker_complete."""
    return Flow(DALLINGER_STEPS, think, name="dallinger")


# ------------------------------------------------------------------ PsyNet

async def _page_request(bot: Bot, method: str, path: str, route: str, **kw) -> Optional[Answer]:
    """A request of the PsyNet flow; None (the round over, counted failed) unless it succeeded."""
    answer = await bot.request(method, path, route=route, **kw)
    if not answer.ok:
        bot.finish("failed", f"{route}: {answer.error or answer.status}")
        return None
    return answer


async def _psynet_entry(bot: Bot) -> Optional[str]:
    """The entry link (hotair, with the bot's identity) -> ad -> consent -> start -> a new
    participant; returns its unique id."""
    v = bot.values
    ad = await _page_request(bot, "GET", f"/ad?recruiter=hotair&hitId={v['hit_id']}&assignmentId={v['assignment_id']}"
                                         f"&workerId={v['worker_id']}&mode=sandbox", "GET /ad")
    if ad is None:
        return None
    await bot.think()
    consent = await _page_request(bot, "GET", pages.consent_link(ad.text), "GET /consent")
    if consent is None:
        return None
    await bot.think()
    start = pages.start_link(consent.text)
    if await _page_request(bot, "GET", start, "GET /start") is None:
        return None
    created = await _page_request(bot, "POST", "/participant", "POST /participant",
                                  data=pages.entry_information(start, bot.worker_id))
    if created is None:
        return None
    try:
        return str(created.json()["participant"]["unique_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise pages.PageError(f"POST /participant gave no participant: {created.text[:200]}") from exc


async def _psynet_complete(bot: Bot, page: pages.Page) -> None:
    """dallinger.submitAssignment(): the assignment done, then the exit page."""
    pid = page.participant_id
    done = await _page_request(bot, "POST", "/worker_complete", "POST /worker_complete", data={"participant_id": pid})
    if done is not None and await _page_request(bot, "GET", f"/recruiter-exit?participant_id={pid}",
                                                "GET /recruiter-exit") is not None:
        bot.finish("completed")


async def psynet(bot: Bot) -> None:
    """One PsyNet participant: the entry pages, then every timeline page, each answered after
    a think time (the rehearsal's `think`), until the timeline submits the assignment. A page it cannot answer ends the
    round early (counted, with the page's kind); a page that is not PsyNet's is an error."""
    try:
        unique_id = await _psynet_entry(bot)
        if unique_id is None:
            return
        for _ in range(MAX_PAGES):
            got = await _page_request(bot, "GET", f"/timeline?unique_id={unique_id}", "GET /timeline")
            if got is None:
                return
            page = pages.Page.parse(got.text)
            if page.progress_polled and await _page_request(
                    bot, "GET", f"/timeline/progress_and_reward?participantId={page.participant_id}",
                    "GET /timeline/progress_and_reward") is None:
                return
            if page.kind == "submit":
                await _psynet_complete(bot, page)
                return
            try:
                raw = pages.answer(page, bot.rng)
            except pages.Unanswerable as exc:
                bot.finish("ended early", f"cannot answer a {exc.kind} page")
                return
            shown = time.monotonic()
            await bot.think()
            sent = await _page_request(bot, "POST", "/response", "POST /response",
                                       data=pages.response_form(page, raw, time.monotonic() - shown))
            if sent is None:
                return
            if not pages.approved(_json(sent)):
                bot.finish("failed", f"POST /response not approved: {sent.text[:150]}")
                return
        bot.finish("ended early", f"no end after {MAX_PAGES} pages")
    except pages.PageError as exc:
        bot.finish("failed", f"not PsyNet's page: {exc}")


def _json(answer: Answer):
    try:
        return answer.json()
    except ValueError:
        return None
