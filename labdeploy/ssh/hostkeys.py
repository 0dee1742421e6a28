"""Host keys: the server's key versus the known_hosts file. Never accept an unknown key silently.

An unknown key raises `UnknownHostKey` carrying its SHA256 fingerprint; only
`trust_host_key(fingerprint)` stores it, and only if the server still presents that key. A
changed key is refused with an explanation (a rebuilt server is the usual cause, and the fix is
the deliberate `forget_host_key()`); a key marked `@revoked` is refused always.

`KnownHosts` reads and writes the file; `HostKeys` is the part of `Remote` that asks the server.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import paramiko

from ..errors import ChangedHostKey, ConnectTimeout, HostUnreachable, Remedy, RemoteError, UnknownHostKey
from ..localfiles import write_atomic


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key, e.g. 'SHA256:47DEQpj8HBSa+/...'."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def revoked_keys(path: Path) -> list[tuple[str, bytes]]:
    """The `@revoked` lines of a known_hosts file as (host patterns, key blob). paramiko skips
    these lines, so without this a revoked key would just look unknown (or be trusted anew)."""
    found = []
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "@revoked":
            with contextlib.suppress(ValueError):
                found.append((fields[1], base64.b64decode(fields[3], validate=True)))
    return found


def host_field_matches(field_: str, target: str) -> bool:
    """Whether a known_hosts host field (patterns, hashed `|1|` entries) names `target`."""
    for pattern in field_.split(","):
        if pattern.startswith("|1|"):
            try:
                salt = pattern.split("|")[2]
                if paramiko.HostKeys.hash_host(target, salt) == pattern:
                    return True
            except (IndexError, ValueError, AssertionError):  # a malformed hashed entry: not ours
                continue
        elif pattern == target:
            return True
    return False


def is_revoked(path: Path, name: str, key: paramiko.PKey) -> bool:
    blob = key.asbytes()
    for patterns, revoked in revoked_keys(path):
        if revoked == blob and (host_field_matches(patterns, name) or any(
                fnmatch.fnmatchcase(name, p) for p in patterns.split(",") if not p.startswith("|"))):
            return True
    return False


def revoked_error(host: str, port: int, key: paramiko.PKey, path: Path) -> RemoteError:
    return RemoteError(
        f"The server {host} (port {port}) presents the key {fingerprint(key)}, which your known_hosts file "
        f"({path}) marks as revoked. labdeploy refuses to connect.",
        "A revoked key must not be used again: ask the server's administrator for the server's current key. "
        "If someone else now presents this key, the connection may be intercepted.", code="ssh.host_key.revoked")


def changed_key_error(host: str, port: int, path: Path, key: paramiko.PKey,
                      expected: paramiko.PKey) -> ChangedHostKey:
    fp, old = fingerprint(key), fingerprint(expected)
    return ChangedHostKey(
        f"The server {host} (port {port}) presents a different host key than the one stored "
        f"in {path}: now {fp}, stored {old}. labdeploy refuses to connect.",
        remedy=Remedy("ssh.host_key.changed", name=known_hosts_name(host, port)),
        host=host, port=port, fingerprint=fp, expected_fingerprint=old)


@dataclass(frozen=True)
class HostKeyStatus:
    """The first-contact question: what the server presents versus what known_hosts holds."""
    state: str  # "known", "unknown" or "changed"
    key_type: str
    fingerprint: str
    expected_fingerprint: str = ""


class KnownHosts:
    """One known_hosts file (OpenSSH's format; written only by `add` and `forget`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> paramiko.HostKeys:
        """The file, read line by line. paramiko's own loader stops with InvalidHostKey at the
        first `@cert-authority` / `@revoked` line (common where SSH certificates are used) or
        broken line; such lines are skipped here (revocations are checked separately)."""
        keys = paramiko.HostKeys()
        if not self.path.exists():
            return keys
        for lineno, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#") or line.startswith("@"):
                continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
            except Exception:  # InvalidHostKey, an unknown key type, bad base64: not usable
                continue
            if entry is not None and entry.key is not None:
                for name in entry.hostnames:
                    keys.add(name, entry.key.get_name(), entry.key)
        return keys

    def stored(self, host: str, port: int) -> dict:
        """{key type: key} stored for host:port (empty when none)."""
        return dict(self.read().lookup(known_hosts_name(host, port)) or {})

    def status(self, host: str, port: int, key: paramiko.PKey) -> HostKeyStatus:
        """Is `key` (what the server presents) the stored one, an unknown one, or a changed one?"""
        fp = fingerprint(key)
        stored = self.stored(host, port)
        if not stored:
            return HostKeyStatus("unknown", key.get_name(), fp)
        same = stored.get(key.get_name())
        if same is not None and same.asbytes() == key.asbytes():
            return HostKeyStatus("known", key.get_name(), fp, fp)
        other = same if same is not None else next(iter(stored.values()))
        return HostKeyStatus("changed", key.get_name(), fp, fingerprint(other))

    def is_revoked(self, host: str, port: int, key: paramiko.PKey) -> bool:
        return is_revoked(self.path, known_hosts_name(host, port), key)

    def add(self, host: str, port: int, key: paramiko.PKey) -> None:
        """Append one line (0600, folder 0700); the lines already there stay as they are."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = f"{known_hosts_name(host, port)} {key.get_name()} {key.get_base64()}\n"
        existing = self.path.read_text() if self.path.exists() else ""
        sep = "" if not existing or existing.endswith("\n") else "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(sep + line)

    def forget(self, host: str, port: int) -> int:
        """Remove every line of host:port; returns how many. Other lines are kept as they are."""
        if not self.path.exists():
            return 0
        target = known_hosts_name(host, port)
        kept, removed = [], 0
        for line in self.path.read_text().splitlines(keepends=True):
            fields = line.split()
            if fields and not line.lstrip().startswith("#") and host_field_matches(fields[0], target):
                removed += 1
            else:
                kept.append(line)
        if removed:
            write_atomic(self.path, "".join(kept), 0o600)
        return removed


class RaiseOnUnknown(paramiko.MissingHostKeyPolicy):
    """Never accept an unknown host key: hand its fingerprint to the caller instead."""

    def __init__(self, port: int, known_hosts: Optional[Path] = None) -> None:
        self.port = port
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        host = hostname
        if hostname.startswith("["):  # paramiko passes "[host]:port" for other ports
            host = hostname[1:].split("]")[0]
        if self.known_hosts is not None and is_revoked(self.known_hosts, hostname, key):
            raise revoked_error(host, self.port, key, self.known_hosts)
        fp = fingerprint(key)
        raise UnknownHostKey(
            f"The server {host} (port {self.port}) is not known yet. Its {key.get_name()} key has the "
            f"fingerprint {fp}.", remedy=Remedy("ssh.host_key.confirm", fingerprint=fp),
            host=host, port=self.port, key_type=key.get_name(), fingerprint=fp)


class HostKeys:
    """The host-key part of `Remote`: ask the server for its key (no login) and keep
    known_hosts. Uses the Remote's host, port, known_hosts, connect_timeout and `_open_socket`
    (from `Connection`)."""

    host: str
    port: int
    known_hosts: Path
    connect_timeout: float

    @property
    def known_hosts_file(self) -> KnownHosts:
        return KnownHosts(self.known_hosts)

    def server_host_key(self) -> paramiko.PKey:
        """The key the server presents now, read from its SSH greeting without logging in."""
        transport = paramiko.Transport(self._open_socket())
        transport.banner_timeout = self.connect_timeout
        try:
            transport.start_client(timeout=self.connect_timeout)
            return transport.get_remote_server_key()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if isinstance(exc, (socket.timeout, TimeoutError)) and transport.remote_version:
                raise ConnectTimeout(f"{self.host}:{self.port} did not finish the SSH greeting in time.",
                                     "The server may be overloaded; try again in a minute.") from exc
            raise HostUnreachable(f"Something answers on {self.host}:{self.port}, but it is not an SSH server.",
                                  "Check the port number: SSH normally uses 22.") from exc
        finally:
            transport.close()

    def fetch_host_key(self) -> tuple[str, str]:
        """(key type, SHA256 fingerprint) of the key the server presents, without logging in."""
        key = self.server_host_key()
        return key.get_name(), fingerprint(key)

    def host_key_status(self) -> HostKeyStatus:
        """What the server presents versus what known_hosts has (known / unknown / changed)."""
        return self.known_hosts_file.status(self.host, self.port, self.server_host_key())

    def stored_host_key(self) -> Optional[paramiko.PKey]:
        stored = self.known_hosts_file.stored(self.host, self.port)
        return next(iter(stored.values())) if stored else None

    def trust_host_key(self, expected_fingerprint: str) -> None:
        """Store the server's key in known_hosts, if and only if it has this fingerprint.

        Call it after the user confirmed the fingerprint shown by `UnknownHostKey`. A key that
        differs from one already stored is refused (use `forget_host_key` first, deliberately).
        """
        known = self.known_hosts_file
        key = self.server_host_key()
        fp = fingerprint(key)
        if known.is_revoked(self.host, self.port, key):
            raise revoked_error(self.host, self.port, key, self.known_hosts)
        if fp != expected_fingerprint.strip():
            raise ChangedHostKey(
                f"The server {self.host} now presents the key {fp}, not the {expected_fingerprint} you confirmed.",
                "Do not trust it: check the fingerprint with the server's administrator and try again.",
                code="ssh.host_key.mismatch", host=self.host, port=self.port, fingerprint=fp, expected_fingerprint=expected_fingerprint)
        stored = known.stored(self.host, self.port)
        if stored:
            same = stored.get(key.get_name())
            if same is not None and same.asbytes() == key.asbytes():
                return
            raise self._changed_key_error(key, next(iter(stored.values())))
        known.add(self.host, self.port, key)

    def forget_host_key(self) -> int:
        """Remove every stored key of this host:port from known_hosts (the deliberate fix after a
        server was rebuilt). Returns how many lines were removed; other lines are kept as they are."""
        return self.known_hosts_file.forget(self.host, self.port)

    def _changed_key_error(self, key: paramiko.PKey, expected: paramiko.PKey) -> ChangedHostKey:
        return changed_key_error(self.host, self.port, self.known_hosts, key, expected)

    # Kept on the class for callers (and tests) that used them as Remote's own.
    _is_revoked = staticmethod(is_revoked)
    _host_field_matches = staticmethod(host_field_matches)
