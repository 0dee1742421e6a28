"""The registry panel, clicked like a researcher would, against the testbed's registry and server."""

from __future__ import annotations

import html
import time
import uuid

import ipywidgets as W
import pytest

from labdeploy.experiment import dallingerconfig
from labdeploy.images import registry
from labdeploy.widgets.registry import RegistryPanel

# The panels and notebooks drive the same core calls that run on both servers in the API tests;
# to keep the suite's time they run on one (the trixie server runs the PsyNet tests instead).
pytestmark = pytest.mark.servers("bookworm")


@pytest.fixture(autouse=True)
def clean_session():
    registry.forget_session()
    yield
    registry.forget_session()


def all_widget_states(widget) -> str:
    """Every value the panel's widgets hold (what a saved notebook would keep)."""
    seen, out, stack = set(), [], [widget]
    while stack:
        w = stack.pop()
        if id(w) in seen:
            continue
        seen.add(id(w))
        out.append(repr(w.get_state()))
        stack.extend(c for c in getattr(w, "children", ()) if isinstance(c, W.Widget))
    return "\n".join(out)


def panel_for(testbed, remote=None, docker_config=None) -> RegistryPanel:
    r = testbed["registry"]
    return RegistryPanel(remote, registry_address=r["address"], user=r["user"], server_docker_config=docker_config)


def finish(panel):
    """Wait for the click's work and what it started after it (the logins read again)."""
    task = None
    while panel.last_task is not task:
        task = panel.last_task
        task.join(120)
        assert not task.is_alive()


def shown_state(panel, *words, timeout=60) -> str:
    """The login state the panel shows, once it has all `words` (it is read again after a login)."""
    deadline = time.monotonic() + timeout
    while not all(w in panel.login_html.value for w in words):
        assert time.monotonic() < deadline, (words, panel.login_html.value, panel.message.value)
        time.sleep(0.1)
    return html.unescape(panel.login_html.value)


def test_login_here_and_on_server(testbed, remote, home):
    private = f"dallinger/.build/t-img-panel-{uuid.uuid4().hex[:8]}"
    panel = panel_for(testbed, remote, private)
    panel.password_box.value = testbed["registry"]["password"]
    panel.login_here_button.click()
    assert panel.password_box.value == ""  # read once, cleared at once
    finish(panel)
    assert panel.steps.state("log in here") == "done"
    assert "labdeploy-ok" in panel.message.value and "unencrypted" in panel.message.value
    assert panel.credentials is not None

    # The server login reuses the kept credentials when the box is empty. (It goes to a private
    # DOCKER_CONFIG folder so the shared test user's ~/.docker is left alone.)
    try:
        shown_state(panel, "This computer: logged in (kept for this session)", "not logged in.")
        panel.login_server_button.click()
        finish(panel)
        assert panel.steps.state("log in on the server") == "done", panel.message.value
        assert "is logged in to" in panel.message.value
        assert testbed["registry"]["address"] in remote.get_bytes(f"{private}/config.json").decode()
        # What the panel shows is read again from both machines after the login.
        assert f"Server {remote.label}: logged in." in shown_state(panel, ": logged in.</")
    finally:
        remote.run(["rm", "-rf", "--", private], check=False)
    assert testbed["registry"]["password"] not in all_widget_states(panel.widget)


def test_wrong_password_shown_with_hint(testbed, remote, home):
    panel = panel_for(testbed, remote)
    sentinel = f"SENTINEL-{uuid.uuid4().hex}"
    panel.password_box.value = sentinel
    panel.login_here_button.click()
    finish(panel)
    assert panel.steps.state("log in here") == "failed"
    assert "labdeploy-error" in panel.message.value and "What to do" in panel.message.value
    assert panel.credentials is None
    state = all_widget_states(panel.widget) + repr(panel._repr_mimebundle_())
    assert sentinel not in state


def test_empty_password_and_no_server(testbed, home):
    panel = panel_for(testbed)
    panel.login_here_button.click()  # empty box: an error in the panel, no thread
    assert "password / token box is empty" in panel.message.value
    panel.password_box.value = "x"
    panel.login_server_button.click()
    assert "No server is chosen" in panel.message.value and panel.password_box.value == ""
    assert "RegistryPanel(" not in panel.message.value and "panel.remote" not in panel.message.value  # words


def test_base_name_saved_and_invalid_refused(testbed, home):
    panel = panel_for(testbed)
    panel.base_box.value = "10.250.0.1:5000/t-img/experiments"
    panel.save_base_button.click()
    finish(panel)
    assert dallingerconfig.get_base_name() == "10.250.0.1:5000/t-img/experiments"
    assert "Saved docker_image_base_name" in panel.message.value
    panel.base_box.value = "Not a name"
    panel.save_base_button.click()
    finish(panel)
    assert panel.steps.state("base image name") == "failed"
    assert "not a valid Docker image name" in panel.message.value
    assert dallingerconfig.get_base_name() == "10.250.0.1:5000/t-img/experiments"
    # A new panel picks the saved name up.
    assert panel_for(testbed).base_box.value == "10.250.0.1:5000/t-img/experiments"


def test_server_picker_and_no_transfer_mode_of_its_own(testbed, remote, home):
    """The deploy panel owns the transfer mode: this panel only logs in and shows who is; its
    server is chosen from the registered servers like in the other panels."""
    from labdeploy.ssh import servers
    from tests.conftest import trusted_known_hosts

    s = testbed["ssh"]
    name = f"t-img-picker-{uuid.uuid4().hex[:6]}"
    trusted_known_hosts(testbed, home / ".ssh" / "known_hosts")  # as after the setup panel's first contact
    servers.add(name, s["host"], user=s["user"], port=s["port"], key=s["key"])
    panel = panel_for(testbed, remote)
    assert list(panel.server_picker.options) == [remote.label, name]  # the handed-in server first
    assert not hasattr(panel, "mode_box") and not hasattr(panel, "mode")
    text = all_widget_states(panel.widget)
    for duplicate in ("Transfer mode", "server-build", "ssh-copy", "Log out on the server after each pull"):
        assert f"'description': '{duplicate}" not in text and f"'options': ('{duplicate}" not in text
    panel.check_button.click()
    assert f"Server {remote.label}: " in shown_state(panel, "This computer: not logged in.", f"Server {remote.label}")
    panel.server_picker.value = name  # another server: its own login state, and its step is pending again
    assert panel.steps.state("log in on the server") == "pending"
    assert "not logged in." in shown_state(panel, f"Server {name}: ")  # read over its own connection
    for cls in ("login-here", "login-server", "save-base", "check"):
        assert any(f"labdeploy-registry-{cls}" in b._dom_classes for b in
                   (panel.login_here_button, panel.login_server_button, panel.save_base_button, panel.check_button))
    panel.close()


def test_a_server_login_folder_out_of_the_home_is_shown_as_an_error(testbed, remote, home):
    escape = f"../t-img-panel-{uuid.uuid4().hex[:8]}"
    panel = panel_for(testbed, remote, escape)
    panel.password_box.value = testbed["registry"]["password"]
    try:
        panel.login_server_button.click()
        finish(panel)
        assert panel.steps.state("log in on the server") == "failed"
        assert "contains '..'" in html.unescape(panel.message.value)
        assert testbed["registry"]["password"] not in all_widget_states(panel.widget)
        assert not remote.exists(escape)
    finally:
        remote.run(["rm", "-rf", "--", escape], check=False)
