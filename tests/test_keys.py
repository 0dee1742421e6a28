"""SSH keys against real tools: OpenSSH's ssh-keygen / ssh-agent / ssh-add locally, the testbed's
sshd remotely. The copy-key tests use the `labnodocker` account (same password as the others)
and remove only the key lines they added."""

import os
import signal
import stat
import subprocess
import time
import uuid

import pytest

from labdeploy.ssh import keys
from labdeploy import names
from labdeploy.errors import (AuthenticationFailed, ChangedHostKey, ConnectTimeout, DNSFailure, HostUnreachable, ValidationError)
from labdeploy.remote import Remote


# --------------------------------------------------------------------------- local keys

def test_generate_key_is_a_valid_openssh_ed25519_pair_with_safe_modes(home):
    k = keys.generate_key(passphrase="correct horse")
    assert k.path == home / ".ssh" / "id_ed25519"
    assert stat.S_IMODE(os.stat(k.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(home / ".ssh").st_mode) == 0o700
    assert k.path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    # OpenSSH itself opens it with the passphrase and derives the same public key.
    derived = subprocess.run(["ssh-keygen", "-y", "-P", "correct horse", "-f", str(k.path)],
                             capture_output=True, text=True, check=True).stdout.split()[:2]
    assert derived == k.public_path.read_text().split()[:2]
    fp = subprocess.run(["ssh-keygen", "-lf", str(k.public_path)], capture_output=True, text=True,
                        check=True).stdout.split()[1]
    assert fp == k.fingerprint
    assert [f.fingerprint for f in keys.find_keys()] == [k.fingerprint]
    assert keys.find_keys()[0].encrypted is True
    assert list(keys.keys_table()["fingerprint"]) == [k.fingerprint]


def test_generate_without_passphrase_opens_without_one(home):
    k = keys.generate_key(home / ".ssh" / "lab_key", comment="t-setup")
    subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(k.path)], capture_output=True, check=True)
    assert k.comment == "t-setup" and k.encrypted is False


@pytest.mark.parametrize("which", ["private", "public"])
def test_existing_key_file_is_never_overwritten(home, which):
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    target = ssh / ("id_ed25519" if which == "private" else "id_ed25519.pub")
    target.write_text("precious\n")
    before = sorted(p.name for p in ssh.iterdir())
    with pytest.raises(keys.KeyExists) as info:
        keys.generate_key()
    assert "another file name" in info.value.hint
    assert target.read_text() == "precious\n"
    assert sorted(p.name for p in ssh.iterdir()) == before  # nothing half-written, no temp files


def test_wrong_passphrase(home):
    k = keys.generate_key(passphrase="right-one")
    with pytest.raises(keys.BadPassphrase) as info:
        keys.load_private_key(k.path, "wrong-one")
    assert info.value.hint
    with pytest.raises(keys.BadPassphrase):
        keys.load_private_key(k.path, None)


# --------------------------------------------------------------------------- ssh-agent

