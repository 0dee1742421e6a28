"""A one-page real PsyNet 13 experiment, used by labdeploy's tests: it shows a greeting
and ends. Small on purpose: what it proves is that PsyNet's own machinery (preparation,
launch, its ~30 tables) works in labdeploy's image and deploy."""

import psynet.experiment
from psynet.consent import NoConsent
from psynet.page import InfoPage
from psynet.timeline import Timeline


class Exp(psynet.experiment.Experiment):
    label = "labdeploy PsyNet hello"

    timeline = Timeline(
        NoConsent(),
        InfoPage("Hello from labdeploy!", time_estimate=5),
    )
