"""Pure parts of the SSH layer: quoting, fingerprints, known_hosts handling, ssh config, errors.

No server is needed here; keys are made with the real `ssh-keygen`.
"""

from __future__ import annotations

import shlex
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from labdeploy.errors import ChangedHostKey, LabdeployError, RemoteError, ValidationError
from labdeploy.remote import Remote, Result, fingerprint, known_hosts_name, revoked_keys


def keygen(path: Path, kind: str = "ed25519", comment: str = "t") -> Path:
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)]
    if kind == "rsa":
        args += ["-b", "2048"]
    subprocess.run(args, check=True)
    return path


def load_key(path: Path) -> paramiko.PKey:
    return paramiko.PKey.from_path(str(path))


def pub_line(path: Path) -> str:
    return " ".join(Path(str(path) + ".pub").read_text().split()[:2])


def ssh_keygen_fingerprint(path: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(path) + ".pub"],
                         check=True, capture_output=True, text=True).stdout
    return out.split()[1]


# ------------------------------------------------------------------ quoting

@pytest.mark.parametrize("argv", [
    ["echo", "a;b", "$(x)", "`id`", "'q'", '"dq"', "a b", "", "*", "~", "\\", "x\ny", "-n", "é"],
    ["docker", "ps", "--format", "{{.Names}}"],
    ["sh", "-c", "echo $HOME && exit 3"],
])
def test_quote_round_trips_through_a_posix_shell_parser(argv):
    assert shlex.split(Remote.quote(argv)) == argv


def test_quote_converts_non_strings():
    assert Remote.quote(["sleep", 1.5, 2]) == "sleep 1.5 2"


def test_quote_keeps_shell_metacharacters_inert():
    # Evaluated by a real local shell: every argument comes back verbatim, nothing runs.
    argv = ["printf", "%s\\n", "a;b", "$(touch /tmp/labdeploy-pwned)", "`id`", "a b"]
    out = subprocess.run(["sh", "-c", Remote.quote(argv)], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == argv[2:]
    assert not Path("/tmp/labdeploy-pwned").exists()


def test_run_refuses_a_string_command(home):
    r = Remote("example.invalid", user="bob", known_hosts=home / "kh")
    with pytest.raises(TypeError, match="argv list"):
        r.run("ls -l")
    assert r.stats["connections"] == 0


def test_short_command_text_is_cut():
    text = Remote._short(["echo", "x" * 500])
    assert len(text) == 120 and text.endswith("...")


# ------------------------------------------------------------------ fingerprints and known_hosts names

@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_matches_ssh_keygen(tmp_path, kind):
    key = keygen(tmp_path / f"id_{kind}", kind)
    fp = fingerprint(load_key(key))
    assert fp == ssh_keygen_fingerprint(key)
    assert fp.startswith("SHA256:") and not fp.endswith("=") and len(fp) == 7 + 43


def test_known_hosts_name_with_and_without_port():
    assert known_hosts_name("10.250.0.2", 22) == "10.250.0.2"
    assert known_hosts_name("lab.example.org", 2222) == "[lab.example.org]:2222"


# ------------------------------------------------------------------ host-field matching

def test_host_field_matches_plain_names_and_lists():
    m = Remote._host_field_matches
    assert m("lab.example.org", "lab.example.org")
    assert m("other,lab.example.org,10.0.0.1", "lab.example.org")
    assert m("[lab.example.org]:2222", "[lab.example.org]:2222")
    assert not m("lab.example.org", "[lab.example.org]:2222")
    assert not m("[lab.example.org]:2222", "lab.example.org")
    assert not m("lab.example.org.evil", "lab.example.org")
    assert not m("otherlab.example.org", "lab.example.org")


def _hashed_known_hosts(tmp_path: Path, lines: list[str]) -> list[str]:
    f = tmp_path / "kh_hashed"
    f.write_text("\n".join(lines) + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(f)], check=True, capture_output=True)
    return [line.split()[0] for line in f.read_text().splitlines() if line.strip()]


def test_host_field_matches_hashed_entries_made_by_ssh_keygen(tmp_path):
    key = keygen(tmp_path / "k")
    fields = _hashed_known_hosts(tmp_path, [f"lab.example.org {pub_line(key)}",
                                            f"[lab.example.org]:2222 {pub_line(key)}"])
    assert all(f.startswith("|1|") for f in fields)
    plain, ported = fields
    assert Remote._host_field_matches(plain, "lab.example.org")
    assert not Remote._host_field_matches(plain, "[lab.example.org]:2222")
    assert Remote._host_field_matches(ported, "[lab.example.org]:2222")
    assert not Remote._host_field_matches(ported, "lab.example.org")
    assert not Remote._host_field_matches(plain, "other.example.org")


def test_host_field_matching_survives_a_malformed_hashed_entry():
    assert not Remote._host_field_matches("|1|not-base64!|garbage", "lab.example.org")
    assert not Remote._host_field_matches("|1|", "lab.example.org")


# ------------------------------------------------------------------ known_hosts file handling (no server)

