"""A tiny real Dallinger experiment: a transmission chain of short greetings.

Each participant reads the greeting the previous participant wrote (the first one
reads the source's greeting) and writes their own. It follows the shape of Dallinger's
bartlett1932 demo, small enough to build and launch quickly in labdeploy's tests.
"""

from dallinger.config import get_config
from dallinger.experiment import Experiment
from dallinger.networks import Chain


class HelloChain(Experiment):
    """One chain of `num_participants` people passing a greeting along."""

    def __init__(self, session=None, no_configure=False):
        super().__init__(session, no_configure=no_configure)
        from . import models  # at run time, so every process maps GreetingSource once

        self.models = models
        self.experiment_repeats = 1
        self.initial_recruitment_size = 1

    @classmethod
    def extra_parameters(cls):
        get_config().register("num_participants", int)

    def configure(self):
        super().configure()
        self.num_participants = get_config().get("num_participants", 3)

    def setup(self):
        # Dallinger calls this at /launch; only the first call creates the chain.
        if not self.networks():
            super().setup()
            for net in self.networks():
                self.models.GreetingSource(network=net)

    def create_network(self):
        return Chain(max_size=self.num_participants)

    def add_node_to_network(self, node, network):
        network.add_node(node)
        parents = node.neighbors(direction="from")
        if parents:
            parents[0].transmit()
        node.receive()

    def recruit(self):
        if self.networks(full=False):
            self.recruiter.recruit(n=1)
        else:
            self.recruiter.close_recruitment()
