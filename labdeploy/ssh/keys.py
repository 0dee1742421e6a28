"""SSH keys: yours (find, generate, add to the agent, copy to the server) and the server's
(host key fingerprint check before first contact).

Secrets (passphrases, the account password) are only held in memory for the call that needs
them: the passphrase goes to the agent over its socket, the password to sshd over SSH. Nothing
here writes them anywhere or puts them on a command line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import pandas as pd
import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .. import names
from ..commands import sshkeys
from ..errors import LabdeployError, Remedy, ValidationError
from ..localfiles import write_atomic
from ..remote import Remote
from . import hostkeys
from .hostkeys import HostKeyStatus, fingerprint as _pkey_fingerprint

PathLike = Union[str, os.PathLike]
DEFAULT_KEY_NAME = "id_ed25519"
# Used with fullmatch (`re.match(...$)` lets a final newline through).
_PUBLIC_RE = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( [^\n\r]*)?")


class SSHKeyError(LabdeployError):
    """Something is wrong with a local SSH key."""

    code = "ssh.key.unusable"


class KeyExists(SSHKeyError):
    """A new key would overwrite an existing file."""

    code = "ssh.key.exists"


class BadPassphrase(SSHKeyError):
    """The passphrase does not open the key."""

    code = "ssh.key.passphrase"


class NoAgent(SSHKeyError):
    """No ssh-agent is reachable."""

    code = "ssh.agent.unavailable"


@dataclass(frozen=True)
class SSHKey:
    path: Path  # the private key
    key_type: str
    fingerprint: str
    comment: str = ""
    encrypted: bool = False

    @property
    def public_path(self) -> Path:
        return self.path.with_name(self.path.name + ".pub")

    def public_line(self) -> str:
        return public_key_line(self.path)


def ssh_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".ssh"


def default_key_path() -> Path:
    return ssh_dir() / DEFAULT_KEY_NAME


# --------------------------------------------------------------------------- reading keys

def public_key_line(path: PathLike) -> str:
    """The one-line OpenSSH public key of a private key file (from its .pub file)."""
    path = Path(path)
    pub = path.with_name(path.name + ".pub") if not path.name.endswith(".pub") else path
    if not pub.exists():
        if path.exists() and not path.name.endswith(".pub"):
            # e.g. a cloud provider's key.pem: the public half follows from the private key.
            try:
                key = load_private_key(path)
            except LabdeployError:
                key = None
            if key is not None:
                return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH).decode()
        raise SSHKeyError(f"The public half of {path} ({pub}) is missing.",
                        f"Recreate it with `ssh-keygen -y -f {path} > {pub}`, or generate a new key.")
    line = pub.read_text().strip()
    if "\n" in line or not _PUBLIC_RE.fullmatch(line):
        raise SSHKeyError(f"{pub} does not hold one OpenSSH public key.",
                        "Pick another key file, or generate a new key.")
    return line


def _public_fingerprint(line: str) -> tuple[str, str, str]:
    """(type, SHA256 fingerprint, comment) of an OpenSSH public key line."""
    parts = line.split(None, 2)
    key = paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    return parts[0], _pkey_fingerprint(key), parts[2] if len(parts) > 2 else ""


def _is_encrypted(path: Path) -> bool:
    data = path.read_bytes()
    if b"BEGIN OPENSSH PRIVATE KEY" in data:
        try:
            serialization.load_ssh_private_key(data, password=None)
            return False
        except (TypeError, ValueError):
            return True
    return b"ENCRYPTED" in data


def find_keys(directory: Optional[PathLike] = None) -> list[SSHKey]:
    """The key pairs in ~/.ssh (a private file with a matching .pub next to it)."""
    directory = Path(directory) if directory else ssh_dir()
    found = []
    if not directory.is_dir():
        return found
    for pub in sorted(directory.glob("*.pub")):
        private = pub.with_suffix("")
        if not private.is_file():
            continue
        try:
            line = public_key_line(private)
            key_type, fp, comment = _public_fingerprint(line)
            found.append(SSHKey(private, key_type, fp, comment, _is_encrypted(private)))
        except (LabdeployError, ValueError, OSError, paramiko.SSHException):
            continue  # not a key pair we can use; listing others is more useful than failing
    return found


def keys_table(directory: Optional[PathLike] = None) -> pd.DataFrame:
    rows = [{"path": str(k.path), "type": k.key_type, "fingerprint": k.fingerprint, "comment": k.comment,
             "passphrase": k.encrypted} for k in find_keys(directory)]
    return pd.DataFrame(rows, columns=["path", "type", "fingerprint", "comment", "passphrase"])


# --------------------------------------------------------------------------- generating

def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `data`, complete or not at all, and never over an existing file."""
    try:
        write_atomic(path, data, mode, overwrite=False)
    except FileExistsError:
        raise KeyExists(f"{path} already exists; labdeploy never overwrites a key.",
                        "Use that key, or give the new key another file name.") from None


