"""Capacity rehearsal: simulated participants against a side-by-side copy of an experiment,
the server measured meanwhile, a cost per participant and a recommended size.

    from labdeploy import rehearsal
    r = rehearsal.rehearse("my-study", "lab", experiment="my-experiment/", participants=40, ramp=4, duration=120)
    r.sentence; r.latency; r.resources; r.costs; r.plot()

`load` is the generator (flows, targets), `flows` the participant flows it knows,
`analysis` turns measurements into the answer, `rehearse` runs the whole rehearsal.
"""

from __future__ import annotations

from .load import BOT_PREFIX, Bot, Flow, FlowError, LoadRun, Step, Target  # noqa: F401
from .flows import dallinger, psynet  # noqa: F401
from .rehearse import (FlowNotWalked, Rehearsal, RehearsalRefused, Running, Stop, check, plan_levels,  # noqa: F401
                       rehearse, start)

__all__ = ["BOT_PREFIX", "Bot", "Flow", "FlowError", "LoadRun", "Step", "Target", "dallinger", "psynet",
           "FlowNotWalked", "Rehearsal", "RehearsalRefused", "Running", "Stop", "check", "plan_levels", "rehearse", "start"]
