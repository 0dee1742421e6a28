"""examples/stroop on the testbed's three-node Docker Swarm (scripts/testbed: labsw1 manager with
sshd, labsw2, labsw3): deployed as a stack with two web replicas answering through the one
ingress Caddy, status showing the nodes, destroy removing it.

These tests use the cluster, not a server, so they run once: this module's own `testbed` fixture
(param "swarm") replaces conftest's, and conftest's scheduler gives them a scope of their own
(server_of maps "swarm" to itself): the cluster shares no stack, engine or folder with the
bookworm and trixie servers (the manager's files are in ~/dallinger-swarm, its registry login in
a private folder), so they may run beside those servers' tests. Bounded: one deploy, one
destroy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import threading
import time
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest
import requests

from conftest import SWARM
from swarm_support import connect_manager, swarm_testbed
from deploy_support import EXAMPLE
from labdeploy.app import deploy, swarm, swarmdata
from labdeploy.images import registry
from labdeploy.images.registry import Credentials
from labdeploy.server import stack

APP = "swm-stroop"


@pytest.fixture(scope="module", params=[SWARM])
def testbed(request) -> dict:
    return swarm_testbed()


@pytest.fixture(scope="module")
def manager(testbed, tmp_path_factory):
    r = connect_manager(testbed, tmp_path_factory.mktemp("swarm"))
    yield r
    r.close()


@pytest.fixture(scope="module")
def deployed(testbed, manager):
    reg = testbed["registry"]
    creds = Credentials(reg["address"], reg["user"], reg["password"])
    registry.login_local(creds)
    images = testbed["images"]
    swarm.prepare(manager, stack.StackSettings.for_images(images, domain="localhost"))
    try:
        swarm.destroy(APP, manager, confirm=True, remove_data=True)
    except deploy.UnknownApp:
        pass
    result = deploy.deploy(EXAMPLE, APP, manager, engine="swarm", **deploy_kwargs_of(testbed))
    try:
        yield result
    finally:
        try:
            swarm.destroy(APP, manager, confirm=True, remove_data=True)
        except deploy.UnknownApp:
            pass
        registry.forget_session()


def deploy_kwargs_of(testbed: dict, web: int = 2) -> dict:
    reg, images = testbed["registry"], testbed["images"]
    return {"mode": "registry", "credentials": Credentials(reg["address"], reg["user"], reg["password"]),
            "base_name": f"{reg['address']}/swm", "build_args": {"BASE_IMAGE": images["python"]},
            "redis_image": images["redis"], "health_path": "/health", "config": {"num_dynos_web": str(web)}}


def through_caddy(testbed, path: str = "/health", method: str = "GET") -> requests.Response:
    return requests.request(method, f"http://{testbed['http']['host']}:{testbed['http']['port']}{path}",
                            headers={"Host": f"{APP}.localhost"}, timeout=15)


def test_two_web_replicas_answer_through_caddy_and_status_shows_nodes(testbed, manager, deployed):
    assert deployed.replicas["web"] == 2 and deployed.url == f"http://{APP}.localhost"
    df = swarm.status(manager, APP)
    running = df[df["state"].str.startswith("Running")]
    web = running[running.service == "web"]
    assert len(web) == 2 and set(web.node) <= {n["name"] for n in testbed["nodes"]}, df
    assert set(running[running.service.isin(["postgresql", "redis"])].node) == {deployed.data_node}
    assert all(through_caddy(testbed).status_code == 200 for _ in range(6))
    # Each replica answers: the web tasks' addresses, as Caddy resolves them, each serve /health.
    script = ["sh", "-c", 'c=$(docker ps -q --filter label=com.docker.swarm.service.name="$1" | head -n 1) && '
              'docker exec "$c" getent ahostsv4 "$2"', "sh", swarm.swarmstack.INGRESS_SERVICE, f"{APP}_web"]
    addresses = {line.split()[0] for line in manager.run(script).stdout.splitlines() if line.strip()}
    assert len(addresses) == 2, addresses


class Poller:
    """Participants' requests through the ingress Caddy, one every `every` s in a thread, until
    stopped: how many there were and how many failed (an error status or no answer)."""

    def __init__(self, testbed, app: str = APP, every: float = 0.25) -> None:
        self.url = f"http://{testbed['http']['host']}:{testbed['http']['port']}/health"
        self.host, self.every, self.total, self.failed = f"{app}.localhost", every, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as s:
            while not self.stop.is_set():
                self.total += 1
                try:
                    if s.get(self.url, headers={"Host": self.host}, timeout=15).status_code != 200:
                        self.failed += 1
                except requests.RequestException:
                    self.failed += 1
                self.stop.wait(self.every)

    def __enter__(self) -> "Poller":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def web_images(manager) -> set:
    df = swarm.status(manager, APP)
    return set(df[(df.service == "web") & df.state.str.startswith("Running")].image)


def test_update_rolls_out_start_first_and_a_failing_health_check_rolls_back(testbed, manager, deployed, tmp_path):
    """One update that passes (its web replicas replaced one at a time, the new one started and
    healthy before the old one stops), then one whose web never listens (health check fails):
    Swarm's rollback_config brings web back, and participants' requests never fail meanwhile."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(EXAMPLE, good)
    (good / "README.md").write_text((good / "README.md").read_text() + "\nVersion 2.\n")
    shutil.copytree(good, bad)
    procfile = (bad / "Procfile").read_text().splitlines()
    (bad / "Procfile").write_text("\n".join(["web: python -m http.server 5001" if line.startswith("web:") else line
                                              for line in procfile]) + "\n")
    kw = deploy_kwargs_of(testbed)
    with Poller(testbed) as poll:
        updated = deploy.update(good, APP, manager, engine="swarm", **kw)
        assert updated.version != deployed.version
        after_good = web_images(manager)
        assert len(after_good) == 1 and updated.image.split("@")[-1] in after_good.pop(), after_good
        after_good = web_images(manager)
        with pytest.raises(swarm.SwarmError) as failed:
            deploy.update(bad, APP, manager, engine="swarm", **kw)
        assert failed.value.code == "swarm.rolled_back" and "web" in str(failed.value)
        assert web_images(manager) == after_good
    assert poll.total > 50 and poll.failed == 0, (poll.total, poll.failed)


