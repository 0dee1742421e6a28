"""The panels' own ways out that used to be Python calls (issue 20), without a server: the deploy
panel's "More options" (pooler on/off, its image), "Break the lock…" with its confirmation, the
destroy confirmation's "destroy even though participants are working", and the setup panel's
"Remove server…" and "Prepare as a Swarm manager". The testbed runs them for real in
tests/test_deploy_panel.py and tests/test_setup_panel.py."""

from __future__ import annotations

import socket

import pytest

from labdeploy.errors import LabdeployError
from labdeploy.server import locks
from labdeploy.ssh import servers


@pytest.fixture
def offline(monkeypatch):
    """Nothing here may touch the network: a call that tries fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.delenv("LABDEPLOY_TESTBED", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def deploy_panel(home, offline, tmp_path):
    from labdeploy.widgets.deploy import DeployPanel

    p = DeployPanel(str(tmp_path), app="t-unit-app", server="t-unit-unregistered")
    yield p
    p.close()


def finish(panel) -> None:
    if panel.last_task is not None:
        panel.last_task.join(30)
        assert not panel.last_task.is_alive()


def shown(widget) -> bool:
    return widget.layout.display != "none"


# ------------------------------------------------------------------ More options

def test_more_options_are_folded_away_and_give_nothing_until_set(deploy_panel):
    from labdeploy.widgets.deploy_options import options_of

    more = deploy_panel.more
    assert more.widget.selected_index is None and more.widget.get_title(0) == "More options"
    assert options_of(more) == {}
    opts = deploy_panel._options()
    assert opts.pooler is None and opts.pgbouncer_image is None  # the app's remembered choice holds

    more.pooler_box.value = "off"
    more.pgbouncer_image_box.value = "  registry.example.org/pgbouncer:1.22 "
    assert options_of(more) == {"pooler": False, "pgbouncer_image": "registry.example.org/pgbouncer:1.22"}
    opts = deploy_panel._options()
    assert opts.pooler is False and opts.pgbouncer_image == "registry.example.org/pgbouncer:1.22"
    more.pooler_box.value = "on"
    assert deploy_panel._options().pooler is True


def test_a_bad_pgbouncer_image_is_refused_before_connecting(deploy_panel, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    deploy_panel.more.pgbouncer_image_box.value = "bad image; rm -rf /"
    deploy_panel.deploy_button.click()
    finish(deploy_panel)
    assert "labdeploy-error" in deploy_panel.message.value and "What to do" in deploy_panel.message.value
    assert "PgBouncer image" in deploy_panel.message.value


# ------------------------------------------------------------------ Break the lock…

def held() -> locks.DeployInProgress:
    info = locks.LockInfo(app="t-unit-app", token="x", operation="deploy", who="bob@laptop", age=300)
    return locks.busy_error("t-unit-app", info)


def test_a_refusal_by_the_lock_offers_to_break_it_and_asks_first(deploy_panel):
    part = deploy_panel.lock_part
    assert not shown(part.widget.children[0])  # nothing offered before a refusal

    deploy_panel._show_failure(held())
    assert shown(part.widget.children[0]) and shown(part.break_button)
    assert "bob@laptop" in part.html.value and not shown(part.confirm_button)

    part.break_button.click()
    assert shown(part.confirm_button) and shown(part.cancel_button) and not shown(part.break_button)
    assert "Only safe when no deploy" in part.html.value and "anywhere" in part.html.value

    part.cancel_button.click()
    assert not shown(part.confirm_button) and shown(part.break_button)

    deploy_panel._show_failure(LabdeployError("something else"))  # no longer the last word
    assert not shown(part.widget.children[0]) and part.html.value == ""


def test_confirming_without_an_offer_breaks_nothing(deploy_panel):
    deploy_panel.lock_part.confirm_button.click()
    assert "Nothing to confirm" in deploy_panel.message.value and deploy_panel.last_task is None


def test_breaking_shows_an_error_next_to_the_button_and_keeps_the_offer(deploy_panel):
    part = deploy_panel.lock_part
    deploy_panel._show_failure(held())
    part.break_button.click()
    part.confirm_button.click()  # the server is not registered: refused before any connection
    finish(deploy_panel)
    assert "labdeploy-error" in deploy_panel.message.value
    assert part.widget.children[-1] is deploy_panel.message  # under the lock's row
    assert part.refused is not None and shown(part.break_button)


def test_the_panels_remedy_for_a_held_lock_names_the_button():
    from labdeploy.widgets.remedies import hint

    text = hint(held())
    assert "Break the lock…" in text and "Yes, break the lock" in text and "(" not in text.split("lock…")[1]


# ------------------------------------------------------------------ destroy even though participants work

def test_the_destroy_confirmation_has_the_force_box_and_cancel_clears_it(deploy_panel, monkeypatch):
    deploy_panel.destroy_button.click()
    assert shown(deploy_panel.force_box) and "participants are working" in deploy_panel.force_box.description
    deploy_panel.force_box.value = True
    deploy_panel.cancel_button.click()
    assert not shown(deploy_panel.force_box) and deploy_panel.force_box.value is False

    # What the tick passes to the core (the core's refusal itself runs in tests/test_participants.py):
    # the destroy is replaced by a recorder here, as no app runs without a server.
    from labdeploy.widgets import deploy as deploy_widget

    called = {}

    def destroy(app, remote, **kw):
        called.update(kw, app=app)
        raise LabdeployError("recorded")

    monkeypatch.setattr(deploy_widget.apps_core, "destroy", destroy)
    monkeypatch.setattr(deploy_panel, "remote", lambda: object())
    deploy_panel.destroy_button.click()
    deploy_panel.force_box.value = True
    deploy_panel.confirm_button.click()
    finish(deploy_panel)
    assert called == {"app": "t-unit-app", "confirm": True, "remove_data": False, "force": True,
                      "reporter": called["reporter"]}


# ------------------------------------------------------------------ the setup panel

@pytest.fixture
def setup_panel(home, offline):
    from labdeploy.widgets.setup import SetupPanel

    return SetupPanel(server_name="t-unit-lab", host="192.0.2.1", user="alice", key_path=str(home / "id_ed25519"))


def test_remove_server_asks_then_removes_only_the_local_entry(setup_panel, home):
    servers.add("t-unit-lab", "192.0.2.1", "alice")
    servers.add("t-unit-other", "192.0.2.2", "alice")
    part = setup_panel.removal
    assert shown(part.remove_button) and not shown(part.confirm_button)

    part.remove_button.click()  # first click only asks
    assert "Remove t-unit-lab?" in part.html.value and shown(part.confirm_button)
    assert "t-unit-lab" in [s.name for s in servers.list_servers()]
    part.cancel_button.click()
    assert part.html.value == "" and not shown(part.confirm_button)
    assert "t-unit-lab" in [s.name for s in servers.list_servers()]

    part.remove_button.click()
    setup_panel.name_box.value = "t-unit-other"  # what was asked about is removed, not a name typed since
    part.confirm_button.click()
    finish(setup_panel)
    assert [s.name for s in servers.list_servers()] == ["t-unit-other"]
    assert setup_panel.steps.state("Register") == "pending" and "removed" in setup_panel.steps.value
    assert "Removed &#x27;t-unit-lab&#x27;" in setup_panel.message.value


def test_removing_a_server_that_is_not_registered_asks_nothing(setup_panel):
    setup_panel.removal.remove_button.click()
    assert setup_panel.removal.asking is None and "labdeploy-error" in setup_panel.message.value
    setup_panel.removal.confirm_button.click()
    assert "Nothing to confirm" in setup_panel.message.value and setup_panel.last_task is None


def test_prepare_as_a_swarm_manager_refuses_a_bad_domain_before_connecting(setup_panel):
    setup_panel.domain_box.value = "fe80::1%$(id);"
    setup_panel.swarm_button.click()
    assert setup_panel.last_task is None and setup_panel.remote is None
    assert setup_panel.steps.state("Prepare server") == "failed" and "What to do" in setup_panel.message.value
