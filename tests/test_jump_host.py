"""Servers behind a jump host (issue 19 item 6), against the testbed's bastion.

The testbed's bastion (`scripts/testbed up`: namespace labtbj, sshd at 10.250.2.2, user
labjump) stands in front of the server's second address 10.250.3.2, which this machine has no
route to. Everything here reaches the server only through the bastion: the API journey with
the `jump` setting and with ~/.ssh/config's ProxyJump (register, confirm both host keys,
deploy examples/stroop, status, export, destroy), the host-key refusals, each hop's failure,
ProxyCommand, a chain, reconnecting, the command line and the setup panel.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from deploy_support import EXAMPLE, deploy_kwargs, destroy_if_deployed, prepare_local_stack
from test_cli_support import CLI, Terminal
from labdeploy import export
from labdeploy.app import apps, deploy
from labdeploy.errors import (AuthenticationFailed, ChangedHostKey, ConnectTimeout, HostUnreachable, LabdeployError,
                              UnknownHostKey)
from labdeploy.remote import Remote
from labdeploy.ssh import connection, keys, servers
from labdeploy.watch import monitor

# The testbed's bastion stands in front of the bookworm server only.
pytestmark = pytest.mark.servers("bookworm")

APP = "jmp-stroop"
APP_CFG = "jmp-stroop-cfg"


@pytest.fixture(scope="module")
def bastion(testbed) -> dict:
    view = testbed.get("servers", {}).get("bookworm", testbed)
    if "bastion" not in view:
        pytest.fail("The testbed has no bastion (no 'bastion' in its info file). Run `sudo scripts/testbed up` "
                    "from this checkout to add it.", pytrace=False)
    return view["bastion"]


@pytest.fixture
def tracked(monkeypatch):
    """Every channel a Remote asks a jump host to open towards a server, recorded."""
    opened: list = []
    real = connection.open_direct_tcpip

    def spy(transport, jump_label, host, port, timeout):
        opened.append((jump_label, host, port))
        return real(transport, jump_label, host, port, timeout)

    monkeypatch.setattr(connection, "open_direct_tcpip", spy)
    return opened


def jump_of(b: dict) -> str:
    return f"{b['user']}@{b['host']}"


def confirm_each_key(remote, expected: list[tuple[str, str]]) -> None:
    """Connect as a researcher would: each UnknownHostKey shows a fingerprint, which is checked
    (here against the testbed's) and trusted; `expected` is [(role, fingerprint)] in order."""
    for role, fp in expected:
        with pytest.raises(UnknownHostKey) as info:
            remote.connect()
        assert (info.value.role, info.value.fingerprint) == (role, fp), info.value
        assert info.value.code == "ssh.host_key.unknown"
        remote.trust_host_key(info.value.fingerprint)
    remote.connect()


def journey(remote, testbed: dict, app: str, tmp_path: Path) -> None:
    """Deploy examples/stroop through the bastion, look at it, export it, destroy it."""
    prepare_local_stack(remote, testbed)
    destroy_if_deployed(remote, app)
    try:
        result = deploy.deploy(EXAMPLE, app, remote, **deploy_kwargs(testbed))
        assert result.url == f"http://{app}.localhost/"
        row = apps.apps(remote).set_index("app").loc[app]
        assert row["state"] == "running", row
        status = monitor.status(remote, app)
        assert set(status["service"]) >= {"web", "worker", "clock", "redis"}, status
        data = export.export(app, remote, save_to=tmp_path / f"{app}.zip")
        assert {"participants", "responses"} <= set(data), sorted(data)
        assert (tmp_path / f"{app}.zip").exists()
        with apps.open_tunnel(remote, app) as tunnel:  # the researcher's browser, through both hops
            page = requests.get(f"http://127.0.0.1:{tunnel.local_port}/",
                                headers={"Host": f"{app}.localhost:{tunnel.local_port}"}, timeout=15)
            assert page.status_code == 200 and "Colour naming study" in page.text
    finally:
        destroy_if_deployed(remote, app)
    assert app not in set(apps.apps(remote)["app"])


# ------------------------------------------------------------------ the testbed's shape


def test_the_server_behind_the_bastion_has_no_route_from_here(bastion):
    target = bastion["target"]
    route = subprocess.run(["ip", "route", "get", target["host"]], capture_output=True, text=True)
    assert route.returncode != 0 or "unreachable" in route.stdout, route.stdout  # no way there from here
    assert "unreachable" in subprocess.run(["ip", "route", "show", bastion["behind_network"]],
                                           capture_output=True, text=True).stdout
    with pytest.raises(OSError):
        socket.create_connection((target["host"], target["port"]), timeout=3).close()
    # labdeploy without the jump host: the same clear error as for any unreachable server.
    r = Remote(target["host"], target["port"], target["user"], key_filename=bastion["key"], use_agent=False,
               connect_timeout=3, ssh_config="/dev/null")
    with pytest.raises((HostUnreachable, ConnectTimeout)) as info:
        r.connect()
    assert target["host"] in info.value.message and "jump host" not in info.value.message
    # The bastion itself answers SSH.
    with socket.create_connection((bastion["host"], bastion["port"]), timeout=5) as s:
        assert s.recv(64).startswith(b"SSH-2.0-")


# ------------------------------------------------------------------ the API journey


def test_journey_with_the_jump_setting(home, testbed, bastion, tracked, tmp_path):
    target = bastion["target"]
    server = servers.add("jmp-tb", target["host"], target["user"], target["port"], key=bastion["key"],
                         jump=jump_of(bastion))
    assert servers.get("jmp-tb").jump == jump_of(bastion) and "via" in server.label
    assert servers.table().loc[0, "jump"] == jump_of(bastion)
    remote = servers.resolve("jmp-tb")
    try:
        # First contact: the jump host's key, then the server's, each confirmed like any server's.
        status = remote.host_key_status()
        assert (status.state, status.role, status.host) == ("unknown", "jump host", bastion["host"])
        confirm_each_key(remote, [("jump host", bastion["host_key_fingerprint"]),
                                  ("server", target["host_key_fingerprint"])])
        known = (home / ".ssh" / "known_hosts").read_text()
        assert bastion["known_hosts_line"] in known and target["known_hosts_line"] in known
        assert [s.role for s in remote.host_key_statuses()] == ["jump host", "server"]
        assert remote.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()[2] == target["host"]

        journey(remote, testbed, APP, tmp_path)

        # A dropped connection reconnects through the bastion again; closing closes both.
        before = remote.via.stats["connections"]
        remote._client.get_transport().close()
        assert remote.run(["true"]).ok
        assert remote.via.stats["connections"] == before + 1 and remote.via.connected
        remote.via._client.get_transport().close()  # the bastion drops: the server's link goes with it
        assert remote.run(["true"]).ok and remote.via.connected
        assert all(hop == (jump_of(bastion), target["host"], target["port"]) for hop in tracked)
    finally:
        remote.close()
    assert not remote.connected and not remote.via.connected


def test_journey_through_ssh_config_proxyjump(home, testbed, bastion, tracked, tmp_path):
    target = bastion["target"]
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    (home / ".ssh" / "config").write_text(
        "Host jmp-behind\n"
        f"    HostName {target['host']}\n"
        f"    User {target['user']}\n"
        f"    IdentityFile {bastion['key']}\n"
        f"    ProxyJump {jump_of(bastion)}\n")
    servers.add("jmp-cfg", "jmp-behind", target["user"])  # no jump setting: ~/.ssh/config decides
    remote = servers.resolve("jmp-cfg")
    try:
        assert remote.jump == jump_of(bastion) and remote.host == target["host"]
        assert remote.via.key_filename == bastion["key"]  # the server's key, for the bastion too
        confirm_each_key(remote, [("jump host", bastion["host_key_fingerprint"]),
                                  ("server", target["host_key_fingerprint"])])
        journey(remote, testbed, APP_CFG, tmp_path)
        assert tracked and tracked[0][1:] == (target["host"], target["port"])
    finally:
        remote.close()


# ------------------------------------------------------------------ host keys of the jump host


def test_an_unknown_bastion_key_is_refused_before_anything_reaches_the_server(home, bastion, tracked):
    target = bastion["target"]
    r = Remote(target["host"], target["port"], target["user"], key_filename=bastion["key"], use_agent=False,
               jump=jump_of(bastion))
    with pytest.raises(UnknownHostKey) as info:
        r.connect()
    e = info.value
    assert (e.role, e.host, e.port, e.fingerprint) == ("jump host", bastion["host"], bastion["port"],
                                                     bastion["host_key_fingerprint"])
    assert "jump host" in e.message and target["host"] in e.message and "trust_host_key" in e.hint
    assert tracked == [] and not r.connected  # nothing asked the bastion to reach the server
    assert not (home / ".ssh" / "known_hosts").exists()
    # A wrong fingerprint for the jump host is refused; nothing is stored.
    with pytest.raises(ChangedHostKey) as wrong:
        r.trust_host_key(target["host_key_fingerprint"])  # the server's, given while the jump host is asked
    assert wrong.value.code == "ssh.host_key.mismatch" and "jump host" in wrong.value.message
    assert not (home / ".ssh" / "known_hosts").exists() and tracked == []
    r.close()


def test_a_changed_bastion_key_is_refused_like_a_servers(home, bastion, tracked):
    target = bastion["target"]
    other = Path(bastion["key"] + ".pub").read_text().split()[:2]  # a real key, not the bastion's
    kh = home / ".ssh" / "known_hosts"
    kh.parent.mkdir(mode=0o700)
    kh.write_text(f"{bastion['host']} {other[0]} {other[1]}\n{target['known_hosts_line']}\n")
    r = Remote(target["host"], target["port"], target["user"], key_filename=bastion["key"], use_agent=False,
               jump=jump_of(bastion))
    with pytest.raises(ChangedHostKey) as info:
        r.connect()
    assert info.value.code == "ssh.host_key.changed" and info.value.role == "jump host"
    assert info.value.host == bastion["host"] and "different host key" in info.value.message
    assert tracked == [] and kh.read_text().count("\n") == 2
    with pytest.raises(ChangedHostKey):
        r.trust_host_key(bastion["host_key_fingerprint"])  # forgetting the old key is a deliberate step
    r.close()


# ------------------------------------------------------------------ each hop's failure


@pytest.fixture
def trusted_both(home, bastion) -> Path:
    kh = home / ".ssh" / "known_hosts"
    kh.parent.mkdir(mode=0o700, exist_ok=True)
    kh.write_text(bastion["known_hosts_line"] + "\n" + bastion["target"]["known_hosts_line"] + "\n")
    return kh


def behind(bastion, jump=None, host=None, port=None, **kw) -> Remote:
    t = bastion["target"]
    return Remote(host or t["host"], port or t["port"], t["user"], key_filename=bastion["key"], use_agent=False,
                  jump=jump or jump_of(bastion), **kw)


def test_a_bastion_that_is_down_says_so(trusted_both, bastion):
    # Its sshd does not run (nothing listens on that port): refused.
    r = behind(bastion, jump=f"{bastion['user']}@{bastion['host']}:2222")
    with pytest.raises(HostUnreachable) as info:
        r.connect()
    assert "refused the connection on port 2222" in info.value.message
    assert f"jump host on the way to {bastion['target']['host']}" in info.value.message
    assert "jump host's SSH service" in info.value.hint
    # The machine is down (nobody has that address): no answer.
    started = time.monotonic()
    r = behind(bastion, jump=f"{bastion['user']}@10.250.2.9", connect_timeout=4)
    with pytest.raises((ConnectTimeout, HostUnreachable)) as info:
        r.connect()
    assert "10.250.2.9" in info.value.message and "jump host" in info.value.message
    assert time.monotonic() - started < 30


def test_a_bastion_that_refuses_the_login_says_so(trusted_both, bastion):
    r = behind(bastion, jump=f"labdeploy@{bastion['host']}")  # not allowed on the bastion
    with pytest.raises(AuthenticationFailed) as info:
        r.connect()
    assert info.value.code == "ssh.jump.auth"
    assert f"The jump host {bastion['host']} refused to log in labdeploy" in info.value.message
    assert "authorized_keys" in info.value.hint and "ssh-copy-id" in info.value.hint


def test_a_server_the_bastion_cannot_reach_says_so(trusted_both, bastion):
    target = bastion["target"]
    r = behind(bastion, port=2222)  # the bastion gets there, nothing listens
    with pytest.raises(HostUnreachable) as info:
        r.connect()
    assert info.value.code == "ssh.jump.target_unreachable"
    assert f"The jump host {jump_of(bastion)} could not reach {target['host']}:2222" in info.value.message
    assert "as the jump host sees them" in info.value.hint
    r.close()
    r = behind(bastion, host="10.250.3.9", connect_timeout=5)  # nobody has that address behind it
    with pytest.raises((HostUnreachable, ConnectTimeout)) as info:
        r.connect()
    assert info.value.code in ("ssh.jump.target_unreachable", "ssh.jump.target_timeout")
    assert "10.250.3.9" in info.value.message and jump_of(bastion) in info.value.message
    assert r.via.connected  # the bastion itself was fine
    r.close()
    assert not r.via.connected


# ------------------------------------------------------------------ other ways there


def test_proxycommand_from_ssh_config(home, bastion, trusted_both):
    target = bastion["target"]
    (home / ".ssh" / "config").write_text(
        "Host jmp-pc\n"
        f"    HostName {target['host']}\n"
        f"    ProxyCommand ssh -q -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={trusted_both} "
        f"-i {bastion['key']} -W %h:%p {jump_of(bastion)}\n"
        "Host jmp-pc-broken\n"
        f"    HostName {target['host']}\n"
        "    ProxyCommand sh -c 'echo no way through >&2; exit 3'\n")
    r = Remote("jmp-pc", user=target["user"], key_filename=bastion["key"], use_agent=False)
    try:
        assert r.proxy_command and r.via is None
        assert r.host_key_status().state == "known"  # the server's key, read through the command
        assert r.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()[2] == target["host"]
        process = r._proxy.process
    finally:
        r.close()
    assert process.poll() is not None  # closing ends the command
    broken = Remote("jmp-pc-broken", user=target["user"], key_filename=bastion["key"], use_agent=False)
    with pytest.raises(HostUnreachable) as info:
        broken.connect()
    assert info.value.code == "ssh.proxy_command.failed"
    assert "ProxyCommand for jmp-pc-broken" in info.value.message and "no way through" in info.value.message


def test_a_chain_of_two_jump_hosts(home, bastion, trusted_both, tracked):
    # Two names for the one bastion: the second hop is reached through the first.
    (home / ".ssh" / "config").write_text(
        f"Host jmp-hop1 jmp-hop2\n    HostName {bastion['host']}\n    User {bastion['user']}\n")
    r = behind(bastion, jump="jmp-hop1,jmp-hop2")
    try:
        assert r.run(["true"]).ok
        assert [t[1] for t in tracked] == [bastion["host"], bastion["target"]["host"]]
        assert r.via.via is not None and r.via.via.via is None
    finally:
        r.close()
    assert not r.via.connected and not r.via.via.connected


def test_a_ssh_config_that_sends_the_bastion_through_itself_is_refused(home, bastion):
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "config").write_text(f"Host *\n    ProxyJump {jump_of(bastion)}\n")
    with pytest.raises(LabdeployError) as info:
        Remote(bastion["target"]["host"], user="labdeploy")
    assert info.value.code == "ssh.jump.loop" and "ProxyJump none" in info.value.hint


