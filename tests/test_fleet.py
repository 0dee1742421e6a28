"""A fleet of the testbed's two servers, registered as a researcher registers them (plus one at
an address where nothing answers): the fleet's tables over both, `deploy(..., server="auto")`,
and an app moved with its data from one server to the other.

These tests use both servers at once, so they run once, not once per server: this module's own
`testbed` fixture (param "fleet") replaces conftest's. conftest's scheduler puts them with the
bookworm server's tests (server_of maps "fleet" to the first server), so under pytest-xdist
they run in order with those; on trixie they only add their own `flt-` apps, as a researcher's
second deploy would. They need both servers: with LABDEPLOY_TEST_SERVERS naming one, they are
skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import FLEET, REPO, SERVERS, _load_testbed, server_view
from deploy_support import EXAMPLE, deploy_kwargs, destroy_if_deployed, prepare_local_stack
from labdeploy import export
from labdeploy.app import apps, deploy, fleet, move
from labdeploy.remote import Remote
from labdeploy.ssh import servers
from test_deploy import answer_all_trials, through_caddy

pytestmark = pytest.mark.skipif(not {"bookworm", "trixie"} <= set(SERVERS),
                                reason="the fleet tests need both testbed servers")

MOVED = "flt-move"
AUTO = "flt-auto"
SILENT = "10.250.0.99"  # on the bookworm server's network, where nothing answers


@pytest.fixture(scope="module", params=[FLEET])
def testbed(request) -> dict:
    """Both servers' details (testbed.json's `servers`), for this module's tests, run once."""
    return _load_testbed()


@pytest.fixture(scope="module")
def fleet_home(testbed, tmp_path_factory):
    """A fresh HOME with both servers registered (and trusted), and a silent third one."""
    home = tmp_path_factory.mktemp("fleet-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(home))
    for name in ("SSH_AUTH_SOCK", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "LABDEPLOY_SERVER"):
        mp.delenv(name, raising=False)
    (home / ".ssh").mkdir(mode=0o700)
    lines = [testbed["servers"][s]["ssh"]["known_hosts_line"] for s in ("bookworm", "trixie")]
    (home / ".ssh" / "known_hosts").write_text("\n".join(lines) + "\n")
    for name in ("bookworm", "trixie"):
        s = testbed["servers"][name]["ssh"]
        servers.add(name, s["host"], s["user"], s["port"], key=s["key"])
    s = testbed["servers"]["bookworm"]["ssh"]
    servers.add("silent", SILENT, s["user"], key=s["key"])
    yield home
    mp.undo()


@pytest.fixture(scope="module")
def remotes(fleet_home, testbed):
    """Each server's own connection, to prepare, check and clean up."""
    found = {}
    for name in ("bookworm", "trixie"):
        s = testbed["servers"][name]["ssh"]
        found[name] = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], use_agent=False)
        found[name].connect()
        prepare_local_stack(found[name], server_view(testbed, name))
    yield found
    for r in found.values():
        r.close()


@pytest.fixture(scope="module")
def on_bookworm(remotes, testbed):
    """flt-move deployed on the bookworm server with a participant's answers in it."""
    for r in remotes.values():
        destroy_if_deployed(r, MOVED)
    deploy.deploy(EXAMPLE, MOVED, remotes["bookworm"], **deploy_kwargs(testbed))
    answer_all_trials(server_view(testbed, "bookworm"), MOVED)
    yield remotes
    for r in remotes.values():
        destroy_if_deployed(r, MOVED)


