"""An app's memory and CPU limits and Dallinger's worker count on a real server (issue 23, part
2's last point), on Compose v1 and v2: what Docker itself holds for each container
(`docker inspect`'s HostConfig.Memory and NanoCpus), the status columns, and an update that
keeps the limits it is not given."""

from __future__ import annotations

from pathlib import Path

import pytest

from labdeploy.app import deploy
from labdeploy.watch import monitor
from deploy_support import destroy_if_deployed, prepare_local_stack

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dallinger-hello"
APP = "lim-workers"
MiB = 1024 ** 2


def inspect(remote) -> list[tuple[str, int, int]]:
    """(service, Memory, NanoCpus) of each of the app's containers, as Docker holds them."""
    ids = remote.run(["docker", "ps", "-q", "--filter", f"label=labdeploy.app={APP}"]).stdout.split()
    out = remote.run(["docker", "inspect", "--format",
                      '{{index .Config.Labels "labdeploy.service"}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}',
                      *ids]).stdout
    return sorted((s, int(m), int(c)) for s, m, c in (line.split() for line in out.splitlines()))


@pytest.fixture(scope="module")
def deployed(testbed, session_remote, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        prepare_local_stack(session_remote, testbed)
        destroy_if_deployed(session_remote, APP)
        result = deploy.deploy(EXAMPLE, APP, session_remote, config={"num_dynos_worker": "2"},
                               memory_limit="1500m", cpu_limit=0.75, pooler=False,
                               build_args={"BASE_IMAGE": testbed["images"]["dallinger"]},
                               redis_image=testbed["images"]["redis"], start_timeout=240)
        yield {"result": result, "home": home, "first": inspect(session_remote)}
        destroy_if_deployed(session_remote, APP)


def test_docker_holds_the_limits_and_two_workers(deployed):
    share = 1500 * MiB // 3  # web and two workers share the app's memory
    assert deployed["first"] == [("redis", 0, 0), ("web", share, 750_000_000),
                                 ("worker", share, 750_000_000), ("worker", share, 750_000_000)]
    assert deployed["result"].remembered["memory_limit"] == {"value": 1500 * MiB, "from": "given"}


def test_status_shows_each_containers_limits(deployed, session_remote):
    df = monitor.status(session_remote, APP)
    workers = df[df["service"] == "worker"]
    assert len(workers) == 2 and (workers["state"] == "running").all()
    assert list(workers["memory_limit"]) == [1500 * MiB // 3] * 2 and list(workers["cpu_limit"]) == [0.75] * 2
    assert df[df["service"] == "redis"]["memory_limit"].isna().all()


def test_update_keeps_the_limits_it_is_not_given(deployed, session_remote):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(deployed["home"]))
        result = deploy.update(EXAMPLE, APP, session_remote, config={"num_dynos_worker": "2"}, cpu_limit=1,
                               start_timeout=240)
    assert result.remembered["memory_limit"]["from"] == "app" and result.remembered["cpu_limit"]["from"] == "given"
    share = 1500 * MiB // 3
    assert inspect(session_remote) == [("redis", 0, 0), ("web", share, 10 ** 9), ("worker", share, 10 ** 9),
                                       ("worker", share, 10 ** 9)]


def test_an_app_from_before_limits_is_updated_without_them_until_given(deployed, session_remote):
    """An app whose record has no limits (deployed before labdeploy set them) keeps running
    without them on update: an out-of-memory kill it never had would be new mid-study."""
    import json

    from labdeploy.progress import LogLine
    from labdeploy.server import layout

    path = layout.app_state(APP)
    state = json.loads(session_remote.get_bytes(path))
    for key in ("memory_limit", "cpu_limit"):
        state.pop(key)
    session_remote.put_bytes(path, json.dumps(state), mode=0o600)
    said = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(deployed["home"]))
        deploy.update(EXAMPLE, APP, session_remote, config={"num_dynos_worker": "2"}, start_timeout=240,
                      reporter=lambda e: said.append(e.line) if isinstance(e, LogLine) else None)
    assert inspect(session_remote) == [("redis", 0, 0), ("web", 0, 0), ("worker", 0, 0), ("worker", 0, 0)]
    assert any("no memory or CPU limit" in line for line in said), said
    status = monitor.status(session_remote, APP)
    assert status[status["service"] == "web"]["memory_limit"].isna().all()
