"""labdeploy.server.compose on the testbed: which Compose the server has, and how it is run
(through a real Remote; the bookworm server has Debian's Compose v1, the trixie server the v2 plugin).
"""

from __future__ import annotations

import uuid

import pytest

from labdeploy.server import compose
from labdeploy.errors import CommandFailed, LabdeployError
from labdeploy.remote import Remote


# What each testbed server has: Debian 12's docker-compose 1.29, Debian 13's Compose plugin 2.26.
EXPECTED = {"v1": (["docker-compose"], "1.29"), "v2": (["docker", "compose"], "2.26")}


def test_detects_the_servers_compose_once(remote, testbed):
    argv, _ = EXPECTED[testbed["compose"]]
    before = remote.stats["commands"]
    assert compose.detect(remote) == argv
    assert remote.stats["commands"] == before + 1
    assert compose.compose_argv(remote) == argv
    assert compose.detect(remote) == argv
    assert remote.stats["commands"] == before + 1  # cached per Remote: no second round trip


def test_compose_argv_is_a_copy(remote, testbed):
    argv = compose.compose_argv(remote)
    argv.append("oops")
    assert compose.compose_argv(remote) == EXPECTED[testbed["compose"]][0]


def test_each_remote_detects_for_itself(testbed, known_hosts):
    s = testbed["ssh"]
    a = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known_hosts, use_agent=False)
    b = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known_hosts, use_agent=False)
    try:
        assert compose.detect(a) == compose.detect(b) == EXPECTED[testbed["compose"]][0]
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


def test_run_compose_in_a_project_folder(remote, testbed):
    folder = f"labdeploy-tests/compose/{uuid.uuid4().hex[:10]}"
    remote.makedirs(folder)
    try:
        remote.put_bytes(f"{folder}/docker-compose.yml", "version: '3'\nservices:\n  web:\n    image: busybox\n")
        res = compose.run_compose(remote, folder, ["config", "--services"])
        assert res.stdout.split() == ["web"]
        lines: list = []
        compose.run_compose(remote, folder, ["version"], on_line=lambda line, stream: lines.append(line))
        assert any(EXPECTED[testbed["compose"]][1] in line for line in lines)
        with pytest.raises(CommandFailed):
            compose.run_compose(remote, folder, ["no-such-subcommand"])
        assert compose.run_compose(remote, folder, ["no-such-subcommand"], check=False).exit_status != 0
    finally:
        remote.run(["rm", "-rf", folder], check=False)
