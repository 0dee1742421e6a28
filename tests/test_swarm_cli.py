"""The command line on the testbed's three-node Swarm, as on one server: an app deployed with
`labdeploy deploy --engine swarm` is then watched, exported and destroyed by the same commands
(status, logs, connections, export, destroy) without --engine again: the manager's deploy record
says it is a Swarm app, and the answers carry the node each part runs on. And a first Swarm
deploy whose web never gets healthy leaves nothing behind.

Like tests/test_swarm.py, these use the cluster (this module's own `testbed` fixture, param
"swarm", the scope conftest gives Swarm tests). Bounded: one CLI deploy reused by every check,
one failing deploy.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest

from conftest import SWARM
from swarm_support import connect_manager, swarm_testbed
from deploy_support import EXAMPLE
from test_cli_support import CLI, REPO
from labdeploy.app import deploy, swarm
from labdeploy.images import registry
from labdeploy.images.registry import Credentials
from labdeploy.server import stack

APP, BAD = "swc-cli", "swc-bad"


@pytest.fixture(scope="module", params=[SWARM])
def testbed(request) -> dict:
    return swarm_testbed()


@pytest.fixture(scope="module")
def manager(testbed, tmp_path_factory):
    r = connect_manager(testbed, tmp_path_factory.mktemp("swc"))
    swarm.prepare(r, stack.StackSettings.for_images(testbed["images"], domain="localhost"))
    yield r
    r.close()


def forget(manager, app: str) -> None:
    try:
        swarm.destroy(app, manager, confirm=True, remove_data=True)
    except deploy.UnknownApp:
        pass


@pytest.fixture(scope="module")
def cli(testbed, manager, tmp_path_factory) -> CLI:
    """The manager registered as `sw` through the CLI; the code under test is this checkout's."""
    c = CLI(tmp_path_factory.mktemp("swc-home"), env={"PYTHONPATH": str(REPO)})
    s = testbed["ssh"]
    c.ok("servers", "add", "sw", "--host", s["host"], "--user", s["user"], "--key", s["key"],
         "--trust-host-key", s["host_key_fingerprint"])
    return c


@pytest.fixture(scope="module")
def deployed(testbed, manager, cli):
    reg, images = testbed["registry"], testbed["images"]
    forget(manager, APP)
    r = cli("deploy", "--app", APP, str(EXAMPLE), "--engine", "swarm", "--mode", "registry",
            "--image-base-name", f"{reg['address']}/swc", "--registry-user", reg["user"], "--registry-password-stdin",
            "--build-arg", f"BASE_IMAGE={images['python']}", "--redis-image", images["redis"],
            "--health-path", "/health", "--config", "num_dynos_web=2", "--json", input=reg["password"] + "\n",
            timeout=900)
    try:
        assert r.code == 0, str(r)
        yield r.json()
    finally:
        forget(manager, APP)


def test_status_logs_connections_export_and_destroy_of_a_swarm_app(testbed, manager, cli, deployed, tmp_path):
    nodes = {n["name"] for n in testbed["nodes"]}
    assert deployed["engine"] == "swarm" and deployed["replicas"]["web"] == 2
    rows = cli.ok("status", "--app", APP, "--json").json()
    web = [r for r in rows if r["service"] == "web" and r["state"].startswith("Running")]
    assert len(web) == 2 and {r["node"] for r in web} <= nodes, rows
    everything = cli.ok("status")
    assert "Swarm apps" in everything.out and APP in everything.out and "node" in everything.out, str(everything)

    lines = [json.loads(x) for x in cli.ok("logs", "--app", APP, "--tail", "20", "--json").out.splitlines()]
    assert lines and {x["node"] for x in lines} <= nodes and "web" in {x["service"] for x in lines}
    follow = cli("logs", "--app", APP, "--follow")
    assert follow.code != 0 and "Swarm" in follow.err and "Traceback" not in follow.err, str(follow)

    conns = cli.ok("connections", "--json").json()
    mine = [r for r in conns if r["app"] == APP]
    assert len(mine) == 1 and mine[0]["node"] == deployed["data_node"] and mine[0]["max_connections"], conns

    zipped = tmp_path / "swc.zip"
    cli.ok("export", "--app", APP, "--out", str(zipped))
    with zipfile.ZipFile(zipped) as z:
        assert any("participants" in n for n in z.namelist()), z.namelist()

    refused = cli("destroy", "--app", APP, "--remove-data", "--yes")
    assert refused.code != 0 and "--final-export" in refused.err, str(refused)
    assert APP in swarm.apps(manager)  # nothing was removed
    final = tmp_path / "final"
    done = cli.ok("destroy", "--app", APP, "--remove-data", "--final-export", str(final), "--yes", "--json").json()
    assert done["engine"] == "swarm" and "stack" in done["removed"] and "volumes" in done["removed"], done
    assert done["exported"] and list(final.glob("*.zip"))
    assert APP not in manager.run(["docker", "stack", "ls", "--format", "{{.Name}}"]).stdout.split()
    assert APP not in swarm.apps(manager)
    gone = cli("status", "--app", APP)
    assert "Traceback" not in gone.err  # now a single-server question with no such app


def test_a_failed_first_deploy_leaves_nothing_running(testbed, manager, tmp_path):
    """The web listens on the wrong port, so it never passes its health check: the deploy fails
    saying so with the web's last task error, and the stack, its volumes, its folder and any
    deploy record are gone."""
    reg, images = testbed["registry"], testbed["images"]
    creds = Credentials(reg["address"], reg["user"], reg["password"])
    bad = tmp_path / "bad"
    shutil.copytree(EXAMPLE, bad)
    procfile = (bad / "Procfile").read_text().splitlines()
    (bad / "Procfile").write_text("\n".join(["web: python -m http.server 5001" if line.startswith("web:") else line
                                              for line in procfile]) + "\n")
    forget(manager, BAD)
    registry.login_local(creds)
    try:
        with pytest.raises(swarm.SwarmError) as failed:
            deploy.deploy(bad, BAD, manager, engine="swarm", mode="registry", credentials=creds,
                          base_name=f"{reg['address']}/swc", build_args={"BASE_IMAGE": images["python"]},
                          redis_image=images["redis"], health_path="/health", start_timeout=30, launch=False)
    finally:
        registry.forget_session()
    err = failed.value
    assert err.code == "swarm.first_deploy_failed", err
    assert "nothing of it runs" in err.message and "web:" in err.message, err.message
    assert BAD not in manager.run(["docker", "stack", "ls", "--format", "{{.Name}}"]).stdout.split()
    assert not manager.run(["docker", "volume", "ls", "-q", "--filter",
                            f"label=com.docker.stack.namespace={BAD}"]).stdout.split()
    assert not manager.exists(swarm.swarmstack.app_dir(BAD)) and swarm.record(manager, BAD) is None