def test_forget_host_key_removes_only_that_hosts_lines(home, tmp_path):
    key, other = keygen(tmp_path / "k"), keygen(tmp_path / "o")
    hashed_fields = _hashed_known_hosts(tmp_path, [f"lab.example.org {pub_line(key)}"])
    kh = home / ".ssh" / "known_hosts"
    kh.parent.mkdir()
    lines = [
        "# my comment line",
        f"lab.example.org {pub_line(key)}",
        f"other.example.org {pub_line(other)}",
        f"[lab.example.org]:2222 {pub_line(other)}",
        f"alias,lab.example.org {pub_line(key)}",
        f"{hashed_fields[0]} {pub_line(key)}",
        f"lab.example.org.evil {pub_line(other)}",
        "",
    ]
    kh.write_text("\n".join(lines))
    kh.chmod(0o644)
    r = Remote("lab.example.org", user="bob")
    assert r.known_hosts == kh
    assert r.stored_host_key() is not None
    assert r.forget_host_key() == 3
    assert kh.read_text().splitlines() == [lines[0], lines[2], lines[3], lines[6]]
    assert r.stored_host_key() is None
    assert stat.S_IMODE(kh.stat().st_mode) in (0o600, 0o644)
    assert r.forget_host_key() == 0
    # The port matters: only the [host]:2222 line goes.
    r2222 = Remote("lab.example.org", 2222, "bob")
    assert r2222.forget_host_key() == 1
    assert kh.read_text().splitlines() == [lines[0], lines[2], lines[6]]
    assert not list(kh.parent.glob(".known_hosts*"))  # no temp file left


def test_forget_host_key_without_a_file(home):
    assert Remote("lab.example.org", user="bob").forget_host_key() == 0
    assert not (home / ".ssh" / "known_hosts").exists()


def test_stored_host_key_reads_hashed_and_ported_entries(home, tmp_path):
    key = keygen(tmp_path / "k")
    fields = _hashed_known_hosts(tmp_path, [f"[lab.example.org]:2222 {pub_line(key)}"])
    kh = tmp_path / "kh"
    kh.write_text(f"{fields[0]} {pub_line(key)}\n")
    stored = Remote("lab.example.org", 2222, "bob", known_hosts=kh).stored_host_key()
    assert stored is not None and fingerprint(stored) == ssh_keygen_fingerprint(key)
    assert Remote("lab.example.org", 22, "bob", known_hosts=kh).stored_host_key() is None


def test_known_hosts_with_certificate_authority_revoked_and_broken_lines(home, tmp_path):
    """paramiko's own loader stops at such lines; real known_hosts files have them."""
    key, ca, old = keygen(tmp_path / "k"), keygen(tmp_path / "ca"), keygen(tmp_path / "old")
    kh = tmp_path / "kh"
    kh.write_text(f"@cert-authority *.example.org {pub_line(ca)}\n"
                  f"@revoked * {pub_line(old)}\n"
                  "broken line\n"
                  "host.example.org ssh-ed25519 not!base64\n"
                  "host.example.org ssh-unknown-type AAAA\n"
                  f"lab.example.org {pub_line(key)}\n")
    r = Remote("lab.example.org", user="bob", known_hosts=kh)
    stored = r.stored_host_key()
    assert stored is not None and fingerprint(stored) == ssh_keygen_fingerprint(key)
    revoked = revoked_keys(kh)
    assert revoked == [("*", load_key(old).asbytes())]
    assert Remote._is_revoked(kh, "anything.example.org", load_key(old))
    assert not Remote._is_revoked(kh, "lab.example.org", load_key(key))
    assert r.forget_host_key() == 1
    assert len(kh.read_text().splitlines()) == 5  # the special lines are kept


def test_changed_key_error_explains_cause_and_fix(tmp_path, home):
    a, b = load_key(keygen(tmp_path / "a")), load_key(keygen(tmp_path / "b"))
    err = Remote("lab.example.org", 2222, "bob")._changed_key_error(a, b)
    assert isinstance(err, ChangedHostKey) and isinstance(err, RemoteError)
    assert err.fingerprint == fingerprint(a) and err.expected_fingerprint == fingerprint(b)
    text = str(err)
    assert fingerprint(a) in text and fingerprint(b) in text
    assert "rebuilt" in text and "forget_host_key" in text and "ssh-keygen -R [lab.example.org]:2222" in text
    assert "intercept" in text


def test_known_hosts_status_tells_known_unknown_and_changed(home, tmp_path):
    """The one first-contact judgement (keys.host_key_status and the setup panel use it)."""
    from labdeploy.ssh.hostkeys import KnownHosts

    key, other = load_key(keygen(tmp_path / "k")), load_key(keygen(tmp_path / "o"))
    kh = KnownHosts(tmp_path / "known_hosts")
    assert kh.status("lab.example.org", 2222, key).state == "unknown"
    kh.add("lab.example.org", 2222, key)
    assert (tmp_path / "known_hosts").stat().st_mode & 0o777 == 0o600
    known = kh.status("lab.example.org", 2222, key)
    assert known.state == "known" and known.fingerprint == known.expected_fingerprint == fingerprint(key)
    changed = kh.status("lab.example.org", 2222, other)
    assert changed.state == "changed" and changed.expected_fingerprint == fingerprint(key)
    assert kh.status("lab.example.org", 22, key).state == "unknown"  # another port is another server
    assert kh.forget("lab.example.org", 2222) == 1 and kh.stored("lab.example.org", 2222) == {}