# ------------------------------------------------------------------ keys, CLI, panel


def test_first_contact_helpers_ask_hop_by_hop(home, bastion):
    target = bastion["target"]
    ask = dict(jump=jump_of(bastion), key_path=bastion["key"])
    first = keys.host_key_status(target["host"], target["port"], **ask)
    assert (first.role, first.fingerprint) == ("jump host", bastion["host_key_fingerprint"])
    keys.trust_host_key(target["host"], target["port"], first.fingerprint, **ask)
    second = keys.host_key_status(target["host"], target["port"], **ask)
    assert (second.role, second.state, second.fingerprint) == ("server", "unknown", target["host_key_fingerprint"])
    keys.trust_host_key(target["host"], target["port"], second.fingerprint, **ask)
    assert keys.host_key_status(target["host"], target["port"], **ask).state == "known"
    r = keys.verify_key_login(target["host"], target["user"], bastion["key"], jump=jump_of(bastion))
    try:
        assert r.run(["whoami"]).stdout.strip() == target["user"]
    finally:
        r.close()
    # ssh-copy-id through the bastion: the password goes to the server only.
    added = keys.copy_key(target["host"], target["user"], _password(), bastion["key"], jump=jump_of(bastion))
    assert added is False  # the testbed key is installed already


def _password() -> str:
    import json

    from conftest import TESTBED_FILE

    return json.loads(TESTBED_FILE.read_text())["ssh"]["password"]


