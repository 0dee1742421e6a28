"""One small exception hierarchy. Every error says what went wrong and what to do next."""

from __future__ import annotations

from .redaction import redact


class LabdeployError(Exception):
    """Base of all labdeploy errors: a message in the researcher's words plus a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        # Messages often quote what a server or an app printed: secrets are masked here, once.
        message, hint = redact(message), redact(hint)
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nWhat to do: {self.hint}"
        return self.message


class ValidationError(LabdeployError, ValueError):
    """Bad input: a name, path or setting that cannot be used."""


class UnknownApp(LabdeployError):
    """No app of that name on this server (no containers, folder or database, as the caller
    needs)."""


# --- SSH / remote ---------------------------------------------------------

class RemoteError(LabdeployError):
    """Anything that went wrong talking to the server."""


class HostUnreachable(RemoteError):
    """No TCP connection could be made (refused, no route, wrong port)."""


class DNSFailure(RemoteError):
    """The host name did not resolve."""


class AuthenticationFailed(RemoteError):
    """The server refused our key or password."""


class ConnectTimeout(RemoteError):
    """Connecting or a command took longer than allowed."""


class CommandTimeout(ConnectTimeout):
    """A remote command ran past its timeout."""


class UnknownHostKey(RemoteError):
    """First contact: the server's key is not in known_hosts yet and needs confirming."""

    def __init__(self, message: str, hint: str, *, host: str, port: int,
                 key_type: str, fingerprint: str) -> None:
        super().__init__(message, hint)
        self.host = host
        self.port = port
        self.key_type = key_type
        self.fingerprint = fingerprint


class ChangedHostKey(RemoteError):
    """The server presents a key other than the one stored: refused."""

    def __init__(self, message: str, hint: str, *, host: str, port: int,
                 fingerprint: str, expected_fingerprint: str) -> None:
        super().__init__(message, hint)
        self.host = host
        self.port = port
        self.fingerprint = fingerprint
        self.expected_fingerprint = expected_fingerprint


class CommandFailed(RemoteError):
    """A remote command exited non-zero."""

    def __init__(self, message: str, hint: str = "", *, argv=None, exit_status: int = -1,
                 stdout: str = "", stderr: str = "") -> None:
        super().__init__(message, hint)
        self.argv = argv
        self.exit_status = exit_status
        self.stdout = redact(stdout)
        self.stderr = redact(stderr)


class ConnectionLost(RemoteError):
    """The SSH connection dropped while something was running."""


class DiskFull(LabdeployError, OSError):
    """A disk (or a quota) ran out: on this computer while writing a file, or on the server
    while storing an image or data."""


DISK_FULL_PATTERNS = ("no space left on device", "disk quota exceeded", "enospc")


def is_disk_full(text: str) -> bool:
    """Whether an error text (Docker's, a shell's, Python's) says a disk is full."""
    low = (text or "").lower()
    return any(p in low for p in DISK_FULL_PATTERNS)
