"""The participant flows a rehearsal knows: Dallinger's standard participant routes, walked as
a browser walks them. Other apps describe their own (a list of requests, see load.Flow) or
give an async function of one simulated participant (load.Bot). So do PsyNet experiments:
their participants answer the pages of the experiment's own timeline, which these routes do
not cover (a PsyNet experiment without a flow is refused).
"""

from __future__ import annotations

from .load import Flow, Step

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
