"""The local server list (in a temporary HOME) and resolving entries to a working Remote."""

import json
import os
import stat

import pytest

from labdeploy.ssh import servers
from labdeploy.errors import LabdeployError, ValidationError
from labdeploy.progress import Collector, WarningEvent


def test_add_list_get_remove_persist_in_the_config_folder(home):
    s = servers.add("lab", "lab.example.org", "alice", port=2222, key="~/.ssh/id_ed25519")
    assert s.key == str(home / ".ssh" / "id_ed25519")
    path = servers.config_file()
    assert path == home / ".config" / "labdeploy" / "servers.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text())["servers"][0]["host"] == "lab.example.org"
    servers.add("b-server", "10.0.0.5", "bob")
    assert [x.name for x in servers.list_servers()] == ["b-server", "lab"]
    assert list(servers.table()["name"]) == ["b-server", "lab"]
    assert servers.get("lab").port == 2222
    assert [p.name for p in path.parent.iterdir()] == ["servers.json"]  # no temp files left


def test_same_name_refused_unless_replace(home):
    servers.add("lab", "a.example.org", "alice")
    servers.add("lab", "a.example.org", "alice")  # the same entry again is fine
    with pytest.raises(servers.ServerExists) as info:
        servers.add("lab", "b.example.org", "alice")
    assert "replace=True" in info.value.hint
    assert servers.get("lab").host == "a.example.org"
    servers.add("lab", "b.example.org", "alice", replace=True)
    assert servers.get("lab").host == "b.example.org"


def test_remove_needs_confirmation(home):
    servers.add("lab", "a.example.org", "alice")
    with pytest.raises(LabdeployError) as info:
        servers.remove("lab")
    assert "confirm=True" in info.value.hint
    assert servers.get("lab")
    servers.remove("lab", confirm=True)
    assert servers.list_servers() == []
    with pytest.raises(servers.ServerNotFound) as info:
        servers.get("lab")
    assert info.value.hint


@pytest.mark.parametrize("kwargs", [
    {"name": "lab; rm -rf ~", "host": "a.example.org", "user": "alice"},
    {"name": "lab", "host": "a.example.org && reboot", "user": "alice"},
    {"name": "lab", "host": "a.example.org", "user": "$(whoami)"},
    {"name": "lab", "host": "a.example.org", "user": "alice", "port": 70000},
])
def test_bad_entries_are_refused_and_nothing_is_written(home, kwargs):
    with pytest.raises(ValidationError) as info:
        servers.add(**kwargs)
    assert info.value.hint
    assert not servers.config_file().exists()


def test_a_corrupt_list_says_how_to_fix_it(home):
    servers.config_file().parent.mkdir(parents=True)
    servers.config_file().write_text("{not json")
    with pytest.raises(LabdeployError) as info:
        servers.list_servers()
    assert "move it away" in info.value.hint


def test_import_dallinger_hosts(home):
    hosts = home / ".dallinger" / "docker-ssh" / "hosts"
    hosts.mkdir(parents=True)
    (hosts / "lab.example.org").write_text(json.dumps({"host": "lab.example.org", "user": "alice"}))
    (hosts / "10.0.0.9").write_text(json.dumps({"host": "10.0.0.9", "user": "bob"}))
    (hosts / "evil").write_text(json.dumps({"host": "x; rm -rf /", "user": "bob"}))
    (hosts / "broken").write_text("{")
    servers.add("mine", "10.0.0.9", "bob")  # already registered under another name: not duplicated
    c = Collector()
    added = servers.import_dallinger_hosts(reporter=c)
    assert [(s.name, s.host, s.user) for s in added] == [("lab.example.org", "lab.example.org", "alice")]
    assert len(c.of(WarningEvent)) == 2
    assert servers.import_dallinger_hosts() == []  # a second import adds nothing
    assert sorted(s.name for s in servers.list_servers()) == ["lab.example.org", "mine"]


def test_import_without_dallinger_folder(home):
    assert servers.import_dallinger_hosts() == []
    assert not servers.config_file().exists()


def test_resolve_a_registered_name_to_a_working_remote(home, testbed, known_hosts):
    s = testbed["ssh"]
    servers.add("testbed", s["host"], s["user"], port=s["port"], key=s["key"])
    r = servers.resolve("testbed", known_hosts=known_hosts)
    try:
        assert r.run(["whoami"]).stdout.strip() == s["user"]
    finally:
        r.close()
    assert servers.resolve(r) is r
    with pytest.raises(servers.ServerNotFound):
        servers.resolve("nope")
    with pytest.raises(ValidationError):
        servers.resolve(42)


def test_by_name_a_call_closes_its_connection_and_a_front_ends_pool_keeps_one(home, testbed, monkeypatch):
    """The connection policy against the real sshd: `status("tb")` opens a connection and
    closes it when it returns; under a front end's pool (as in a CLI run) three calls share one
    connection, which closes with the pool."""
    from labdeploy.ssh import pool
    from labdeploy.watch import containers

    s = testbed["ssh"]
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "known_hosts").write_text(s["known_hosts_line"] + "\n")
    servers.add("tb", s["host"], s["user"], port=s["port"], key=s["key"])
    made, resolve = [], servers.resolve
    monkeypatch.setattr(servers, "resolve", lambda server, **kw: made.append(resolve(server, **kw)) or made[-1])

    containers.status("tb")
    (call,) = made
    assert call.stats["connections"] == 1 and call.stats["commands"] >= 1 and not call.connected

    with pool.Pool() as run, pool.using(run):
        for _ in range(3):
            containers.status("tb")
        assert len(made) == 2 and made[1].connected and made[1].stats["connections"] == 1
    assert not made[1].connected
