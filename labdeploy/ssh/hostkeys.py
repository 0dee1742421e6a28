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
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import paramiko

from ..errors import (ChangedHostKey, ConnectTimeout, HostUnreachable, Remedy, RemoteError, UnknownHostKey,
                      ValidationError)
from ..localfiles import write_atomic
from .jump import proxy_command_failed


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key, e.g. 'SHA256:47DEQpj8HBSa+/...'."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


_FINGERPRINT_BODY = re.compile(r"[A-Za-z0-9+/]{43}")


def normalise_fingerprint(text: str) -> str:
    """A fingerprint as typed or pasted, in OpenSSH's form: spaces and line breaks out, the
    "SHA256:" prefix in any case (or none), base64's trailing "=" dropped."""
    body = "".join((text or "").split())
    if body[:7].lower() == "sha256:":
        body = body[7:]
    return "SHA256:" + body.rstrip("=")


def compare_fingerprint(given: str, presented: str) -> str:
    """How a fingerprint from the administrator compares with the one the server presents:
    "match"; "malformed" (not the shape of a SHA256 fingerprint: 43 characters of base64);
    "case" (equal but for upper/lower case: base64 letters differ by case, so it is another
    key or a misread); "different"."""
    a, b = normalise_fingerprint(given), normalise_fingerprint(presented)
    if not _FINGERPRINT_BODY.fullmatch(a[7:]):
        return "malformed"
    if a == b:
        return "match"
    return "case" if a.lower() == b.lower() else "different"


def check_fingerprint_format(given: str) -> str:
    """The fingerprint in OpenSSH's form, or a ValidationError saying what shape it must have
    (before anything connects)."""
    if compare_fingerprint(given, "") == "malformed":
        raise ValidationError(
            f"{given.strip()!r} is not a SHA256 host key fingerprint: one looks like 'SHA256:' followed by "
            "43 letters, digits, '+' and '/'.",
            "Copy the fingerprint exactly as the administrator gave it (or as the setup shows it) and try again.",
            code="invalid.fingerprint")
    return normalise_fingerprint(given)


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


def who(host: str, port: int, role: str = "server", on_the_way_to: Optional[str] = None) -> str:
    """'The server lab.example.org (port 22)', or for a hop on the way to a server 'The jump host
    bastion.example.org (port 22, on the way to lab.example.org)': every host-key message names
    which hop it is about."""
    way = f", on the way to {on_the_way_to}" if on_the_way_to else ""
    return f"The {role} {host} (port {port}{way})"


def revoked_error(host: str, port: int, key: paramiko.PKey, path: Path, role: str = "server",
                  on_the_way_to: Optional[str] = None) -> RemoteError:
    return RemoteError(
        f"{who(host, port, role, on_the_way_to)} presents the key {fingerprint(key)}, which your known_hosts file "
        f"({path}) marks as revoked. labdeploy refuses to connect.",
        "A revoked key must not be used again: ask the server's administrator for the server's current key. "
        "If someone else now presents this key, the connection may be intercepted.", code="ssh.host_key.revoked")


def changed_key_error(host: str, port: int, path: Path, key: paramiko.PKey,
                      expected: paramiko.PKey, role: str = "server",
                      on_the_way_to: Optional[str] = None) -> ChangedHostKey:
    fp, old = fingerprint(key), fingerprint(expected)
    return ChangedHostKey(
        f"{who(host, port, role, on_the_way_to)} presents a different host key than the one stored "
        f"in {path}: now {fp}, stored {old}. labdeploy refuses to connect.",
        remedy=Remedy("ssh.host_key.changed", name=known_hosts_name(host, port)),
        host=host, port=port, fingerprint=fp, expected_fingerprint=old, role=role)


