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

import pytest
import requests

from conftest import SWARM, _load_testbed, trusted_known_hosts
from deploy_support import EXAMPLE
from labdeploy.app import deploy, swarm
from labdeploy.images import registry
from labdeploy.images.registry import Credentials
from labdeploy.remote import Remote
from labdeploy.server import stack

APP = "swm-stroop"


@pytest.fixture(scope="module", params=[SWARM])
def testbed(request) -> dict:
    data = _load_testbed()
    if "swarm" not in data:
        pytest.fail("The testbed has no Swarm: run `sudo scripts/testbed up` again.", pytrace=False)
    return {**data, **data["swarm"]}


@pytest.fixture(scope="module")
def manager(testbed, tmp_path_factory):
    known = trusted_known_hosts(testbed, tmp_path_factory.mktemp("swarm") / "known_hosts")
    s = testbed["ssh"]
    r = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known, use_agent=False)
    r.connect()
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
    result = deploy.deploy(EXAMPLE, APP, manager, engine="swarm", mode="registry", credentials=creds,
                           base_name=f"{reg['address']}/swm", build_args={"BASE_IMAGE": images["python"]},
                           redis_image=images["redis"], health_path="/health", config={"num_dynos_web": "2"})
    try:
        yield result
    finally:
        try:
            swarm.destroy(APP, manager, confirm=True, remove_data=True)
        except deploy.UnknownApp:
            pass
        registry.forget_session()


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


def test_destroy_removes_the_stack(testbed, manager, deployed):
    result = swarm.destroy(APP, manager, confirm=True, remove_data=True)
    assert "stack" in result.removed and "volumes" in result.removed
    assert APP not in manager.run(["docker", "stack", "ls", "--format", "{{.Name}}"]).stdout.split()
    try:  # Caddy with no site left may close its port altogether
        assert through_caddy(testbed).status_code != 200
    except requests.ConnectionError:
        pass
