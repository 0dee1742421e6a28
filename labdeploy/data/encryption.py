"""Encryption at rest for pulled backups, in the age format (age-encryption.org/v1) through
pyrage (Python bindings of rage, the Rust implementation of age).

Why age: a small, audited, standard file format (authenticated, streamed in chunks) whose
files the `age` and `rage` command-line tools open too, so a researcher can decrypt a copy
without labdeploy; it encrypts to a passphrase (scrypt) or to public keys, including the SSH
key the researcher already has. Hand-made encryption with a general crypto library would be
a file format of our own, which is what this avoids.

* to public keys (`age1...` or an SSH `ssh-ed25519`/`ssh-rsa` public key): streamed, any size;
  decrypting needs the matching private key (an age identity file or the SSH private key).
* to a passphrase: the file is read into memory once (age's scrypt mode in pyrage works on
  bytes); fine for the dumps of a study, which are tens of MB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from .. import localfiles
from ..errors import LabdeployError, ValidationError

SUFFIX = ".age"


class DecryptionFailed(LabdeployError):
    """An encrypted copy could not be opened with what was given."""

    code = "backup.decrypt"


def _pyrage():
    import pyrage  # loaded when encryption is asked for

    return pyrage


@dataclass(frozen=True)
class Encryption:
    """How pulled copies are encrypted: to `recipients` (public keys) or with `passphrase`."""

    recipients: Sequence[str] = ()
    passphrase: Optional[str] = field(default=None, repr=False)

    def check(self) -> "Encryption":
        if bool(self.recipients) == bool(self.passphrase):
            raise ValidationError("Encrypt either to public keys or with a passphrase (one of them).",
                                  "Give age1... or ssh-ed25519 ... public keys, or a passphrase.",
                                  code="invalid.encryption")
        for text in self.recipients:
            _recipient(text)
        if self.passphrase is not None and len(self.passphrase) < 12:
            raise ValidationError("The passphrase is shorter than 12 characters.",
                                  "Use a long passphrase (several words), or encrypt to a public key.",
                                  code="invalid.encryption.passphrase")
        return self


def _recipient(text: str):
    pyrage = _pyrage()
    value = (text or "").strip()
    try:
        if value.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(value)
        if value.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return pyrage.ssh.Recipient.from_str(value)
    except Exception as exc:  # pyrage's RecipientError: the key's text is damaged
        raise ValidationError(f"{value[:24]!r}... is not a valid public key: {exc}",
                              "Copy the whole public key: age1... (age-keygen) or the line of an id_ed25519.pub.",
                              code="invalid.encryption.recipient") from None
    raise ValidationError(f"{value[:24]!r} is neither an age public key (age1...) nor an SSH public key.",
                          "Give age1... (from age-keygen) or the line of ~/.ssh/id_ed25519.pub.",
                          code="invalid.encryption.recipient")


def encrypt(plain: Path, target: Path, how: Encryption) -> None:
    """`plain` encrypted into `target` (0600, written whole or not at all)."""
    pyrage = _pyrage()
    tmp = localfiles.temp_name(target)
    try:
        with open(plain, "rb") as source, localfiles.open_private(tmp) as out:
            if how.passphrase is not None:
                out.write(pyrage.passphrase.encrypt(source.read(), how.passphrase))
            else:
                pyrage.encrypt_io(source, out, [_recipient(r) for r in how.recipients])
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def decrypt(encrypted: Path, target: Path, *, identity: Union[str, os.PathLike, None] = None,
            passphrase: Optional[str] = None) -> None:
    """`encrypted` opened into `target` (0600) with a private key file (age identity or SSH
    private key without a passphrase) or the passphrase."""
    pyrage = _pyrage()
    if (identity is None) == (passphrase is None):
        raise ValidationError(f"{encrypted.name} is encrypted: give the private key file or the passphrase.",
                              "The key that matches the public key it was encrypted to, or its passphrase.",
                              code="invalid.encryption.identity")
    keys = None if passphrase is not None else [_identity(Path(identity).expanduser())]
    tmp = localfiles.temp_name(target)
    try:
        with open(encrypted, "rb") as source, localfiles.open_private(tmp) as out:
            try:
                if keys is None:
                    out.write(pyrage.passphrase.decrypt(source.read(), passphrase))
                else:
                    pyrage.decrypt_io(source, out, keys)
            except (pyrage.DecryptError, pyrage.IdentityError, OSError) as exc:  # streamed: OSError
                raise DecryptionFailed(
                    f"{encrypted.name} could not be decrypted: {exc}",
                    "Use the private key that matches the public key it was encrypted to, or the passphrase it "
                    "was encrypted with. If they are right, the file is damaged: use another copy.") from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _identity(path: Path):
    pyrage = _pyrage()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"The key file {path} can't be read: {exc.strerror}.", code="invalid.encryption.identity") \
            from None
    text = data.decode("utf-8", "replace")
    try:
        for line in text.splitlines():
            if line.startswith("AGE-SECRET-KEY-"):
                return pyrage.x25519.Identity.from_str(line.strip())
        return pyrage.ssh.Identity.from_buffer(data)
    except Exception as exc:  # pyrage's IdentityError
        raise ValidationError(f"{path} is not a private key labdeploy can use: {exc}",
                              "Give an age identity file (age-keygen) or an SSH private key without a passphrase.",
                              code="invalid.encryption.identity") from None