def test_cli_servers_add_with_jump(testbed, bastion, tmp_path):
    cli = CLI(tmp_path)
    target = bastion["target"]
    add = ("servers", "add", "jmp-cli", "--host", target["host"], "--user", target["user"], "--key", bastion["key"],
           "--jump", jump_of(bastion))
    # Without confirmation: the jump host's key is asked about first, nothing is stored.
    r = cli(*add)
    assert r.code == 4, str(r)
    assert bastion["host_key_fingerprint"] in r.err and "jump host" in r.err and "--trust-host-key" in r.err
    assert not (tmp_path / ".ssh" / "known_hosts").exists()
    # Hostile values are refused before anything connects.
    for bad in ("-oProxyCommand=sh", "labjump@10.250.2.2 -p 2", "a@b;id", "a@b\nc"):
        r = cli("servers", "add", "jmp-bad", "--host", target["host"], "--user", target["user"], "--jump", bad)
        assert r.code == 2 and "jump host" in r.err and "Traceback" not in r.err, str(r)
    # Both fingerprints, for a script: registered.
    r = cli(*add, "--trust-host-key", bastion["host_key_fingerprint"], "--trust-host-key",
            target["host_key_fingerprint"], "--json")
    assert r.code == 0, str(r)
    assert r.json()["jump"] == jump_of(bastion)
    listed = cli.ok("servers", "list", "--json").json()
    assert listed[0]["jump"] == jump_of(bastion)
    r = cli("servers", "check", "--server", "jmp-cli", "--json", timeout=300)
    assert r.code in (0, 3) and "Traceback" not in r.err, str(r)  # 3: the server lacks something (others' state)
    rows = {row["id"]: row for row in r.json()}
    assert rows["ssh_login"]["ok"] and rows["docker_usable"]["ok"], rows  # logged in through the bastion
    assert target["host"] in rows["ssh_login"]["detail"]


