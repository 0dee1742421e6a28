"""The experiment's own node type (imported at run time, as Dallinger's demos do, so the
SQLAlchemy mapping is registered once)."""

from dallinger.nodes import Source


class GreetingSource(Source):
    """The first greeting in every chain."""

    __mapper_args__ = {"polymorphic_identity": "greeting_source"}

    def _contents(self):
        return "Hello from labdeploy!"