# ------------------------------------------------------------------ construction, ssh config

def test_defaults_come_from_home(home, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    r = Remote("lab.example.org")
    assert (r.host, r.port, r.user) == ("lab.example.org", 22, "alice")
    assert r.known_hosts == home / ".ssh" / "known_hosts"
    assert r.label == "alice@lab.example.org"
    assert Remote("lab.example.org", 2222, "bob").label == "bob@lab.example.org:2222"
    assert repr(Remote("h", 2, "bob")) == "Remote(bob@h:2)"


def test_host_names_are_compared_in_lower_case_like_ssh(home):
    assert Remote("Lab.Example.ORG", user="bob").host == "lab.example.org"


def test_ssh_config_alias(home, tmp_path):
    (home / ".ssh").mkdir()
    key = keygen(home / ".ssh" / "id_lab")
    (home / ".ssh" / "config").write_text(
        "Host lab\n"
        "    HostName 10.250.0.2\n"
        "    Port 2200\n"
        "    User labdeploy\n"
        "    IdentityFile ~/.ssh/id_missing\n"
        "    IdentityFile ~/.ssh/id_lab\n"
        "Host *\n"
        "    User nobody\n")
    r = Remote("lab")
    assert (r.alias, r.host, r.port, r.user) == ("lab", "10.250.0.2", 2200, "labdeploy")
    assert r.key_filename == str(key)  # the first IdentityFile that exists, ~ expanded
    # Explicit arguments win over the config file.
    r2 = Remote("lab", 22, "other", key_filename="/k")
    assert (r2.host, r2.port, r2.user, r2.key_filename) == ("10.250.0.2", 22, "other", "/k")
    # Other names fall through to `Host *`.
    r3 = Remote("elsewhere.example.org")
    assert (r3.host, r3.user) == ("elsewhere.example.org", "nobody")


def test_ssh_config_explicit_path(home, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.write_text("Host x\n  HostName lab.example.org\n  Port 2022\n")
    r = Remote("x", user="bob", ssh_config=cfg)
    assert (r.host, r.port) == ("lab.example.org", 2022)


def test_hostile_values_in_ssh_config_are_refused(home, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.write_text("Host x\n  HostName a;touch$IFS/tmp/p\n")
    with pytest.raises(ValidationError):
        Remote("x", user="bob", ssh_config=cfg)
    cfg.write_text("Host x\n  User $(id)\n")
    with pytest.raises(ValidationError):
        Remote("x", ssh_config=cfg)


@pytest.mark.parametrize("host,port,user", [("a;b", 22, "bob"), ("$(x)", 22, "bob"), ("h", 22, "$(x)"),
                                            ("h", 0, "bob"), ("h", "22;x", "bob"), ("-oProxyCommand=x", 22, "u")])
def test_hostile_constructor_arguments_are_refused(home, host, port, user):
    with pytest.raises(ValidationError):
        Remote(host, port, user)


def test_broken_ssh_config_is_reported(home, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.write_text("Host x\n  Port\n")
    with pytest.raises(LabdeployError, match="could not be read"):
        Remote("x", user="bob", ssh_config=cfg)


def test_result_properties():
    r = Result(["x"], 0, "héllo\n".encode(), b"\xff oops")
    assert r.ok and r.stdout == "héllo\n" and r.stderr == "\ufffd oops"
    assert not Result(["x"], 2, b"", b"").ok


class _ReadyChannel:
    """A channel with its output already waiting (what `_Output.drain` reads)."""

    def __init__(self, out: list, err: list) -> None:
        self.out, self.err = list(out), list(err)

    def recv_ready(self):
        return bool(self.out)

    def recv(self, n):
        return self.out.pop(0)

    def recv_stderr_ready(self):
        return bool(self.err)

    def recv_stderr(self, n):
        return self.err.pop(0)


def test_command_output_is_kept_and_cut_into_lines_across_chunks():
    from labdeploy.ssh.connection import _Output

    lines = []
    out = _Output(lambda line, stream: lines.append((stream, line)), None)
    assert out.drain(_ReadyChannel([b"one\ntw", b"o\r\nthr"], [b"warn"]))
    assert not out.drain(_ReadyChannel([], []))
    assert out.finish() == (b"one\ntwo\r\nthr", b"warn")
    assert lines == [("stdout", "one"), ("stdout", "two"), ("stdout", "thr"), ("stderr", "warn")]


def test_stdout_chunks_go_to_on_stdout_instead_of_being_kept():
    from labdeploy.ssh.connection import _Output

    chunks, lines = [], []
    out = _Output(lambda line, stream: lines.append((stream, line)), chunks.append)
    out.drain(_ReadyChannel([b"a\nb"], [b"e\n"]))
    assert out.finish() == (b"", b"e\n") and chunks == [b"a\nb"] and lines == [("stderr", "e")]
