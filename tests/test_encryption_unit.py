"""Encrypted pulled copies (age, through pyrage) on this computer: to an age key, to an SSH key,
with a passphrase; wrong keys and damaged files refused; files 0600 and written whole."""

from __future__ import annotations

import stat
import subprocess

import pytest

from labdeploy.data import encryption
from labdeploy.errors import ValidationError


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "x.dump"
    path.write_bytes(b"PGDMP" + bytes(range(256)) * 4000)  # ~1 MB, binary
    return path


def age_key(tmp_path):
    import pyrage

    ident = pyrage.x25519.Identity.generate()
    key = tmp_path / "age.key"
    key.write_text(f"# created for a test\n{ident}\n")
    return str(ident.to_public()), key


def test_to_an_age_key_and_back(tmp_path, plain):
    public, key = age_key(tmp_path)
    target = tmp_path / "x.dump.age"
    encryption.encrypt(plain, target, encryption.Encryption((public,)).check())
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and plain.read_bytes() not in target.read_bytes()
    back = tmp_path / "back"
    encryption.decrypt(target, back, identity=key)
    assert back.read_bytes() == plain.read_bytes() and stat.S_IMODE(back.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["age.key", "back", "x.dump", "x.dump.age"]  # no leftovers


def test_to_the_researchers_ssh_key_and_back(tmp_path, plain):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id_ed25519")], check=True)
    public = (tmp_path / "id_ed25519.pub").read_text().strip()
    target = tmp_path / "x.dump.age"
    encryption.encrypt(plain, target, encryption.Encryption((public,)).check())
    encryption.decrypt(target, tmp_path / "back", identity=tmp_path / "id_ed25519")
    assert (tmp_path / "back").read_bytes() == plain.read_bytes()


def test_with_a_passphrase_and_a_wrong_one_is_refused_leaving_nothing(tmp_path, plain):
    target = tmp_path / "x.dump.age"
    encryption.encrypt(plain, target, encryption.Encryption(passphrase="correct horse battery").check())
    encryption.decrypt(target, tmp_path / "back", passphrase="correct horse battery")
    assert (tmp_path / "back").read_bytes() == plain.read_bytes()
    with pytest.raises(encryption.DecryptionFailed) as info:
        encryption.decrypt(target, tmp_path / "again", passphrase="wrong horse battery")
    assert info.value.hint and not (tmp_path / "again").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_damaged_copy_or_the_wrong_key_is_refused(tmp_path, plain):
    public, key = age_key(tmp_path)
    target = tmp_path / "x.dump.age"
    encryption.encrypt(plain, target, encryption.Encryption((public,)).check())
    (tmp_path / "other").mkdir()
    _, other_key = age_key(tmp_path / "other")
    with pytest.raises(encryption.DecryptionFailed):
        encryption.decrypt(target, tmp_path / "back", identity=other_key)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(encryption.DecryptionFailed):
        encryption.decrypt(target, tmp_path / "back", identity=key)
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize("how", [
    encryption.Encryption(), encryption.Encryption(("age1qqqq",)), encryption.Encryption(("ssh-dss AAAA",)),
    encryption.Encryption(("$(reboot)",)), encryption.Encryption(passphrase="short"),
    encryption.Encryption(("age1x",), passphrase="a long enough passphrase"),
])
def test_bad_keys_and_short_passphrases_are_refused(how):
    with pytest.raises(ValidationError) as info:
        how.check()
    assert info.value.hint
