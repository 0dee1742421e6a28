"""Jump hosts without a server (issue 19 item 6): parsing and validating ProxyJump values, the
`jump` setting, how a Remote finds its way there (~/.ssh/config's ProxyJump and ProxyCommand),
the errors of each hop, the ProxyCommand socket, and the CLI's host-key rounds.

Nothing here connects anywhere: sockets are refused (`no_network`); the ProxyCommand tests run
local commands only.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import paramiko
import pytest

from labdeploy import names
from labdeploy.errors import (ConnectTimeout, HostUnreachable, LabdeployError, RemoteError, UnknownHostKey,
                              ValidationError)
from labdeploy.remote import Remote
from labdeploy.ssh import jump, servers


def ssh_config(home: Path, text: str) -> Path:
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    path = home / ".ssh" / "config"
    path.write_text(text)
    return path


def chain(remote) -> list:
    """[(user, host, port, role)] from the first hop to the server."""
    hops = []
    while remote is not None:
        hops.append((remote.user, remote.host, remote.port, remote.role))
        remote = remote.via
    return hops[::-1]


# ------------------------------------------------------------------ parsing and validating


@pytest.mark.parametrize("text,hops,canonical", [
    ("alice@bastion.example.org", [("alice", "bastion.example.org", None)], "alice@bastion.example.org"),
    ("bastion", [(None, "bastion", None)], "bastion"),
    ("alice@bastion:2222", [("alice", "bastion", 2222)], "alice@bastion:2222"),
    ("ssh://alice@bastion:22", [("alice", "bastion", 22)], "alice@bastion:22"),
    ("alice@[2001:db8::7]:2222", [("alice", "2001:db8::7", 2222)], "alice@[2001:db8::7]:2222"),
    ("[2001:db8::7]", [(None, "2001:db8::7", None)], "2001:db8::7"),
    ("2001:db8::7", [(None, "2001:db8::7", None)], "2001:db8::7"),
    ("a@hop1,b@hop2:2200", [("a", "hop1", None), ("b", "hop2", 2200)], "a@hop1,b@hop2:2200"),
    ("none", [], "none"),
])
def test_proxyjump_values_are_parsed_like_ssh_does(text, hops, canonical):
    assert names.jump_hops(text) == hops
    assert names.jump(text) == canonical
    assert names.jump(canonical) == canonical  # stored once, read back the same


@pytest.mark.parametrize("text", [
    "", " ", "a b", "alice@bastion ", "alice@bastion\n", "alice@bastion\rx", "-oProxyCommand=sh", "-J",
    "alice@-oProxyCommand=sh", "-l@bastion", "alice@bastion -p 2", "a@b;id", "a@b|id", "$(id)@b", "a@`id`",
    "a@b:22;x", "a@b:", "a@b:0", "a@b:65536", "a@b:-1", "a@b:+22", "a@b:２２", "a@b:٢٢", "[::1]x", "[::1",
    "a@@b", "@b", "a@", "x,,y", ",x", "x,", "a,b,c,d,e", "bästion", "fe80::1%$(id)", "b{x}", "a@b/c",
    "ssh://", "ssh://a@b/path", "a\x00b", "x" * 1001, "a@10.0.0.300",
])
def test_hostile_or_broken_proxyjump_values_are_refused(text):
    with pytest.raises(ValidationError) as info:
        names.jump(text)
    assert info.value.code == "invalid.jump" and "jump host" in info.value.message
    assert "user@host" in info.value.hint


def test_at_most_four_hops():
    assert len(names.jump_hops("a,b,c,d")) == names.JUMP_MAX_HOPS == 4
    with pytest.raises(ValidationError, match="at most 4"):
        names.jump_hops("a,b,c,d,e")


# ------------------------------------------------------------------ the server setting


def test_add_stores_the_jump_host_written_one_way(home, no_network):
    s = servers.add("lab", "10.0.3.2", "alice", jump="ssh://bob@bastion.example.org:2222")
    assert s.jump == "bob@bastion.example.org:2222" and s.label == "alice@10.0.3.2 via bob@bastion.example.org:2222"
    assert servers.get("lab") == s
    stored = json.loads(servers.config_file().read_text())["servers"][0]
    assert stored["jump"] == "bob@bastion.example.org:2222"
    assert servers.table().loc[0, "jump"] == "bob@bastion.example.org:2222"
    assert servers.add("plain", "lab.example.org", "alice").jump is None


@pytest.mark.parametrize("value", ["-oProxyCommand=sh", "a@b\nProxyCommand sh", "a b", "a@b;id"])
def test_add_refuses_a_hostile_jump_host_and_writes_nothing(home, no_network, value):
    with pytest.raises(ValidationError):
        servers.add("lab", "lab.example.org", "alice", jump=value)
    assert not servers.config_file().exists()


def test_an_old_server_list_without_jump_still_loads(home, no_network):
    path = servers.config_file()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "servers": [
        {"name": "lab", "host": "lab.example.org", "port": 22, "user": "alice", "key": None}]}))
    s = servers.get("lab")
    assert s.jump is None and s.label == "alice@lab.example.org"
    r = servers.resolve("lab")
    assert r.via is None and r.jump is None


def test_a_hand_edited_hostile_jump_is_refused_when_used(home, no_network):
    path = servers.config_file()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "servers": [
        {"name": "lab", "host": "lab.example.org", "port": 22, "user": "alice", "key": None,
         "jump": "x -oProxyCommand=sh"}]}))
    with pytest.raises(ValidationError):
        servers.resolve("lab")


def test_resolve_reaches_the_server_through_its_jump_host(home, no_network, tmp_path):
    key = tmp_path / "id_lab"
    servers.add("lab", "10.0.3.2", "alice", key=key, jump="bob@bastion.example.org:2222")
    r = servers.resolve("lab", passphrase="secret words")
    assert chain(r) == [("bob", "bastion.example.org", 2222, "jump host"), ("alice", "10.0.3.2", 22, "server")]
    assert r.via.key_filename == str(key) and r.via._passphrase == "secret words"  # the server's key, for both
    assert r.via.known_hosts == r.known_hosts and r.via._password is None
    assert r.via.on_the_way_to == "10.0.3.2" and "via bob@bastion.example.org:2222" in repr(r)


# ------------------------------------------------------------------ ~/.ssh/config


def test_proxyjump_from_ssh_config_with_the_jump_hosts_own_settings(home, no_network):
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_bastion").write_text("not read here")
    ssh_config(home, "Host lab\n    HostName 10.0.3.2\n    User alice\n    ProxyJump bastion\n"
                     "Host bastion\n    HostName bastion.example.org\n    User bob\n    Port 2222\n"
                     "    IdentityFile ~/.ssh/id_bastion\n")
    r = Remote("lab", key_filename="/keys/lab", passphrase="for /keys/lab")
    assert r.jump == "bastion"
    assert chain(r) == [("bob", "bastion.example.org", 2222, "jump host"), ("alice", "10.0.3.2", 22, "server")]
    assert r.via.key_filename == str(home / ".ssh" / "id_bastion")  # its own IdentityFile first
    assert r.via._passphrase is None  # the passphrase was for another key


def test_a_jump_host_without_a_user_logs_in_as_the_local_user(home, no_network, monkeypatch):
    monkeypatch.setenv("USER", "localme")
    r = Remote("10.0.3.2", user="alice", jump="bastion.example.org")
    assert r.via.user == "localme"  # like ssh -J: not the server's user


def test_the_setting_wins_over_ssh_config_and_none_turns_it_off(home, no_network):
    ssh_config(home, "Host lab\n    HostName 10.0.3.2\n    ProxyJump config-bastion\n"
                     "Host piped\n    ProxyCommand nc %h %p\n")
    assert Remote("lab", user="a", jump="other-bastion").via.host == "other-bastion"
    off = Remote("lab", user="a", jump="none")
    assert off.via is None and off.jump is None and off.proxy_command is None
    piped = Remote("piped", user="a")
    assert piped.proxy_command == "nc piped 22" and piped.via is None  # %h %p expanded by paramiko
    assert Remote("piped", user="a", jump="none").proxy_command is None


def test_a_hostile_proxyjump_line_in_ssh_config_names_the_file(home, no_network):
    path = ssh_config(home, "Host lab\n    ProxyJump -oProxyCommand=sh\n")
    with pytest.raises(ValidationError) as info:
        Remote("lab", user="a")
    assert str(path) in info.value.message and info.value.code == "invalid.jump"


def test_a_jump_host_sent_through_itself_is_refused(home, no_network):
    ssh_config(home, "Host *\n    ProxyJump bastion\n")
    with pytest.raises(LabdeployError) as info:
        Remote("lab.example.org", user="a")
    assert info.value.code == "ssh.jump.loop" and "circle" in info.value.message
    assert "ProxyJump none" in info.value.hint
    ssh_config(home, "Host bastion\n    ProxyJump none\nHost *\n    ProxyJump bastion\n")
    assert chain(Remote("lab.example.org", user="a"))[0][1] == "bastion"  # the usual fix works


def test_a_chain_in_the_setting_may_name_one_host_twice_but_not_run_too_deep(home, no_network):
    r = Remote("10.0.3.2", user="a", jump="x@hop,y@hop")
    assert [h[:2] for h in chain(r)] == [("x", "hop"), ("y", "hop"), ("a", "10.0.3.2")]
    ssh_config(home, "Host h1\n    ProxyJump h0\nHost h0\n    ProxyJump hz\n")
    with pytest.raises(LabdeployError) as info:  # 3 in the setting, 2 more from ~/.ssh/config
        Remote("10.0.3.2", user="a", jump="h1,h2,h3")
    assert info.value.code == "ssh.jump.loop"


# ------------------------------------------------------------------ each hop's errors


class FakeTransport:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.asked: list = []

    def open_channel(self, kind, dest, src, timeout=None):
        self.asked.append((kind, dest))
        raise self.exc


@pytest.mark.parametrize("exc,cls,code,words", [
    (paramiko.ChannelException(1, "administratively prohibited"), RemoteError, "ssh.jump.forwarding_refused",
     "refused to forward"),
    (paramiko.ChannelException(2, "Connection refused"), HostUnreachable, "ssh.jump.target_unreachable",
     "could not reach 10.0.3.2:22 (Connection refused)"),
    (paramiko.SSHException("Timeout opening channel."), ConnectTimeout, "ssh.jump.target_timeout",
     "did not connect to 10.0.3.2:22 within 7 s"),
    (EOFError(), HostUnreachable, "ssh.unreachable", "broke while opening the way to 10.0.3.2:22"),
])
def test_the_way_through_the_jump_host_says_which_hop_failed(exc, cls, code, words):
    t = FakeTransport(exc)
    with pytest.raises(cls) as info:
        jump.open_direct_tcpip(t, "bob@bastion", "10.0.3.2", 22, 7.0)
    assert info.value.code == code and words in info.value.message and "bob@bastion" in info.value.message
    assert info.value.hint
    assert t.asked == [("direct-tcpip", ("10.0.3.2", 22))]


def test_a_jump_hosts_own_failures_name_it(home, monkeypatch):
    def refused(*args, **kwargs):
        raise ConnectionRefusedError()

    monkeypatch.setattr(socket, "create_connection", refused)
    r = Remote("10.0.3.2", user="alice", jump="bob@bastion.example.org:2222", use_agent=False)
    with pytest.raises(HostUnreachable) as info:
        r.connect()
    assert info.value.message == ("bastion.example.org refused the connection on port 2222 "
                                  "(the jump host on the way to 10.0.3.2).")
    assert "jump host's SSH service" in info.value.hint


def test_an_unknown_jump_host_key_is_asked_about_as_the_jump_hosts(tmp_path):
    from labdeploy.ssh.hostkeys import RaiseOnUnknown

    key = paramiko.Ed25519Key.from_private_key_file(_keygen(tmp_path / "k"))
    with pytest.raises(UnknownHostKey) as info:
        RaiseOnUnknown(22, tmp_path / "kh", "jump host", "10.0.3.2").missing_host_key(None, "bastion", key)
    e = info.value
    assert e.role == "jump host" and e.code == "ssh.host_key.unknown"
    assert e.message.startswith("The jump host bastion (port 22, on the way to 10.0.3.2) is not known yet.")
    assert e.remedy.key == "ssh.host_key.confirm.jump" and "trust_host_key" in e.hint
    with pytest.raises(UnknownHostKey) as info:
        RaiseOnUnknown(22, tmp_path / "kh").missing_host_key(None, "lab", key)
    assert info.value.role == "server" and info.value.remedy.key == "ssh.host_key.confirm"


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)


# ------------------------------------------------------------------ ProxyCommand


def test_the_proxycommand_socket_carries_bytes_and_ends_cleanly():
    s = jump.ProxyCommandSocket("cat")
    s.settimeout(5)
    assert s.send(b"SSH-2.0-test\r\n") == 14
    assert s.recv(100) == b"SSH-2.0-test\r\n"
    process = s.process
    s.close()
    assert process.poll() is not None  # reaped, no zombie left


def test_a_proxycommand_that_ends_is_an_end_of_the_connection_with_its_words():
    s = jump.ProxyCommandSocket("sh -c 'echo cannot reach it >&2; exit 3'")
    s.settimeout(5)
    assert s.recv(100) == b""  # paramiko reads this as a closed connection, at once
    with pytest.raises(EOFError):
        for _ in range(50):  # the pipe breaks once the command is gone
            s.send(b"x" * 65536)
    assert s.failure() == "it exited with status 3; it said: cannot reach it"
    error = jump.proxy_command_failed(s, "lab", "~/.ssh/config", "10.0.3.2", 22, EOFError())
    assert error.code == "ssh.proxy_command.failed" and "cannot reach it" in error.message
    assert "without a shell" in error.hint
    s.close()


def test_a_proxycommand_that_cannot_start_says_so():
    with pytest.raises(HostUnreachable) as info:
        jump.start_proxy_command("/nonexistent/proxy %h", "lab", "~/.ssh/config")
    assert "could not be started" in info.value.message and "sh -c" in info.value.hint


def test_a_remote_over_a_proxycommand_that_fails(home):
    ssh_config(home, "Host lab\n    HostName 10.0.3.2\n    ProxyCommand sh -c 'echo no route >&2; exit 1'\n")
    r = Remote("lab", user="alice", use_agent=False)
    with pytest.raises(HostUnreachable) as info:
        r.connect()
    assert "ProxyCommand for lab" in info.value.message and "no route" in info.value.message
    with pytest.raises(HostUnreachable):
        r.host_key_status()


# ------------------------------------------------------------------ the command line


class Rounds:
    """A Remote whose connect() asks about each key of `keys` in turn ([(role, host, fp)])."""

    def __init__(self, keys):
        self.keys = list(keys)
        self.trusted: list = []
        self.known_hosts = "/tmp/kh"
        self.via = None

    def connect(self):
        if len(self.trusted) < len(self.keys):
            role, host, fp = self.keys[len(self.trusted)]
            raise UnknownHostKey(f"The {role} {host} is not known yet.", host=host, port=22, key_type="ssh-ed25519",
                                 fingerprint=fp, role=role)
        return self

    def trust_host_key(self, fp):
        self.trusted.append(fp)


KEYS = [("jump host", "bastion", "SHA256:bastion"), ("server", "10.0.3.2", "SHA256:server")]


def test_cli_trusts_one_key_per_hop_when_each_is_given(monkeypatch):
    from labdeploy.cli import _app

    monkeypatch.setenv("LABDEPLOY_NONINTERACTIVE", "1")
    r = Rounds(KEYS)
    assert _app.connect(r, trust=("SHA256:bastion", "SHA256:server")) is r
    assert r.trusted == ["SHA256:bastion", "SHA256:server"]


def test_cli_asks_for_the_next_key_once_the_jump_hosts_is_trusted(monkeypatch):
    from labdeploy.cli import _app
    from labdeploy.cli._ui import CliError, NeedsConfirmation

    monkeypatch.setenv("LABDEPLOY_NONINTERACTIVE", "1")
    r = Rounds(KEYS)
    with pytest.raises(NeedsConfirmation) as info:
        _app.connect(r, trust=("SHA256:bastion",), has_trust_option=True)
    assert r.trusted == ["SHA256:bastion"]
    assert "The server 10.0.3.2" in info.value.message and "--trust-host-key SHA256:server" in info.value.hint
    with pytest.raises(NeedsConfirmation) as info:
        _app.connect(Rounds(KEYS), trust=())
    assert "The jump host bastion" in info.value.message and "jump host's administrator" in info.value.hint
    with pytest.raises(CliError) as info:  # a fingerprint given for this key that does not match
        _app.connect(Rounds(KEYS), trust=("SHA256:wrong",))
    assert "not the SHA256:wrong you gave" in info.value.message


def test_cli_servers_add_jump_without_verifying(home, no_network, capsys):
    from labdeploy.cli import main

    code = main(["servers", "add", "lab", "--host", "10.0.3.2", "--user", "alice", "--jump",
                 "bob@bastion.example.org:2222", "--no-verify", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["jump"] == "bob@bastion.example.org:2222"
    assert servers.get("lab").jump == "bob@bastion.example.org:2222"
    code = main(["servers", "add", "bad", "--host", "10.0.3.2", "--user", "alice", "--jump", "-oProxyCommand=sh",
                 "--no-verify"])
    out = capsys.readouterr()
    assert code == 2 and "jump host" in out.err and "Traceback" not in out.err
    assert [s.name for s in servers.list_servers()] == ["lab"]