def test_cli_at_a_terminal_asks_for_the_jump_hosts_key_then_the_servers(testbed, bastion, tmp_path):
    cli = CLI(tmp_path)
    target = bastion["target"]
    t = Terminal(cli, "servers", "add", "jmp-term", "--host", target["host"], "--user", target["user"], "--key",
                 bastion["key"], "--jump", jump_of(bastion))
    t.expect("Trust this jump host? [y/N]")
    assert bastion["host_key_fingerprint"] in t.buffer
    t.send("y\n")
    t.expect("Trust this server? [y/N]")
    assert target["host_key_fingerprint"] in t.buffer
    t.send("y\n")
    assert t.wait() == 0, t.buffer
    assert "Registered jmp-term" in t.buffer and "Traceback" not in t.buffer
    # A second run from the same computer asks nothing.
    r = cli("servers", "add", "jmp-term2", "--host", target["host"], "--user", target["user"], "--key",
            bastion["key"], "--jump", jump_of(bastion), "--trust-host-key", bastion["host_key_fingerprint"])
    assert r.code == 0, str(r)


def test_setup_panel_with_a_jump_host(home, testbed, bastion, monkeypatch):
    from tests.conftest import TESTBED_FILE
    from labdeploy.widgets.setup import SetupPanel

    monkeypatch.setenv("LABDEPLOY_TESTBED", str(TESTBED_FILE))
    target = bastion["target"]
    p = SetupPanel(server_name="jmp-panel", host=target["host"], port=target["port"], user=target["user"],
                   key_path=bastion["key"], jump=jump_of(bastion))

    def click(button):
        button.click()
        if p.last_task is not None:
            p.last_task.join(120)
            assert not p.last_task.is_alive()

    click(p.check_host_button)
    assert p.steps.state("Host key") == "pending", p.message.value
    assert bastion["host_key_fingerprint"] in p.fingerprint_html.value and "jump host" in p.fingerprint_html.value
    click(p.trust_host_button)  # the jump host's key; the server's is asked for at once
    assert p.steps.state("Host key") == "pending", p.message.value
    assert target["host_key_fingerprint"] in p.fingerprint_html.value and "jump host" not in p.fingerprint_html.value
    click(p.trust_host_button)
    assert p.steps.state("Host key") == "done", p.message.value
    click(p.verify_button)
    assert p.steps.state("Verify login") == "done", p.message.value
    click(p.register_button)
    assert p.steps.state("Register") == "done", p.message.value
    assert servers.get("jmp-panel").jump == jump_of(bastion)
    p.close()
    assert p.remote is None


def test_wrong_jump_values_in_the_panel_fail_the_step_clearly(home, testbed, bastion, monkeypatch):
    from labdeploy.widgets.setup import SetupPanel

    p = SetupPanel(server_name="jmp-panel", host=bastion["target"]["host"], user="labdeploy",
                   key_path=bastion["key"], jump="-oProxyCommand=sh")
    p.check_host_button.click()
    p.last_task.join(60)
    assert p.steps.state("Host key") == "failed" and "jump host" in p.message.value
    assert not (home / ".ssh" / "known_hosts").exists()