def cli(*argv: str, home) -> subprocess.CompletedProcess:
    """This checkout's `labdeploy` command (the venv's entry point may be another checkout's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "LABDEPLOY_SERVER")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return subprocess.run([sys.executable, "-m", "labdeploy.cli", *argv], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(REPO))


def test_the_fleet_tables_hold_both_servers_and_a_row_for_the_one_that_does_not_answer(on_bookworm, fleet_home):
    listed = fleet.apps()
    assert listed.attrs["servers"] == ["bookworm", "silent", "trixie"] and listed.attrs["not_answering"] == ["silent"]
    silent = listed[listed["server"] == "silent"].iloc[0]
    assert not silent["answered"] and SILENT in silent["error"]
    mine = listed[listed["app"] == MOVED]
    assert list(mine["server"]) == ["bookworm"] and list(mine["state"]) == ["running"]
    assert set(listed.loc[listed["answered"], "server"]) <= {"bookworm", "trixie"}
    assert listed[listed["answered"]]["error"].eq("").all()

    status = fleet.status()
    assert set(status.loc[status["app"] == MOVED, "server"]) == {"bookworm"}
    assert set(status.loc[status["app"] == MOVED, "service"]) >= {"web", "worker", "redis"}
    assert status.attrs["not_answering"] == ["silent"]

    activity = fleet.pg_activity()
    assert activity.attrs["not_answering"] == ["silent"] and "max_connections" in activity.columns

    usage = fleet.usage()
    assert list(usage["server"]) == ["bookworm", "silent", "trixie"]
    assert list(usage["answered"]) == [True, False, True]
    for row in usage[usage["answered"]].itertuples():
        assert row.memory_total_gb > 0 and row.disk_free_gb > 0
        assert row.apps == len(apps.apps(on_bookworm[row.server]))
        assert 0 <= row.room <= row.memory_total_gb // fleet.PER_APP_GB
    assert usage.loc[usage["server"] == "bookworm", "apps_running"].iloc[0] >= 1


def test_the_fleet_command_shows_every_server_and_says_which_did_not_answer(on_bookworm, fleet_home):
    run = cli("fleet", "apps", "--json", home=fleet_home)
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    assert {"server": "bookworm", "app": MOVED} in [{"server": r["server"], "app": r["app"]} for r in rows]
    assert any(r["server"] == "silent" and not r["answered"] for r in rows)
    run = cli("fleet", "status", home=fleet_home)
    assert run.returncode == 0, run.stderr
    assert re.search(rf"^bookworm\s+{MOVED}\s+web\s+running", run.stdout, re.M), run.stdout
    assert f"silent: did not answer" in run.stderr and SILENT in run.stderr
    for command in ("connections", "usage"):
        run = cli("fleet", command, home=fleet_home)
        assert run.returncode == 0 and "silent: did not answer" in run.stderr, run.stdout + run.stderr


def test_deploy_auto_places_the_app_where_there_is_most_room_and_says_why(on_bookworm, testbed, fleet_home):
    try:
        result = deploy.deploy(EXAMPLE, AUTO, "auto", **deploy_kwargs(testbed))
        chosen, room = re.match(r"(\w+): room for (\d+) more", result.placement).groups()
        assert "\n" not in result.placement and "not answering: silent" in result.placement
        others = dict((s, int(n)) for s, n in re.findall(r"(\w+) (\d+)", result.placement.split("others: ")[1]
                                                           .split(";")[0]))
        assert chosen in ("bookworm", "trixie") and set(others) == {"bookworm", "trixie"} - {chosen}
        assert all(n <= int(room) for n in others.values())
        assert AUTO in set(apps.apps(on_bookworm[chosen])["app"])
        assert AUTO not in set(apps.apps(on_bookworm[({"bookworm", "trixie"} - {chosen}).pop()])["app"])
    finally:
        for r in on_bookworm.values():
            destroy_if_deployed(r, AUTO)


def test_move_brings_the_data_switches_the_route_and_leaves_the_old_app_stopped(on_bookworm, testbed, fleet_home):
    old, new = on_bookworm["bookworm"], on_bookworm["trixie"]
    before = {r.table: int(r.rows) for r in export.table_counts(MOVED, old).itertuples()}
    assert before["responses"] > 0

    result = move.move(MOVED, "bookworm", "trixie", EXAMPLE, **deploy_kwargs(testbed))

    assert result.ok and result.from_server == "bookworm" and result.to_server == "trixie"
    moved = dict(zip(result.counts["table"], result.counts["expected"]))
    assert moved["responses"] == before["responses"] and moved["participants"] == before["participants"]
    after = {r.table: int(r.rows) for r in export.table_counts(MOVED, new).itertuples()}
    assert after["responses"] == before["responses"] and after["participants"] == before["participants"]
    # the old app is kept, stopped, with its data; the new one runs
    old_row = apps.apps(old).set_index("app").loc[MOVED]
    assert old_row["state"] == "stopped"
    assert apps.apps(new).set_index("app").loc[MOVED, "state"] == "running"
    assert {r.table: int(r.rows) for r in export.table_counts(MOVED, old).itertuples()}["responses"] == before["responses"]
    # the old server's address now reaches the new server's app (the old web container is stopped)
    assert result.url == result.old_url and "forwards to trixie" in result.route
    assert through_caddy(server_view(testbed, "bookworm"), MOVED, "/health").status_code == 200
    assert answer_all_trials(server_view(testbed, "bookworm"), MOVED) > 0  # written on the new server
    now = {r.table: int(r.rows) for r in export.table_counts(MOVED, new).itertuples()}
    assert now["participants"] == before["participants"] + 1

    with pytest.raises(move.MoveRefused):  # moved already
        move.move(MOVED, "bookworm", "trixie", EXAMPLE, **deploy_kwargs(testbed))
    with pytest.raises(move.MoveRefused):  # the other way: bookworm still holds the stopped copy
        move.move(MOVED, "trixie", "bookworm", EXAMPLE, **deploy_kwargs(testbed))
