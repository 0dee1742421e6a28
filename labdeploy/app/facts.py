"""What the server holds about an app before a deploy, read in one round trip: the stack's
settings, the app's deploy.json, compose file, Caddy site and secrets, whether the shared
services run. From them come the settings an update keeps (images, experiment id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import yaml

from ..commands import appstate, sections
from ..server import stack
from . import appcompose


SECTIONS = ("appdir", "stack", "state", "compose", "site", "secrets", "stackup", "end")


@dataclass
class AppFacts:
    settings: Optional[stack.StackSettings]
    state: Optional[dict]           # deploy.json: what runs now
    compose_text: Optional[str]
    site_text: Optional[str]
    secrets: dict
    secrets_text: Optional[str] = None  # as it was, to put back if an update rolls back
    stack_running: bool = False
    app_dir: bool = False  # ~/dallinger/<app> exists: deployed, or a first deploy that stopped half-way

    @property
    def deployed(self) -> bool:
        return self.state is not None


def parse(text: str) -> AppFacts:
    """The facts script's output as AppFacts (pure)."""
    s = sections.parse(text, names=SECTIONS)  # a file's own '@@' line can't start a section

    def js(body: str) -> Optional[dict]:
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            return None

    st = js(s.get("stack", ""))
    settings = stack.StackSettings.from_dict(st.get("settings", {})) if st else None
    return AppFacts(settings=settings, state=js(s.get("state", "")),
                    compose_text=s.get("compose") or None, site_text=s.get("site") or None,
                    secrets=appcompose.parse_env(s.get("secrets", "")), secrets_text=s.get("secrets") or None,
                    stack_running=s.get("stackup", "").count(" true") == 2, app_dir="appdir" in s)


def gather(remote, app: str) -> AppFacts:
    return parse(remote.run(appstate.facts(app), check=False).stdout)


def remembered(name: str, given: Optional[str], facts: AppFacts, default: str) -> dict:
    """A setting's value and where it came from: given now, the app's last deploy, the
    server's stack settings, or labdeploy's default."""
    if given:
        return {"value": given, "from": "given"}
    if facts.state and facts.state.get(name):
        return {"value": str(facts.state[name]), "from": "app"}
    if facts.settings is not None and getattr(facts.settings, name, ""):
        return {"value": getattr(facts.settings, name), "from": "server"}
    return {"value": default, "from": "default"}


def experiment_id(facts: AppFacts) -> Optional[str]:
    """The experiment id the app runs with now (deploy.json, else its compose file)."""
    if facts.state and facts.state.get("experiment_id"):
        return str(facts.state["experiment_id"])
    try:
        env = yaml.safe_load(facts.compose_text or "")["services"]["web"]["environment"]
        return str(env.get("DALLINGER_UID") or "") or None
    except (TypeError, KeyError, AttributeError, yaml.YAMLError):
        return None