@dataclass(frozen=True)
class HostKeyStatus:
    """The first-contact question: what the server presents versus what known_hosts holds."""
    state: str  # "known", "unknown" or "changed"
    key_type: str
    fingerprint: str
    expected_fingerprint: str = ""
    # Whose key it is: behind jump hosts, the first hop whose key is not known yet is asked
    # about first (the server's own key can only be read through a trusted jump host).
    host: str = ""
    port: int = 0
    role: str = "server"  # or "jump host"


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

    def status(self, host: str, port: int, key: paramiko.PKey, role: str = "server") -> HostKeyStatus:
        """Is `key` (what the server presents) the stored one, an unknown one, or a changed one?"""
        fp = fingerprint(key)
        stored = self.stored(host, port)
        whose = {"host": host, "port": port, "role": role}
        if not stored:
            return HostKeyStatus("unknown", key.get_name(), fp, **whose)
        same = stored.get(key.get_name())
        if same is not None and same.asbytes() == key.asbytes():
            return HostKeyStatus("known", key.get_name(), fp, fp, **whose)
        other = same if same is not None else next(iter(stored.values()))
        return HostKeyStatus("changed", key.get_name(), fp, fingerprint(other), **whose)

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

    def __init__(self, port: int, known_hosts: Optional[Path] = None, role: str = "server",
                 on_the_way_to: Optional[str] = None) -> None:
        self.port = port
        self.known_hosts = known_hosts
        self.role = role
        self.on_the_way_to = on_the_way_to

    def missing_host_key(self, client, hostname, key):
        host = hostname
        if hostname.startswith("["):  # paramiko passes "[host]:port" for other ports
            host = hostname[1:].split("]")[0]
        if self.known_hosts is not None and is_revoked(self.known_hosts, hostname, key):
            raise revoked_error(host, self.port, key, self.known_hosts, self.role, self.on_the_way_to)
        fp = fingerprint(key)
        raise UnknownHostKey(
            f"{who(host, self.port, self.role, self.on_the_way_to)} is not known yet. Its {key.get_name()} key "
            f"has the fingerprint {fp}.",
            remedy=(Remedy("ssh.host_key.confirm.jump", fingerprint=fp) if self.on_the_way_to
                    else Remedy("ssh.host_key.confirm", fingerprint=fp)),
            host=host, port=self.port, key_type=key.get_name(), fingerprint=fp, role=self.role)


