"""Drive the deploy panel's buttons against the testbed: deploy, reveal, apps, tunnel,
update, destroy with confirmation, and a bad name shown in the panel."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import yaml

from labdeploy.app import apps
from labdeploy import export
from labdeploy.server import layout, locks, pooler
from labdeploy.widgets.deploy import MASK, DeployPanel
from deploy_support import destroy_if_deployed, prepare_local_stack

# The panels and notebooks drive the same core calls that run on both servers in the API tests;
# to keep the suite's time they run on one (the trixie server runs the PsyNet tests instead).
pytestmark = pytest.mark.servers("bookworm")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"
APP = "t-dep-panel"
TIMEOUT = 300


def click(panel, button) -> None:
    button.click()
    if panel.last_task is not None:
        panel.last_task.join(TIMEOUT)
        assert not panel.last_task.is_alive(), "the action did not finish"


def strings(widget) -> list[str]:
    out, todo = [], [widget]
    while todo:
        w = todo.pop()
        for attr in ("value", "description", "placeholder"):
            v = getattr(w, attr, None)
            if isinstance(v, str):
                out.append(v)
        todo.extend(getattr(w, "children", ()) or ())
    return out


@pytest.fixture
def panel(home, testbed, session_remote, monkeypatch):
    monkeypatch.setenv("LABDEPLOY_TESTBED", testbed["file"])
    prepare_local_stack(session_remote, testbed)
    destroy_if_deployed(session_remote, APP)
    p = DeployPanel(str(EXAMPLE), app=APP, server=session_remote, health_path="/health")
    yield p
    p.close()
    destroy_if_deployed(session_remote, APP)


def test_panel_deploys_reveals_lists_tunnels_updates_and_destroys(panel, testbed, tmp_path):
    # Fields come from labdeploy.demo.defaults() with LABDEPLOY_TESTBED set.
    assert panel.base_image_box.value == testbed["images"]["python"]

    click(panel, panel.deploy_button)
    assert panel.result is not None, panel.message.value
    assert set(panel.steps.states.values()) == {"done"}, panel.steps.states
    password = panel.result.dashboard_password.reveal()
    assert panel.result.url in panel.result_html.value and MASK in panel.result_html.value
    assert not any(password in s for s in strings(panel.widget))

    click(panel, panel.reveal_button)
    assert password in panel.result_html.value
    click(panel, panel.reveal_button)
    assert password not in panel.result_html.value

    click(panel, panel.apps_button)
    assert APP in panel.apps_html.value and "running" in panel.apps_html.value

    click(panel, panel.tunnel_button)
    assert panel.tunnel is not None and panel.tunnel.url in panel.tunnel_html.value
    port = panel.tunnel.local_port
    page = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": f"{APP}.localhost:{port}"}, timeout=15)
    assert "Colour naming study" in page.text
    click(panel, panel.close_tunnel_button)
    assert panel.tunnel is None

    click(panel, panel.update_button)
    assert "Updated" in panel.message.value, panel.message.value

    # Destroyed with its data kept, then deployed again: the panel asks what to do with the data.
    click(panel, panel.destroy_button)
    click(panel, panel.confirm_button)
    assert APP not in set(apps.apps(panel.remote())["app"])
    click(panel, panel.deploy_button)
    assert panel.data_row.layout.display == "" and "still holds data" in panel.message.value, panel.message.value
    click(panel, panel.reuse_button)
    assert "data reused" in panel.message.value, panel.message.value
    assert panel.data_row.layout.display == "none"

    click(panel, panel.destroy_button)  # first click only asks
    assert "Destroy" in panel.confirm_html.value
    assert APP in set(apps.apps(panel.remote())["app"])
    panel.remove_data_box.value = True
    export.export(APP, panel.remote(), save_to=tmp_path)  # destroying the data needs a fresh export
    click(panel, panel.confirm_button)
    assert "database and role" in panel.message.value, panel.message.value
    assert APP not in set(apps.apps(panel.remote())["app"])


def test_panel_shows_errors_with_hints(panel):
    panel.app_box.value = "Bad Name; rm -rf"
    click(panel, panel.deploy_button)
    assert "labdeploy-error" in panel.message.value and "What to do" in panel.message.value
    assert panel.steps.state("preflight") == "failed"

    panel.app_box.value = "t-dep-panel-none"
    click(panel, panel.update_button)
    assert "no deployed app" in panel.message.value

    click(panel, panel.cancel_button)  # cancelling with nothing pending is harmless
    click(panel, panel.confirm_button)  # confirming with nothing asked does nothing
    assert "Nothing to confirm" in panel.message.value


LOCKED_APP = "t-dep-panel-lock"


@pytest.fixture
def locked_panel(home, testbed, session_remote, monkeypatch):
    """A panel for an app whose deploy lock was left by a deploy from another laptop that was closed
    mid-deploy (the lock is taken for real on the server, with that laptop's name in it)."""
    monkeypatch.setenv("LABDEPLOY_TESTBED", testbed["file"])
    prepare_local_stack(session_remote, testbed)
    destroy_if_deployed(session_remote, LOCKED_APP)
    stale = locks.DeployLock(session_remote, LOCKED_APP)
    stale.info.host, stale.info.who = "t-closed-laptop", "bob@t-closed-laptop"
    stale.acquire()
    p = DeployPanel(str(EXAMPLE), app=LOCKED_APP, server=session_remote, health_path="/health")
    yield p
    p.close()
    stale.release()  # only its own token is removed: nothing if the panel broke it
    destroy_if_deployed(session_remote, LOCKED_APP)


def test_a_stale_lock_is_broken_from_the_panel_after_confirming_then_a_deploy_without_the_pooler_works(
        locked_panel, session_remote):
    panel, part = locked_panel, locked_panel.lock_part
    click(panel, panel.deploy_button)
    assert panel.result is None and "in progress" in panel.message.value, panel.message.value
    assert "Break the lock…" in panel.message.value  # the remedy names the button shown next to it
    assert part.break_button.layout.display == "" and "bob@t-closed-laptop" in part.html.value
    assert panel.deploy_button in panel._message_at.children[0].children  # the error: under the clicked button

    click(panel, part.break_button)  # first click only asks
    assert "Only safe when no deploy" in part.html.value
    assert locks.read_lock(session_remote, LOCKED_APP) is not None
    click(panel, part.confirm_button)
    assert "was broken" in panel.message.value, panel.message.value
    assert part.widget.children[-1] is panel.message  # and what breaking says: under the lock's row
    assert locks.read_lock(session_remote, LOCKED_APP) is None
    assert part.html.value == "" and part.widget.children[0].layout.display == "none"

    panel.more.pooler_box.value = "off"  # More options: straight to PostgreSQL
    click(panel, panel.deploy_button)
    assert panel.result is not None, panel.message.value
    assert panel.result.remembered["pooler"] == {"value": False, "from": "given"}
    doc = yaml.safe_load(session_remote.get_bytes(layout.app_compose(LOCKED_APP)))
    assert pooler.SERVICE not in doc["services"], sorted(doc["services"])
