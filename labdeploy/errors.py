"""One small exception hierarchy. Every error says what went wrong and what to do next."""

from __future__ import annotations

from typing import Optional

from .redaction import redact
from .remedies import Remedy, api_hint  # noqa: F401 - Remedy is handed out here too


class LabdeployError(Exception):
    """Base of all labdeploy errors.

    * `message`: what went wrong, in the researcher's words, the same in every front end;
    * `code`: a stable name for what went wrong ("app.unknown", "ssh.host_key.changed"), for
      scripts and the CLI's exit codes; a class gives its default, a raise may be more exact;
    * `remedy`: what to do next when that is an action in a front end: a key and its args
      (labdeploy.remedies), which the API, the CLI and the panels each put in their words;
      else `hint` given at the raise: advice that reads the same everywhere;
    * `hint`: what to do, in the Python API's words (`str(exc)` shows it after the message).

    An error is complete when raised: nothing changes it afterwards (a front end renders its
    remedy, it does not rewrite it).
    """

    code = "error"
    #: A class's usual remedy, when the raise gives none; a front end fills its args from its
    #: own context (the CLI's --app, the panel's chosen app).
    remedy: Optional[Remedy] = None

    def __init__(self, message: str, hint: str = "", *, code: Optional[str] = None,
                 remedy: Optional[Remedy] = None) -> None:
        # Messages often quote what a server or an app printed: secrets are masked here, once.
        message, hint = redact(message), redact(hint)
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self._own_remedy = remedy is not None
        self.remedy = remedy if remedy is not None else type(self).remedy
        self.plain_hint = hint or ""  # front-end-neutral advice given at the raise (if any)

    _FIXED = frozenset({"message", "code", "remedy", "plain_hint", "_own_remedy"})

    def __setattr__(self, name: str, value) -> None:
        # Set once, by the raise; a front end words the remedy, it does not rewrite the error.
        # (Setting the same value again is allowed: copy and pickle restore the attributes.)
        if name in self._FIXED and name in self.__dict__ and self.__dict__[name] != value:
            raise AttributeError(f"{type(self).__name__}.{name} is fixed when the error is made")
        super().__setattr__(name, value)

    def __reduce__(self):
        # copy and pickle rebuild the error as it was made, without calling __init__ again.
        return _rebuild, (type(self), self.args, dict(self.__dict__))

    @property
    def hint(self) -> str:
        """What to do, in the Python API's words: the raise's remedy, else its plain hint, else
        the class's usual remedy."""
        if not self._own_remedy and self.plain_hint:
            return self.plain_hint
        return api_hint(self.remedy, self.plain_hint)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nWhat to do: {self.hint}"
        return self.message


def _rebuild(cls, args, state):
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ValidationError(LabdeployError, ValueError):
    """Bad input: a name, path or setting that cannot be used. Codes start with "invalid"."""

    code = "invalid"


class UnknownApp(LabdeployError):
    """No app of that name on this server (no containers, folder or database, as the caller
    needs)."""

    code = "app.unknown"


# --- SSH / remote ---------------------------------------------------------

class RemoteError(LabdeployError):
    """Anything that went wrong talking to the server."""

    code = "remote.failed"


class HostUnreachable(RemoteError):
    """No TCP connection could be made (refused, no route, wrong port)."""

    code = "ssh.unreachable"


class DNSFailure(RemoteError):
    """The host name did not resolve."""

    code = "ssh.dns"


class AuthenticationFailed(RemoteError):
    """The server refused our key or password."""

    code = "ssh.auth"


class ConnectTimeout(RemoteError):
    """Connecting or a command took longer than allowed."""

    code = "ssh.timeout"


class CommandTimeout(ConnectTimeout):
    """A remote command ran past its timeout."""

    code = "remote.command.timeout"


class UnknownHostKey(RemoteError):
    """First contact: the server's key is not in known_hosts yet and needs confirming."""

    code = "ssh.host_key.unknown"

    def __init__(self, message: str, hint: str = "", *, host: str, port: int,
                 key_type: str, fingerprint: str, role: str = "server", **kw) -> None:
        super().__init__(message, hint, **kw)
        self.host = host
        self.port = port
        self.key_type = key_type
        self.fingerprint = fingerprint
        self.role = role  # "server", or "jump host" for a hop on the way to it (ProxyJump)


class ChangedHostKey(RemoteError):
    """The server presents a key other than the one stored: refused."""

    code = "ssh.host_key.changed"

    def __init__(self, message: str, hint: str = "", *, host: str, port: int,
                 fingerprint: str, expected_fingerprint: str, role: str = "server", **kw) -> None:
        super().__init__(message, hint, **kw)
        self.host = host
        self.port = port
        self.fingerprint = fingerprint
        self.expected_fingerprint = expected_fingerprint
        self.role = role  # "server" or "jump host"


class CommandFailed(RemoteError):
    """A remote command exited non-zero."""

    code = "remote.command.failed"

    def __init__(self, message: str, hint: str = "", *, argv=None, exit_status: int = -1,
                 stdout: str = "", stderr: str = "", **kw) -> None:
        super().__init__(message, hint, **kw)
        self.argv = argv
        self.exit_status = exit_status
        self.stdout = redact(stdout)
        self.stderr = redact(stderr)


class ConnectionLost(RemoteError):
    """The SSH connection dropped while something was running."""

    code = "ssh.connection_lost"


class DiskFull(LabdeployError, OSError):
    """A disk (or a quota) ran out: on this computer while writing a file, or on the server
    while storing an image or data."""

    code = "disk.full"


DISK_FULL_PATTERNS = ("no space left on device", "disk quota exceeded", "enospc")


def is_disk_full(text: str) -> bool:
    """Whether an error text (Docker's, a shell's, Python's) says a disk is full."""
    low = (text or "").lower()
    return any(p in low for p in DISK_FULL_PATTERNS)
