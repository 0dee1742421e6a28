"""Pure parts of keys: the ssh-copy-id script, the agent's key encoding, public key checks."""

import shlex
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from labdeploy.commands import sshkeys
from labdeploy.ssh import keys
from labdeploy.errors import ValidationError


def test_the_copy_command_carries_the_folder_as_a_value_and_never_the_key(tmp_path):
    argv = sshkeys.install_key("odd dir/$(x)/.ssh")
    assert argv == ["sh", "-c", sshkeys.INSTALL_KEY, "sh", "odd dir/$(x)/.ssh"]
    assert shlex.split(shlex.join(argv)) == argv
    assert "ssh-ed25519" not in " ".join(argv)  # the key comes on stdin
    assert "set -euf" in sshkeys.INSTALL_KEY and "umask 077" in sshkeys.INSTALL_KEY


def test_agent_encoding_of_ed25519():
    key = ed25519.Ed25519PrivateKey.generate()
    blob = keys._agent_identity(key, "c")
    fields = []
    pos = 0
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos:pos + 4])
        fields.append(blob[pos + 4:pos + 4 + n])
        pos += 4 + n
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert fields[0] == b"ssh-ed25519" and fields[1] == pub
    assert len(fields[2]) == 64 and fields[2][32:] == pub and fields[3] == b"c"


def test_mpint_keeps_high_bit_numbers_positive():
    assert keys._mpint(0) == b"\0\0\0\0"
    assert keys._mpint(0x80) == b"\0\0\0\x02\x00\x80"
    assert keys._mpint(0x7f) == b"\0\0\0\x01\x7f"


@pytest.mark.parametrize("line", ["", "ssh-ed25519", "ssh-ed25519 AAAA\nssh-rsa BBBB", "rm -rf / ; x",
                                  "ssh-ed25519 AAAA$(id)"])
def test_install_refuses_what_is_not_one_public_key_line(line):
    with pytest.raises(ValidationError):
        keys.install_public_key(object(), line)  # refused before any remote call


def test_empty_password_is_refused_before_connecting(home):
    with pytest.raises(ValidationError):
        keys.copy_key("10.0.0.1", "alice", "", home / "nokey")


def test_public_line_of_a_pem_key_without_pub_file(home):
    import subprocess
    pem = home / "cloud.pem"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", str(pem)], check=True)
    expected = pem.with_name("cloud.pem.pub").read_text().split()[:2]
    pem.with_name("cloud.pem.pub").unlink()
    assert keys.public_key_line(pem).split()[:2] == expected
    enc = home / "enc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-pass", "-f", str(enc)], check=True)
    enc.with_name("enc.pub").unlink()
    with pytest.raises(keys.SSHKeyError) as info:
        keys.public_key_line(enc)
    assert "ssh-keygen -y" in info.value.hint