def generate_key(path: Optional[PathLike] = None, passphrase: Optional[str] = None,
                 comment: Optional[str] = None) -> SSHKey:
    """Create a new Ed25519 key pair (OpenSSH format). Private file 0600, folder 0700.

    Refuses to overwrite: if either file exists, nothing is written.
    """
    path = Path(path) if path else default_key_path()
    path = path.expanduser()
    if path.name.endswith(".pub"):
        raise ValidationError(f"{path} names a public key file.", "Give the private key's name, e.g. ~/.ssh/id_ed25519.",
                              code="invalid.key_path")
    pub = path.with_name(path.name + ".pub")
    for existing in (path, pub):
        if existing.exists():
            raise KeyExists(f"{existing} already exists; labdeploy never overwrites a key.",
                            "Use the existing key (choose it in the key list), or give the new key another "
                            "file name such as ~/.ssh/id_ed25519_lab.")
    if comment is None:
        comment = f"{os.environ.get('USER', 'user')}@{socket.gethostname()} (labdeploy)"
    if "\n" in comment or "\r" in comment:
        raise ValidationError("The key comment must be one line.", "Remove line breaks from the comment.",
                              code="invalid.key_comment")
    if passphrase is not None and passphrase != "" and len(passphrase) < 5:
        raise ValidationError("The passphrase is shorter than 5 characters.",
                              "Use a longer passphrase, or none (then protect the key file itself).",
                              code="invalid.passphrase")
    created_dir = not path.parent.exists()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent == ssh_dir() or created_dir:
        os.chmod(path.parent, 0o700)  # ssh refuses keys in a folder others can write to
    key = ed25519.Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else serialization.NoEncryption())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = public.decode() + (f" {comment}" if comment else "") + "\n"
    _write_new(path, private, 0o600)
    try:
        _write_new(pub, public_line.encode(), 0o644)
    except BaseException:
        path.unlink()  # we created it a moment ago; a private key without its .pub is half-written
        raise
    key_type, fp, comment = _public_fingerprint(public_line.strip())
    return SSHKey(path, key_type, fp, comment, bool(passphrase))


def load_private_key(path: PathLike, passphrase: Optional[str] = None):
    """The private key as a `cryptography` object; BadPassphrase when it can't be opened."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SSHKeyError(f"The key file {path} does not exist.", "Pick an existing key or generate one.")
    data = path.read_bytes()
    pw = passphrase.encode() if passphrase else None
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in data:
            return serialization.load_ssh_private_key(data, password=pw)
        return serialization.load_pem_private_key(data, password=pw)
    except TypeError:
        if pw is None:
            raise BadPassphrase(f"The key {path} is protected by a passphrase.",
                                "Type the key's passphrase.") from None
        raise BadPassphrase(f"{path} is not protected by a passphrase, but one was given.",
                            "Leave the passphrase empty.") from None
    except ValueError as exc:
        if pw is not None and _is_encrypted(path):
            raise BadPassphrase(f"The passphrase does not open {path}.",
                                "Check the passphrase (it is case-sensitive).") from None
        raise SSHKeyError(f"{path} is not a private key labdeploy can read ({exc}).",
                        "Pick another key, or generate a new Ed25519 key.") from None


# --------------------------------------------------------------------------- ssh-agent

_AGENTC_REQUEST_IDENTITIES = 11
_AGENT_IDENTITIES_ANSWER = 12
_AGENTC_ADD_IDENTITY = 17
_AGENTC_ADD_ID_CONSTRAINED = 25
_AGENT_SUCCESS = 6
_CONSTRAIN_LIFETIME = 1


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _mpint(n: int) -> bytes:
    if n == 0:
        return _string(b"")
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big")  # a leading 0 byte keeps it positive
    return _string(raw)


def _agent_identity(key, comment: str) -> bytes:
    """The agent protocol's encoding of a private key (draft-miller-ssh-agent)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return _string(b"ssh-ed25519") + _string(pub) + _string(seed + pub) + _string(comment.encode())
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        return (_string(b"ssh-rsa") + _mpint(n.public_numbers.n) + _mpint(n.public_numbers.e) + _mpint(n.d)
                + _mpint(n.iqmp) + _mpint(n.p) + _mpint(n.q) + _string(comment.encode()))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve = {"secp256r1": "nistp256", "secp384r1": "nistp384", "secp521r1": "nistp521"}[key.curve.name]
        q = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return (_string(f"ecdsa-sha2-{curve}".encode()) + _string(curve.encode()) + _string(q)
                + _mpint(key.private_numbers().private_value) + _string(comment.encode()))
    raise SSHKeyError("This kind of key can't be added to the agent by labdeploy.",
                    "Use an Ed25519, RSA or ECDSA key, or run `ssh-add KEY` in a terminal.")


