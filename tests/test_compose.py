"""labdeploy.server.compose on the testbed: which Compose the server has, and how it is run
(through a real Remote; the testbed has Debian's Compose v1). The v2 form: test_compose_unit.py.
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
