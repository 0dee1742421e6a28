"""The local server list without a server: validation of what gets registered (issue 14)."""

from __future__ import annotations


import pytest

from labdeploy.ssh import servers
from labdeploy.errors import ValidationError


@pytest.mark.parametrize("host", ["fe80::1%$(id);", '::1%x {\n\trespond "injected" 200\n}\nzzz.localhost',
                                  "fe80::1%eth0", "10.0.0.300", "lab.example.org\n"])
def test_add_refuses_hostile_hosts_and_writes_nothing(home, no_network, host):
    with pytest.raises(ValidationError):
        servers.add("lab", host, "alice")
    assert not servers.config_file().exists()


@pytest.mark.parametrize("key", ["/home/a/.ssh/id\rx", "/home/a/.ssh/id\x1b[2Jx", "/home/a/id\x00", "/home/a/id\x7f",
                                 "/home/a/id\n", "  "])
def test_add_refuses_key_paths_with_control_characters(home, no_network, key):
    with pytest.raises(ValidationError) as info:
        servers.add("lab", "lab.example.org", "alice", key=key)
    assert info.value.hint
    assert not servers.config_file().exists()


def test_add_registers_without_any_network(home, no_network):
    s = servers.add("lab", "192.0.2.1", "alice", key=str(home / "id_ed25519"))
    assert servers.get("lab") == s
    s6 = servers.add("lab6", "fe80::1%2", "alice")
    assert servers.get("lab6").host == "fe80::1%2" == s6.host


def test_a_relative_key_path_is_registered_absolute(home, no_network, monkeypatch):
    monkeypatch.chdir(home)
    s = servers.add("lab", "lab.example.org", "alice", key="keys/lab")
    assert s.key == str(home / "keys" / "lab")


def test_a_stored_entry_with_a_scoped_host_is_refused_when_used(home, no_network):
    import json

    path = servers.config_file()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "servers": [
        {"name": "lab", "host": "fe80::1%$(id)", "port": 22, "user": "alice", "key": None}]}))
    with pytest.raises(ValidationError):
        servers.resolve("lab")