def _agent_socket() -> socket.socket:
    path = os.environ.get("SSH_AUTH_SOCK")
    remedy = Remedy("ssh.agent.start")
    if not path:
        raise NoAgent("No ssh-agent is running for this notebook (SSH_AUTH_SOCK is not set).", remedy=remedy)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise NoAgent(f"The ssh-agent at {path} does not answer ({exc.strerror or exc}).", remedy=remedy) from None
    return sock


def _agent_call(message: bytes) -> bytes:
    with contextlib.closing(_agent_socket()) as sock:
        sock.sendall(struct.pack(">I", len(message)) + message)
        head = b""
        while len(head) < 4:
            chunk = sock.recv(4 - len(head))
            if not chunk:
                raise NoAgent("The ssh-agent closed the connection.", "Restart the agent and try again.")
            head += chunk
        (length,) = struct.unpack(">I", head)
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                break
            body += chunk
        return body


def agent_fingerprints() -> list[str]:
    """SHA256 fingerprints of the keys the running agent holds (NoAgent if none runs)."""
    reply = _agent_call(bytes([_AGENTC_REQUEST_IDENTITIES]))
    if not reply or reply[0] != _AGENT_IDENTITIES_ANSWER:
        raise NoAgent("The ssh-agent gave an unexpected answer.", "Restart the agent and try again.")
    (count,) = struct.unpack(">I", reply[1:5])
    pos, fps = 5, []
    for _ in range(count):
        (n,) = struct.unpack(">I", reply[pos:pos + 4])
        blob = reply[pos + 4:pos + 4 + n]
        pos += 4 + n
        (m,) = struct.unpack(">I", reply[pos:pos + 4])
        pos += 4 + m
        fps.append("SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("="))
    return fps


def agent_running() -> bool:
    try:
        agent_fingerprints()
        return True
    except NoAgent:
        return False


def add_to_agent(path: Optional[PathLike] = None, passphrase: Optional[str] = None,
                 lifetime: Optional[int] = None) -> str:
    """Add a key to the running ssh-agent (decrypting it here with its passphrase) and return its
    fingerprint. Talks the agent protocol directly, so the passphrase never leaves this process."""
    path = Path(path).expanduser() if path else default_key_path()
    _agent_socket().close()  # say "no agent" before asking for a passphrase that can't be used
    key = load_private_key(path, passphrase)
    comment = str(path)
    message = bytes([_AGENTC_ADD_IDENTITY]) + _agent_identity(key, comment)
    if lifetime:
        message = (bytes([_AGENTC_ADD_ID_CONSTRAINED]) + message[1:] + bytes([_CONSTRAIN_LIFETIME])
                   + struct.pack(">I", int(lifetime)))
    reply = _agent_call(message)
    if reply[:1] != bytes([_AGENT_SUCCESS]):
        raise SSHKeyError("The ssh-agent refused the key.", "Try `ssh-add` in a terminal to see why.")
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return _public_fingerprint(pub.decode())[1]


def start_agent() -> dict:
    """Start an ssh-agent for this Python process (sets SSH_AUTH_SOCK / SSH_AGENT_PID) and return
    those variables. For notebooks started without an agent."""
    out = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    env = dict(re.findall(r"(SSH_AUTH_SOCK|SSH_AGENT_PID)=([^;]+);", out))
    if "SSH_AUTH_SOCK" not in env:
        raise NoAgent("ssh-agent did not start.", "Install OpenSSH's client tools (`ssh-agent`).")
    os.environ.update(env)
    return env


# --------------------------------------------------------------------------- server side

def _probe(host: str, port: int, known_hosts, connect_timeout: float, jump: Optional[str],
           key_path: Optional[PathLike], passphrase: Optional[str]) -> Remote:
    """A Remote that only reads host keys (it never logs in to the server itself; behind a jump
    host it logs in there, with `key_path` or the ssh-agent)."""
    return Remote(names.host(host), names.port(port), "nobody", known_hosts=known_hosts, use_agent=False,
                  connect_timeout=connect_timeout, jump=jump,
                  jump_key_filename=Path(key_path).expanduser() if key_path else None, passphrase=passphrase)


def host_key_status(host: str, port: int = 22, known_hosts: Optional[PathLike] = None,
                    connect_timeout: float = 10.0, *, jump: Optional[str] = None,
                    key_path: Optional[PathLike] = None, passphrase: Optional[str] = None) -> HostKeyStatus:
    """What the server presents versus what known_hosts has: the first-contact question.

    Behind a jump host (`jump`, or ProxyJump in ~/.ssh/config) it is asked one hop at a time:
    the status is the first hop's whose key is not known yet (`status.role` is "jump host" or
    "server", `status.host` its address); the server's own key is read through the jump host,
    logged in there with `key_path` (and `passphrase`) or the ssh-agent."""
    r = _probe(host, port, known_hosts, connect_timeout, jump, key_path, passphrase)
    try:
        return r.host_key_status()
    finally:
        r.close()


def trust_host_key(host: str, port: int, fingerprint: str, known_hosts: Optional[PathLike] = None, *,
                   jump: Optional[str] = None, key_path: Optional[PathLike] = None,
                   passphrase: Optional[str] = None) -> None:
    """Store the key the user confirmed (`fingerprint`): the server's, or behind a jump host the
    first hop's that is not known yet (see Remote.trust_host_key). A fingerprint that is not the
    shape of one is refused before connecting."""
    hostkeys.check_fingerprint_format(fingerprint)
    r = _probe(host, port, known_hosts, 10.0, jump, key_path, passphrase)
    try:
        r.trust_host_key(fingerprint)
    finally:
        r.close()


def install_public_key(remote: Remote, public_line: str, ssh_dir_on_server: str = ".ssh") -> bool:
    """Append `public_line` to authorized_keys on a connected Remote unless it is there.
    Returns True when it was added."""
    public_line = public_line.strip()
    if "\n" in public_line or not _PUBLIC_RE.fullmatch(public_line):
        raise ValidationError("That is not one OpenSSH public key line.", "Use the contents of your .pub file.",
                              code="invalid.public_key")
    # The ssh-copy-id step in one command: the key arrives on stdin.
    res = remote.run(sshkeys.install_key(ssh_dir_on_server), stdin=(public_line + "\n").encode(), timeout=60)
    return sshkeys.read_install_key(res.stdout)


def copy_key(host: str, user: str, password: str, key_path: Optional[PathLike] = None, *, port: int = 22,
             known_hosts: Optional[PathLike] = None, connect_timeout: float = 10.0,
             jump: Optional[str] = None) -> bool:
    """The ssh-copy-id step: log in once with the account password and add the public key.

    The server's host key must already be trusted (host_key_status / trust_host_key). The
    password is used for this one login and then dropped. Returns True if the key was added,
    False if it was already there. Behind a jump host, the jump host is logged in to with the
    key (or the ssh-agent), never with the password.
    """
    if not password:
        raise ValidationError("The account password is empty.", "Type the password you log in to the server with.",
                              code="invalid.password")
    path = Path(key_path).expanduser() if key_path else default_key_path()
    line = public_key_line(path)
    r = Remote(names.host(host), names.port(port), names.user(user), password=password, known_hosts=known_hosts,
               use_agent=False, connect_timeout=connect_timeout, jump=jump, jump_key_filename=path)
    try:
        r.connect()
        return install_public_key(r, line)
    finally:
        r.close()  # the password lived only in this Remote, which is dropped now


def verify_key_login(host: str, user: str, key_path: Optional[PathLike] = None, *, port: int = 22,
                     passphrase: Optional[str] = None, known_hosts: Optional[PathLike] = None,
                     use_agent: bool = False, connect_timeout: float = 10.0, jump: Optional[str] = None) -> Remote:
    """Log in with the key alone (no password) and run a command; returns the connected Remote."""
    path = Path(key_path).expanduser() if key_path else default_key_path()
    if not path.exists():
        raise SSHKeyError(f"The key file {path} does not exist.", "Pick an existing key or generate one.")
    if not use_agent:
        load_private_key(path, passphrase)  # a wrong passphrase says so, not "login refused"
    r = Remote(names.host(host), names.port(port), names.user(user), key_filename=None if use_agent else path,
               passphrase=passphrase, known_hosts=known_hosts, use_agent=use_agent, connect_timeout=connect_timeout,
               jump=jump, jump_key_filename=path)
    try:
        r.connect()
        r.run(["true"], timeout=30)
    except BaseException:
        r.close()  # a jump host may be connected already
        raise
    return r
