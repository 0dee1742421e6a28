# pylint: disable=unused-import,abstract-method

# Sound symbolism ("bouba/kiki"): does a made-up word sound round or spiky? A static
# experiment: a fixed set of words (nodes), each rated once in random order, then two of them
# again as repeat trials; at the end the participant is told how consistent they were.
# Written for labdeploy's tests in the shape of PsyNet's own demos (see README.md).

import random

from markupsafe import Markup

import psynet.experiment
from psynet.consent import MainConsent
from psynet.modular_page import ModularPage, PushButtonControl
from psynet.page import InfoPage
from psynet.timeline import Timeline
from psynet.trial.static import StaticNode, StaticTrial, StaticTrialMaker
# The shape most people pick for each word; used for the performance reward.
EXPECTED = {"bouba": "round", "maluma": "round", "kiki": "spiky", "takete": "spiky"}

nodes = [StaticNode(definition={"word": word}) for word in EXPECTED]


class ShapeTrial(StaticTrial):
    time_estimate = 4

    def finalize_definition(self, definition, experiment, participant):
        # Counterbalance the button order per trial so position is no cue.
        definition["choices"] = random.sample(["round", "spiky"], 2)
        return definition

    def show_trial(self, experiment, participant):
        if self.is_repeat_trial:
            header = f"<h4>Repeated word {self.repeat_trial_index + 1} of {self.n_repeat_trials}</h4>"
        else:
            header = f"<h4 id='trial-position'>Word {self.position + 1}</h4>"
        return ModularPage(
            "shape_choice",
            Markup(
                f"""
                {header}
                <p id='word' style='font-size: 2em'>{self.definition['word']}</p>
                <p>Does this word sound <strong>round</strong> or <strong>spiky</strong>?</p>
                """
            ),
            PushButtonControl(
                choices=self.definition["choices"],
                labels=[choice.capitalize() for choice in self.definition["choices"]],
                arrange_vertically=False,
            ),
            time_estimate=self.time_estimate,
        )

    def score_answer(self, answer, definition):
        return 1.0 if answer == EXPECTED[definition["word"]] else 0.0

    def compute_performance_reward(self, score):
        # Half a cent for each answer that matches the usual association.
        return 0.005 * score


class ShapeTrialMaker(StaticTrialMaker):
    give_end_feedback_passed = True

    def performance_check(self, experiment, participant, participant_trials):
        # Consistency: how often a repeated word got the same answer as the first time.
        repeats = [trial for trial in participant_trials if trial.is_repeat_trial]
        if not repeats:
            return {"score": None, "passed": True}
        same = sum(trial.answer == trial.parent_trial.answer for trial in repeats)
        return {"score": same / len(repeats), "passed": True}

    def compute_performance_reward(self, score, passed):
        return 0.0 if score is None else 0.05 * score

    def get_end_feedback_passed_page(self, score):
        consistency = "not measured" if score is None else f"{100 * score:.0f}%"
        return InfoPage(
            Markup(
                "<h4>Thank you!</h4>"
                f"<p id='consistency'>You gave the same answer to the repeated words "
                f"<strong>{consistency}</strong> of the time.</p>"
            ),
            time_estimate=5,
        )


trial_maker = ShapeTrialMaker(
    id_="shapes",
    trial_class=ShapeTrial,
    nodes=nodes,
    expected_trials_per_participant=len(nodes),
    max_trials_per_participant=len(nodes),
    allow_repeated_nodes=False,
    balance_across_nodes=True,
    check_performance_at_end=True,
    recruit_mode="n_participants",
    target_n_participants=10,
    n_repeat_trials=2,
)


class Exp(psynet.experiment.Experiment):
    label = "Bouba/kiki static experiment"
    initial_recruitment_size = 1

    timeline = Timeline(
        MainConsent(),
        InfoPage(
            Markup(
                "<p>You will see a few made-up words, one at a time.</p>"
                "<p>For each word, click whether it sounds <strong>round</strong> or <strong>spiky</strong>. "
                "There are no right or wrong answers: go with your first impression.</p>"
            ),
            time_estimate=10,
        ),
        trial_maker,
    )