def test_logs_connections_and_export_with_nodes(testbed, manager, deployed):
    """The same answers as on one server, from the app's tasks on their nodes: logs with a node
    column, the app's own PostgreSQL's connections (on the data node), and an export."""
    nodes = {n["name"] for n in testbed["nodes"]}
    log = swarmdata.logs(APP, manager, tail=20)
    assert list(log.columns) == swarmdata.LOG_COLUMNS and len(log)
    web = log[log.service == "web"]
    assert len(web) and set(web.node) <= nodes and log.time.notna().any(), log.head()
    assert set(swarmdata.logs(APP, manager, "worker", tail=5).service) <= {"worker"}
    activity = swarmdata.pg_activity(APP, manager)
    assert "node" in activity.columns and activity.attrs["max_connections"] > 0
    assert set(activity.node) <= {deployed.data_node}
    data = swarmdata.export(APP, manager)
    assert data.database == "dallinger" and "participants" in data
    assert data.counts["participants"] == len(data["participants"])
    with pytest.raises(deploy.UnknownApp):
        swarmdata.export("swm-nothing-here", manager)


def load_testbed_script():
    """scripts/testbed as a module: its own functions start a node's engine again."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "testbed"
    spec = importlib.util.spec_from_loader("labdeploy_testbed_script", SourceFileLoader("labdeploy_testbed_script",
                                                                                      str(path)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def node_states(manager) -> dict:
    out = manager.run(["docker", "node", "ls", "--format", "{{.Hostname}} {{.Status}}"]).stdout
    return dict(line.split()[:2] for line in out.splitlines() if line.strip())


def wait_until(what: str, check, timeout: float = 150):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(2)


@pytest.fixture
def node_stopper(testbed, manager):
    """Stops a worker node's Docker engine by its pid (the testbed's pidfile), as a machine that
    goes away; after the test, pass or fail, the node runs again and is Ready in the Swarm."""
    script, stopped = load_testbed_script(), []

    def stop(name: str) -> None:
        pid = script.read_pid(f"swarm-{name}")
        assert pid, f"the testbed has no running engine for {name}"
        stopped.append(name)
        os.kill(pid, signal.SIGTERM)
        wait_until(f"{name}'s engine to stop", lambda: not script.alive(pid), 60)

    def start(name: str) -> None:
        node = next(n for n in script.SWARM_NODES if n["name"] == name)
        script.ensure_swarm_dockerd(node)  # the testbed's own start: same command line, pidfile
        wait_until(f"{name} Ready again", lambda: node_states(manager).get(name) == "Ready", 120)

    stop.start = start
    yield stop
    for name in stopped:
        start(name)


def test_node_loss_keeps_serving_a_node_rejoins_and_deploys_go_on_while_one_is_down(testbed, manager, deployed,
                                                                                   node_stopper):
    """A worker node with a web replica stops: participants' requests keep being answered by
    the other replica, Swarm reschedules the lost one on a node that is up; a second app deploys
    while that node is down (onto the others); the node comes back, is Ready, and its stale
    task is not run twice."""
    worker_names = [n["name"] for n in testbed["nodes"] if n["name"] != testbed["manager"]]
    df = swarm.status(manager, APP)
    web_nodes = set(df[(df.service == "web") & df.state.str.startswith("Running")].node)
    lost = next((n for n in worker_names if n in web_nodes), worker_names[-1])
    late = "swm-late"
    with Poller(testbed) as poll:
        node_stopper(lost)
        wait_until(f"{lost} Down", lambda: node_states(manager).get(lost) == "Down", 90)

        def rescheduled():
            now = swarm.status(manager, APP)
            web = now[(now.service == "web") & now.state.str.startswith("Running")]
            return len(web) == 2 and lost not in set(web.node)
        wait_until("the web replica rescheduled", rescheduled)
        try:
            swarm.destroy(late, manager, confirm=True, remove_data=True)
        except deploy.UnknownApp:
            pass
        try:
            result = deploy.deploy(EXAMPLE, late, manager, engine="swarm", launch=False, **deploy_kwargs_of(testbed))
            placed = swarm.status(manager, late)
            assert result.replicas["web"] == 2 and lost not in set(placed.node), placed
        finally:
            swarm.destroy(late, manager, confirm=True, remove_data=True)
    assert poll.total > 50 and poll.failed == 0, (poll.total, poll.failed)
    node_stopper.start(lost)  # rejoins: Ready; its old web task is not running beside the new ones
    node = next(n for n in testbed["nodes"] if n["name"] == lost)

    def settled():
        res = subprocess.run(["docker", "-H", node["docker"], "ps", "-q", "--filter",
                              f"label=com.docker.swarm.service.name={APP}_web"], capture_output=True, text=True)
        now = swarm.status(manager, APP)
        web = now[(now.service == "web") & now.state.str.startswith("Running")]
        return res.returncode == 0 and len(web) == 2 and len(res.stdout.split()) == (web.node == lost).sum()
    wait_until(f"{lost}'s stale task gone", settled, 90)
    assert all(through_caddy(testbed).status_code == 200 for _ in range(4))


def test_destroy_removes_the_stack(testbed, manager, deployed):
    result = swarm.destroy(APP, manager, confirm=True, remove_data=True)
    assert "stack" in result.removed and "volumes" in result.removed
    assert APP not in manager.run(["docker", "stack", "ls", "--format", "{{.Name}}"]).stdout.split()
    try:  # Caddy with no site left may close its port altogether
        assert through_caddy(testbed).status_code != 200
    except requests.ConnectionError:
        pass
