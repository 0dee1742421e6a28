"""The deploy panel's "More options": settings a deploy rarely needs (the app's own PgBouncer,
its image), folded away in an Accordion so the form stays short.

`more_options()` builds the section; `options_of(section)` reads it as DeployOptions keywords
(left empty: not given, so the app's remembered choice holds).
"""

from __future__ import annotations

from dataclasses import dataclass

import ipywidgets as W

from .common import choice_field, text_field

# The pooler choice as the API takes it: None keeps what the app had (a new app gets one).
POOLER_CHOICES = (("as before (a new app gets one)", "auto"), ("on: connections go through PgBouncer", "on"),
                  ("off: straight to PostgreSQL", "off"))
_POOLER = {"auto": None, "on": True, "off": False}


@dataclass
class MoreOptions:
    widget: W.Accordion
    pooler_box: W.Dropdown
    pgbouncer_image_box: W.Text


def more_options(pgbouncer_image: str = "") -> MoreOptions:
    """The collapsed "More options" section of the deploy panel."""
    pooler_box = choice_field(W.Dropdown(options=list(POOLER_CHOICES), value="auto", description="Pooler"))
    pooler_box.add_class("labdeploy-deploy-pooler")
    image_box = text_field("PgBouncer image", pgbouncer_image,
                           "empty: as last time, or the server's choice")
    image_box.add_class("labdeploy-deploy-pgbouncer-image")
    body = W.VBox([pooler_box, image_box], layout=W.Layout(overflow="visible"))
    section = W.Accordion(children=[body], selected_index=None, layout=W.Layout(width="auto", max_width="660px"))
    section.set_title(0, "More options")
    section.add_class("labdeploy-deploy-more")
    return MoreOptions(section, pooler_box, image_box)


def options_of(more: MoreOptions) -> dict:
    """The section as DeployOptions keywords; what is left as it is gives none."""
    given = {"pooler": _POOLER[more.pooler_box.value], "pgbouncer_image": more.pgbouncer_image_box.value.strip()}
    return {k: v for k, v in given.items() if v not in (None, "")}