@pytest.fixture
def agent(home, tmp_path, monkeypatch):
    """A real ssh-agent, started by this test and stopped by its pid."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    yield sock
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=5)


def _ssh_add_list() -> str:
    return subprocess.run(["ssh-add", "-l"], capture_output=True, text=True).stdout


def test_add_encrypted_key_to_agent(agent):
    k = keys.generate_key(passphrase="agent-pass")
    assert keys.agent_fingerprints() == []
    assert keys.add_to_agent(k.path, "agent-pass") == k.fingerprint
    assert k.fingerprint in _ssh_add_list()  # the real ssh-add sees it
    assert keys.agent_fingerprints() == [k.fingerprint]


def test_wrong_passphrase_adds_nothing_to_agent(agent):
    k = keys.generate_key(passphrase="agent-pass")
    with pytest.raises(keys.BadPassphrase):
        keys.add_to_agent(k.path, "nope-nope")
    assert keys.agent_fingerprints() == []


@pytest.mark.parametrize("kind", [["-t", "rsa", "-b", "2048"], ["-t", "ecdsa"]])
def test_other_key_types_reach_the_agent(agent, home, kind):
    path = home / "other_key"
    subprocess.run(["ssh-keygen", "-q", *kind, "-N", "", "-f", str(path)], check=True)
    fp = keys.add_to_agent(path)
    assert fp in _ssh_add_list()


def test_agent_lifetime_constraint_is_accepted(agent):
    k = keys.generate_key()
    keys.add_to_agent(k.path, lifetime=600)
    assert k.fingerprint in _ssh_add_list()


def test_no_agent_is_a_clear_error(home, tmp_path, monkeypatch):
    k = keys.generate_key(passphrase="whatever1")
    with pytest.raises(keys.NoAgent) as info:
        keys.add_to_agent(k.path, "whatever1")
    assert "SSH_AUTH_SOCK" in info.value.message and "ssh-agent" in info.value.hint
    assert not keys.agent_running()
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "gone.sock"))
    with pytest.raises(keys.NoAgent) as info:
        keys.agent_fingerprints()
    assert "does not answer" in info.value.message


# --------------------------------------------------------------------------- host keys

def test_first_contact_shows_fingerprint_then_trust(testbed, home):
    kh = home / ".ssh" / "known_hosts"
    status = keys.host_key_status(testbed["ssh"]["host"], testbed["ssh"]["port"], kh)
    assert status.state == "unknown"
    assert status.fingerprint == testbed["ssh"]["host_key_fingerprint"]
    assert not kh.exists()  # nothing stored before confirmation
    keys.trust_host_key(testbed["ssh"]["host"], testbed["ssh"]["port"], status.fingerprint, kh)
    assert keys.host_key_status(testbed["ssh"]["host"], testbed["ssh"]["port"], kh).state == "known"
    assert stat.S_IMODE(os.stat(kh).st_mode) == 0o600


def test_changed_host_key_is_refused_and_known_hosts_left_alone(testbed, home):
    kh = home / ".ssh" / "known_hosts"
    kh.parent.mkdir(mode=0o700)
    other = home / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh.write_text(f"{testbed['ssh']['host']} {other.with_suffix('.pub').read_text().split()[0]} "
                  f"{other.with_suffix('.pub').read_text().split()[1]}\n")
    before = kh.read_bytes()
    status = keys.host_key_status(testbed["ssh"]["host"], 22, kh)
    assert status.state == "changed" and status.expected_fingerprint != status.fingerprint
    with pytest.raises(ChangedHostKey) as info:
        keys.copy_key(testbed["ssh"]["host"], testbed["ssh"]["user_nodocker"], testbed["ssh"]["password"],
                      known_hosts=kh, key_path=testbed["ssh"]["key"])
    assert "rebuilt" in info.value.hint
    with pytest.raises(ChangedHostKey):
        keys.trust_host_key(testbed["ssh"]["host"], 22, status.fingerprint, kh)
    assert kh.read_bytes() == before


def test_trusting_a_wrong_fingerprint_is_refused(testbed, home):
    kh = home / "kh"
    with pytest.raises(ChangedHostKey) as info:  # well formed, but another key's
        keys.trust_host_key(testbed["ssh"]["host"], 22, "SHA256:" + "A" * 43, kh)
    assert "does not match" in info.value.message
    with pytest.raises(ValidationError) as info:  # not a fingerprint at all: refused before connecting
        keys.trust_host_key(testbed["ssh"]["host"], 22, "SHA256:notTheRealOne", kh)
    assert info.value.code == "invalid.fingerprint"
    assert not kh.exists()


# --------------------------------------------------------------------------- copy key, verify

@pytest.fixture
def trusted(testbed, home):
    from tests.conftest import trusted_known_hosts
    return trusted_known_hosts(testbed, home / ".ssh" / "known_hosts")


@pytest.fixture
def nodocker_admin(testbed, known_hosts):
    """labnodocker logged in with the testbed's own key: to inspect and clean authorized_keys."""
    r = Remote(testbed["ssh"]["host"], 22, testbed["ssh"]["user_nodocker"], key_filename=testbed["ssh"]["key"],
               known_hosts=known_hosts, use_agent=False)
    r.connect()
    yield r
    r.close()


def _remove_lines_with(r: Remote, marker: str) -> None:
    path = ".ssh/authorized_keys"
    lines = r.get_bytes(path).decode().splitlines(keepends=True)
    r.put_bytes(path, "".join(l for l in lines if marker not in l), mode=0o600)


def test_copy_key_with_password_then_key_only_login(testbed, trusted, nodocker_admin):
    marker = f"t-setup-{uuid.uuid4().hex[:8]}"
    k = keys.generate_key(comment=marker)
    user = testbed["ssh"]["user_nodocker"]
    try:
        assert keys.copy_key(testbed["ssh"]["host"], user, testbed["ssh"]["password"], k.path,
                             known_hosts=trusted) is True
        # ssh-copy-id semantics: a second copy appends nothing.
        assert keys.copy_key(testbed["ssh"]["host"], user, testbed["ssh"]["password"], k.path,
                             known_hosts=trusted) is False
        text = nodocker_admin.get_bytes(".ssh/authorized_keys").decode()
        assert text.count(k.public_path.read_text().split()[1]) == 1
        assert testbed["ssh"]["password"] not in text
        modes = nodocker_admin.run(["stat", "-c", "%a", ".ssh", ".ssh/authorized_keys"]).stdout.split()
        assert modes == ["700", "600"]
        r = keys.verify_key_login(testbed["ssh"]["host"], user, k.path, known_hosts=trusted)
        assert r.run(["whoami"]).stdout.strip() == user
        r.close()
    finally:
        _remove_lines_with(nodocker_admin, marker)
    with pytest.raises(AuthenticationFailed):
        keys.verify_key_login(testbed["ssh"]["host"], user, k.path, known_hosts=trusted)


