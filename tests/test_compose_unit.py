"""labdeploy.compose: which Compose the server has, and how it is run.

Detection runs against the testbed through a real Remote (the testbed has Debian's Compose v1).
"""

from __future__ import annotations

import uuid

import pytest

from labdeploy.server import compose
from labdeploy.errors import CommandFailed, LabdeployError
from labdeploy.remote import Remote


def test_detects_compose_v1_on_the_testbed_once(remote):
    before = remote.stats["commands"]
    assert compose.detect(remote) == ["docker-compose"]
    assert remote.stats["commands"] == before + 1
    assert compose.compose_argv(remote) == ["docker-compose"]
    assert compose.detect(remote) == ["docker-compose"]
    assert remote.stats["commands"] == before + 1  # cached per Remote: no second round trip


def test_compose_argv_is_a_copy(remote):
    argv = compose.compose_argv(remote)
    argv.append("oops")
    assert compose.compose_argv(remote) == ["docker-compose"]


def test_each_remote_detects_for_itself(testbed, known_hosts):
    s = testbed["ssh"]
    a = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known_hosts, use_agent=False)
    b = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known_hosts, use_agent=False)
    try:
        assert compose.detect(a) == compose.detect(b) == ["docker-compose"]
        assert a.stats["commands"] == 1 and b.stats["commands"] == 1
    finally:
        a.close()
        b.close()


def test_no_compose_on_the_server(testbed, known_hosts):
    """`labbare` has no docker tools on its PATH: a clear error with an install hint."""
    s = testbed["ssh"]
    r = Remote(s["host"], s["port"], s["user_bare"], key_filename=s["key"], known_hosts=known_hosts,
               use_agent=False)
    try:
        assert compose.detect(r) is None
        with pytest.raises(LabdeployError) as info:
            compose.compose_argv(r)
        assert "not available" in str(info.value)
        assert "docker-compose-plugin" in info.value.hint and "docker-compose" in info.value.hint
    finally:
        r.close()


def test_run_compose_in_a_project_folder(remote):
    folder = f"labdeploy-tests/compose/{uuid.uuid4().hex[:10]}"
    remote.makedirs(folder)
    try:
        remote.put_bytes(f"{folder}/docker-compose.yml", "version: '3'\nservices:\n  web:\n    image: busybox\n")
        res = compose.run_compose(remote, folder, ["config", "--services"])
        assert res.stdout.split() == ["web"]
        lines: list = []
        compose.run_compose(remote, folder, ["version"], on_line=lambda line, stream: lines.append(line))
        assert any("1.29" in line for line in lines)
        with pytest.raises(CommandFailed):
            compose.run_compose(remote, folder, ["no-such-subcommand"])
        assert compose.run_compose(remote, folder, ["no-such-subcommand"], check=False).exit_status != 0
    finally:
        remote.run(["rm", "-rf", folder], check=False)


class _FakeV2Server:
    """Stand-in for a server with the Compose v2 plugin: Debian has no v2 plugin package, so no
    real v2 server can run here (DESIGN.md). It answers the detection script like such a server."""

    def __init__(self) -> None:
        self.calls: list = []

    def run(self, argv, **kw):
        self.calls.append((list(argv), kw))

        class R:
            stdout = "v2\n" if argv[:2] == ["sh", "-c"] else ""
            exit_status = 0

        return R()


def test_v2_argv_and_run_compose_arguments():
    server = _FakeV2Server()
    assert compose.compose_argv(server) == ["docker", "compose"]
    compose.run_compose(server, "dallinger/app", ["up", "-d", "web"], stdin=b"x", timeout=5, check=False)
    assert len(server.calls) == 2  # one detection, one command
    argv, kw = server.calls[1]
    assert argv == ["docker", "compose", "up", "-d", "web"]
    assert kw["cwd"] == "dallinger/app" and kw["stdin"] == b"x" and kw["timeout"] == 5 and kw["check"] is False