class HostKeys:
    """The host-key part of `Remote`: ask the server for its key (no login) and keep
    known_hosts. Uses the Remote's host, port, known_hosts, connect_timeout, role, `via` (the
    jump host's Remote, if any) and `_open_socket` (from `Connection`).

    Behind a jump host (ProxyJump) there is one key per hop, each checked against the same
    known_hosts: the jump host's is read directly, the server's through the jump host (which
    needs logging in there, so its key must be trusted first). `host_key_status()` answers for
    the first hop whose key is not known yet, `trust_host_key(fp)` stores that one."""

    alias: str
    host: str
    port: int
    known_hosts: Path
    ssh_config: Path
    connect_timeout: float
    role: str
    via: Optional["HostKeys"]
    on_the_way_to: Optional[str]

    @property
    def known_hosts_file(self) -> KnownHosts:
        return KnownHosts(self.known_hosts)

    def server_host_key(self) -> paramiko.PKey:
        """The key the server presents now, read from its SSH greeting without logging in (behind
        a jump host: through it, logged in there)."""
        transport = paramiko.Transport(self._open_socket())
        transport.banner_timeout = self.connect_timeout
        try:
            transport.start_client(timeout=self.connect_timeout)
            return transport.get_remote_server_key()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if isinstance(exc, (socket.timeout, TimeoutError)) and transport.remote_version:
                raise ConnectTimeout(f"{self.host}:{self.port} did not finish the SSH greeting in time.",
                                     "The server may be overloaded; try again in a minute.") from exc
            raise self._not_ssh(exc) from exc
        finally:
            transport.close()

    def _not_ssh(self, exc: BaseException) -> HostUnreachable:
        proxy = getattr(self, "_proxy", None)
        if proxy is not None:
            return proxy_command_failed(proxy, self.alias, str(self.ssh_config), self.host, self.port, exc)
        way = f" (the jump host on the way to {self.on_the_way_to})" if self.on_the_way_to else ""
        return HostUnreachable(f"Something answers on {self.host}:{self.port}{way}, but it is not an SSH server.",
                               "Check the port number: SSH normally uses 22.")

    def fetch_host_key(self) -> tuple[str, str]:
        """(key type, SHA256 fingerprint) of the key the server presents, without logging in."""
        key = self.server_host_key()
        return key.get_name(), fingerprint(key)

    def host_key_statuses(self) -> list[HostKeyStatus]:
        """Each hop's key versus known_hosts, jump hosts first, the server last; it stops at the
        first hop not known (the hops behind it can't be asked before it is trusted)."""
        statuses = self.via.host_key_statuses() if self.via is not None else []
        if statuses and statuses[-1].state != "known":
            return statuses
        return statuses + [self.known_hosts_file.status(self.host, self.port, self.server_host_key(), self.role)]

    def host_key_status(self) -> HostKeyStatus:
        """What the server presents versus what known_hosts has (known / unknown / changed).
        Behind jump hosts: the first hop whose key is not known yet (its `host` and `role` say
        which), else the server's."""
        return self.host_key_statuses()[-1]

    def stored_host_key(self) -> Optional[paramiko.PKey]:
        stored = self.known_hosts_file.stored(self.host, self.port)
        return next(iter(stored.values())) if stored else None

    def trust_host_key(self, expected_fingerprint: str) -> None:
        """Store the server's key in known_hosts, if and only if it has this fingerprint.

        Call it after the user confirmed the fingerprint shown by `UnknownHostKey`. A key that
        differs from one already stored is refused (use `forget_host_key` first, deliberately).
        Behind jump hosts it trusts the first hop whose key is not known yet (the one the
        `UnknownHostKey` was about): call it once per hop, as each is asked about.
        """
        if self.via is not None and self.via.host_key_status().state != "known":
            self.via.trust_host_key(expected_fingerprint)
            return
        known = self.known_hosts_file
        key = self.server_host_key()
        fp = fingerprint(key)
        if known.is_revoked(self.host, self.port, key):
            raise revoked_error(self.host, self.port, key, self.known_hosts, self.role, self.on_the_way_to)
        given = check_fingerprint_format(expected_fingerprint)
        verdict = compare_fingerprint(given, fp)
        if verdict != "match":
            first = ("" if self.role == "server" else
                     " A jump host's key is confirmed before the key of the server behind it.")
            case = " They differ only in upper/lower case, which matters in a fingerprint." if verdict == "case" else ""
            raise ChangedHostKey(
                f"The fingerprint you gave ({given}) does not match the key the {self.role} {self.host} presents "
                f"({fp}).{case}{first}",
                "Check the fingerprint with the server's administrator, character by character; trust the key only "
                "when they are the same. If the administrator's fingerprint really differs, do not connect.",
                code="ssh.host_key.mismatch", host=self.host, port=self.port, fingerprint=fp,
                expected_fingerprint=given, role=self.role)
        stored = known.stored(self.host, self.port)
        if stored:
            same = stored.get(key.get_name())
            if same is not None and same.asbytes() == key.asbytes():
                return
            raise self._changed_key_error(key, next(iter(stored.values())))
        known.add(self.host, self.port, key)

    def forget_host_key(self) -> int:
        """Remove every stored key of this host:port from known_hosts (the deliberate fix after a
        server was rebuilt). Returns how many lines were removed; other lines are kept as they are.
        (A jump host's key: `remote.via.forget_host_key()`.)"""
        return self.known_hosts_file.forget(self.host, self.port)

    def _changed_key_error(self, key: paramiko.PKey, expected: paramiko.PKey) -> ChangedHostKey:
        return changed_key_error(self.host, self.port, self.known_hosts, key, expected, self.role,
                                 self.on_the_way_to)

    # Kept on the class for callers (and tests) that used them as Remote's own.
    _is_revoked = staticmethod(is_revoked)
    _host_field_matches = staticmethod(host_field_matches)