def test_key_only_login_through_the_agent(testbed, trusted, nodocker_admin, agent):
    marker = f"t-setup-{uuid.uuid4().hex[:8]}"
    k = keys.generate_key(comment=marker, passphrase="via-agent")
    user = testbed["ssh"]["user_nodocker"]
    try:
        keys.copy_key(testbed["ssh"]["host"], user, testbed["ssh"]["password"], k.path, known_hosts=trusted)
        keys.add_to_agent(k.path, "via-agent")
        r = keys.verify_key_login(testbed["ssh"]["host"], user, known_hosts=trusted, use_agent=True)
        assert r.run(["whoami"]).stdout.strip() == user
        r.close()
        with pytest.raises(keys.BadPassphrase):
            keys.verify_key_login(testbed["ssh"]["host"], user, k.path, passphrase="wrong-pass", known_hosts=trusted)
    finally:
        _remove_lines_with(nodocker_admin, marker)


def test_wrong_password_changes_nothing_on_the_server(testbed, trusted, nodocker_admin):
    k = keys.generate_key(comment="t-setup-wrongpw")
    before = nodocker_admin.get_bytes(".ssh/authorized_keys")
    with pytest.raises(AuthenticationFailed) as info:
        keys.copy_key(testbed["ssh"]["host"], testbed["ssh"]["user_nodocker"], "not-the-password", k.path,
                      known_hosts=trusted)
    assert "password" in info.value.hint
    assert "not-the-password" not in str(info.value)
    assert nodocker_admin.get_bytes(".ssh/authorized_keys") == before


def test_copy_creates_authorized_keys_with_modes(remote):
    # A fresh folder stands in for an account without ~/.ssh: same script, real server.
    base = f"t-setup-{uuid.uuid4().hex[:8]}"
    line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEKG7ZfiqLS0yLYzt6nDlfCjDneJrc3Lt2oUPSPG9qLD a *glob* $(x)"
    try:
        assert keys.install_public_key(remote, line, f"{base}/.ssh") is True
        assert keys.install_public_key(remote, line.rsplit(" ", 3)[0] + " other-comment", f"{base}/.ssh") is False
        assert remote.get_bytes(f"{base}/.ssh/authorized_keys").decode() == line + "\n"
        assert remote.run(["stat", "-c", "%a", f"{base}/.ssh", f"{base}/.ssh/authorized_keys"]).stdout.split() == \
            ["700", "600"]
        # An existing file without a final newline gets one before the new line.
        remote.put_bytes(f"{base}/.ssh/authorized_keys", b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld old", mode=0o600)
        assert keys.install_public_key(remote, line, f"{base}/.ssh") is True
        assert remote.get_bytes(f"{base}/.ssh/authorized_keys").decode().splitlines()[1] == line
    finally:
        names.app_name(base)  # the name we remove is one we made
        remote.run(["rm", "-rf", "--", base])


# --------------------------------------------------------------------------- bad input and network faults

def test_unreachable_host(home):
    k = keys.generate_key()
    with pytest.raises((ConnectTimeout, HostUnreachable)) as info:
        keys.host_key_status("192.0.2.1", 22, home / "kh", connect_timeout=2)
    assert info.value.hint
    with pytest.raises(DNSFailure):
        keys.copy_key("no-such-host.invalid", "someone", "pw", k.path, known_hosts=home / "kh")
    assert not (home / "kh").exists()


def test_wrong_port(testbed, home, trusted):
    k = keys.generate_key()
    with pytest.raises(HostUnreachable) as info:
        keys.host_key_status(testbed["ssh"]["host"], 2, trusted)
    assert "port" in info.value.hint.lower()
    # The registry's port answers, but with HTTPS, not SSH: said plainly.
    reg_host, reg_port = testbed["registry"]["address"].rsplit(":", 1)
    with pytest.raises(HostUnreachable) as info:
        keys.copy_key(reg_host, "labnodocker", testbed["ssh"]["password"], k.path, port=int(reg_port),
                      known_hosts=trusted)
    assert "not an SSH server" in info.value.message


@pytest.mark.parametrize("host,user", [("10.250.0.2; touch /tmp/t-setup-pwned", "labnodocker"),
                                       ("$(reboot)", "labnodocker"),
                                       ("10.250.0.2", "lab`id`"),
                                       ("10.250.0.2", "labnodocker; rm -rf ~"),
                                       ("10.250.0.2", "-oProxyCommand=x")])
def test_shell_metacharacters_are_refused_before_connecting(home, host, user):
    k = keys.generate_key()
    with pytest.raises(ValidationError) as info:
        keys.copy_key(host, user, "pw", k.path, known_hosts=home / "kh")
    assert info.value.hint
    with pytest.raises(ValidationError):
        keys.verify_key_login(host, user, k.path, known_hosts=home / "kh")
    assert not (home / "kh").exists()


def test_copy_key_to_an_untrusted_server_stops_at_the_fingerprint(testbed, home):
    from labdeploy.errors import UnknownHostKey
    k = keys.generate_key()
    kh = home / ".ssh" / "known_hosts"
    with pytest.raises(UnknownHostKey) as info:
        keys.copy_key(testbed["ssh"]["host"], testbed["ssh"]["user_nodocker"], testbed["ssh"]["password"], k.path,
                      known_hosts=kh)
    assert info.value.fingerprint == testbed["ssh"]["host_key_fingerprint"]
    assert "fingerprint" in info.value.hint
    assert not kh.exists()
