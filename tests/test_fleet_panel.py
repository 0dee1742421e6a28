"""Drive the "all servers" panel and the deploy panel's "auto" server choice against the testbed:
the testbed's server and one registered at an address where nothing answers make the fleet.
The fleet view shows both, the silent one as a row saying so; a deploy with "auto" lands on the
server with room and the panel shows the placement sentence (or, when no server has room just
now, says so with what to do)."""

from __future__ import annotations

import pytest

from deploy_support import EXAMPLE, deploy_kwargs, destroy_if_deployed, prepare_local_stack
from labdeploy.app import apps, fleet
from labdeploy.ssh import servers
from test_deploy_panel import click

# One server and a silent address are enough for the panels; test_fleet covers two real servers.
pytestmark = pytest.mark.servers("bookworm")

APP = "t-fleet-panel"
SILENT = "10.250.0.99"  # on the bookworm server's network, where nothing answers


@pytest.fixture
def fleet_home(home, testbed, session_remote):
    """The testbed server registered (and trusted) as 'lab', and a silent second server."""
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "known_hosts").write_text(testbed["ssh"]["known_hosts_line"] + "\n")
    s = testbed["ssh"]
    servers.add("lab", s["host"], s["user"], s["port"], key=s["key"])
    servers.add("silent", SILENT, s["user"], key=s["key"])
    prepare_local_stack(session_remote, testbed)
    return home


def test_the_all_servers_view_shows_each_server_and_the_silent_one_as_a_row(fleet_home):
    from labdeploy.widgets.fleet import FleetPanel

    panel = FleetPanel()
    panel.last_task.join(120)
    assert not panel.last_task.is_alive()
    assert list(panel.usage["server"]) == ["lab", "silent"] and list(panel.usage["answered"]) == [True, False]
    table = panel.usage_html.value
    assert "labdeploy-fleet-usage-table" in table and "did not answer" in table and SILENT in table
    assert "<td>lab</td>" in table and "<td>silent</td>" in table
    assert "silent" in panel.status_html.value and "did not answer" in panel.status_html.value
    assert "labdeploy-warning" in panel.message.value and "silent" in panel.message.value


def test_the_deploy_panel_places_an_app_with_auto_and_shows_why(fleet_home, testbed, session_remote, monkeypatch):
    from labdeploy.widgets.deploy import DeployPanel

    monkeypatch.setenv("LABDEPLOY_TESTBED", testbed["file"])
    destroy_if_deployed(session_remote, APP)
    room = int(fleet.usage(["lab"])["room"].iloc[0])  # other tests' apps may fill the server meanwhile
    panel = DeployPanel(str(EXAMPLE), app=APP, health_path="/health")
    try:
        assert fleet.AUTO in [value for _, value in panel.server_box.options]
        panel.server_box.value = fleet.AUTO
        panel.redis_image_box.value = deploy_kwargs(testbed)["redis_image"]
        click(panel, panel.deploy_button)
        if room > 0:
            assert panel.result is not None, panel.message.value
            assert panel.result.placement.startswith("lab: room for ") and "not answering: silent" in \
                panel.result.placement
            assert "labdeploy-deploy-placement" in panel.result_html.value
            assert panel.server_box.value == "lab"  # what follows acts on the server chosen
            assert APP in set(apps.apps(session_remote)["app"])
        else:
            assert panel.result is None and "no registered server has room" in panel.message.value.lower()
            assert "What to do" in panel.message.value
        panel.server_box.value = fleet.AUTO
        click(panel, panel.apps_button)  # one server's list: 'auto' is not one
        assert "labdeploy-error" in panel.message.value and "Choose the server" in panel.message.value
    finally:
        panel.close()
        destroy_if_deployed(session_remote, APP)
