"""The list of servers a researcher has registered: name, host, port, user, key, jump host.

Kept in one small JSON file in the user's config folder (platformdirs), written atomically.
Dallinger's own registrations (~/.dallinger/docker-ssh/hosts/<host>) can be imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import pandas as pd
import platformdirs

from .. import names
from ..errors import LabdeployError, Remedy, ValidationError
from ..localfiles import write_atomic
from ..progress import Reporter, WarningEvent, null_reporter
from ..remote import Remote

FILE_VERSION = 1


class ServerNotFound(LabdeployError):
    """No registered server has that name."""

    code = "server.unknown"


class ServerExists(LabdeployError):
    """A server with that name is registered already."""

    code = "server.exists"


@dataclass(frozen=True)
class Server:
    name: str
    host: str
    port: int = 22
    user: str = ""
    key: Optional[str] = None  # path of the private key; None = ssh-agent / ~/.ssh defaults
    # ProxyJump: "user@bastion[:port]" (hops separated by commas) or "none"; None = as
    # ~/.ssh/config says for the host (its ProxyJump or ProxyCommand, if any).
    jump: Optional[str] = None

    def validated(self) -> "Server":
        names.server_name(self.name)
        names.host(self.host)
        names.port(self.port)
        names.user(self.user)
        if self.key is not None:
            key_path(self.key)
        if self.jump is not None:
            names.jump(self.jump)
        return self

    @property
    def label(self) -> str:
        way = f" via {self.jump}" if self.jump and self.jump != names.JUMP_NONE else ""
        return f"{self.user}@{self.host}" + ("" if self.port == 22 else f":{self.port}") + way


def key_path(path) -> str:
    """A private key's path as registered: one line of printable text (it is written to the
    server list and shown in tables, terminals and ssh errors)."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    text = text if isinstance(text, str) else None  # bytes paths too are refused
    if not text or not text.strip() or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValidationError(f"The key path {path!r} is not usable.",
                              "Give the path of a private key file, e.g. ~/.ssh/id_ed25519 (no line breaks or "
                              "control characters).", code="invalid.key_path")
    try:
        Path(text).expanduser()
    except RuntimeError:  # '~someone' for a user this computer doesn't know
        raise ValidationError(f"The key path {text!r} starts with an unknown user's home (~name).",
                              "Give the key's full path, or ~/... for your own home.", code="invalid.key_path") from None
    return text


def config_file() -> Path:
    """Where the list lives (~/.config/labdeploy/servers.json on Linux)."""
    return Path(platformdirs.user_config_dir("labdeploy")) / "servers.json"


def _load() -> dict[str, Server]:
    path = config_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        # A file written before jump hosts existed has no "jump": the server is reached as before.
        return {s["name"]: Server(s["name"], s["host"], int(s.get("port", 22)), s["user"], s.get("key"),
                                  s.get("jump"))
                for s in data.get("servers", [])}
    except (ValueError, KeyError, TypeError) as exc:
        raise LabdeployError(f"The server list {path} could not be read ({exc}).",
                             "Fix the file by hand, or move it away and register the servers again.",
                             code="server.list_unreadable") from None


def _save(servers: dict[str, Server]) -> None:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": FILE_VERSION, "servers": [asdict(s) for s in sorted(servers.values(), key=lambda s: s.name)]}
    # Readers see the old list or the new one, never half of one.
    write_atomic(path, json.dumps(data, indent=2) + "\n", 0o600)


def add(name: str, host: str, user: str, port: int = 22, key: Optional[Union[str, os.PathLike]] = None, *,
        jump: Optional[str] = None, replace: bool = False) -> Server:
    """Register a server. A name already taken is refused unless `replace=True`.

    `jump`: the jump host(s) it is reached through, as `ssh -J` takes them ("alice@bastion",
    "alice@bastion:2222", "a@hop1,b@hop2"), or "none" to ignore a ProxyJump in ~/.ssh/config.
    Left out, ~/.ssh/config decides. Each jump host's key is checked like the server's."""
    # Absolute: a relative path would mean another file from another working directory.
    key = str(Path(key_path(key)).expanduser().absolute()) if key else None
    jump = names.jump(jump) if jump is not None else None
    server = Server(name, host, names.port(port), user, key, jump).validated()
    servers = _load()
    if name in servers and servers[name] != server and not replace:
        raise ServerExists(f"A server named {name!r} is registered already ({servers[name].label}).",
                           remedy=Remedy("server.exists", server=name))
    servers[name] = server
    _save(servers)
    return server


def list_servers() -> list[Server]:
    return sorted(_load().values(), key=lambda s: s.name)


def table() -> pd.DataFrame:
    """The registered servers as a DataFrame."""
    return pd.DataFrame([asdict(s) for s in list_servers()], columns=["name", "host", "port", "user", "key", "jump"])


def get(name: str) -> Server:
    servers = _load()
    if name not in servers:
        known = ", ".join(sorted(servers)) or "none yet"
        raise ServerNotFound(f"No server named {name!r} is registered (registered: {known}).",
                             remedy=Remedy("server.register", server=name))
    return servers[name]


def remove(name: str, *, confirm: bool = False) -> Server:
    """Forget a registered server (only the local entry; nothing on the server changes)."""
    server = get(name)
    if not confirm:
        raise LabdeployError(f"Removing {name!r} from the server list needs confirmation.",
                             code="confirmation.required", remedy=Remedy("server.remove.confirm", server=name))
    servers = _load()
    servers.pop(name, None)
    _save(servers)
    return server


def dallinger_hosts_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".dallinger" / "docker-ssh" / "hosts"


def import_dallinger_hosts(directory: Optional[Union[str, os.PathLike]] = None,
                           reporter: Optional[Reporter] = None) -> list[Server]:
    """Register the servers Dallinger knows (one JSON file per host: {"host": ..., "user": ...}).

    Returns the servers added; ones registered already are left as they are, unreadable files
    are reported as warnings and skipped.
    """
    reporter = reporter or null_reporter
    directory = Path(directory) if directory else dallinger_hosts_dir()
    if not directory.is_dir():
        return []
    servers = _load()
    taken = {(s.host, s.user, s.port) for s in servers.values()}
    added = []
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            host = names.host(str(data["host"]))
            user = names.user(str(data.get("user") or os.environ.get("USER") or "root"))
            port = names.port(data.get("port", 22))
            name = names.server_name(host)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            reporter(WarningEvent(f"Skipped Dallinger host file {path.name}: {message}",
                              "Fix or remove that file, or register the server by hand."))
            continue
        if (host, user, port) in taken or name in servers:
            continue
        servers[name] = Server(name, host, port, user, None)
        taken.add((host, user, port))
        added.append(servers[name])
    if added:
        _save(servers)
    return added


def resolve(server: Union[Remote, Server, str], *, known_hosts=None, password: Optional[str] = None,
            passphrase: Optional[str] = None, connect_timeout: float = 10.0) -> Remote:
    """A `Remote` for a Remote (returned as is), a `Server`, or the name of a registered server.

    Not connected yet: `connect()` raises the usual clear errors (host key, login, network).
    """
    if isinstance(server, Remote):
        return server
    if isinstance(server, str):
        server = get(server)
    if not isinstance(server, Server):
        raise ValidationError(f"Can't use {server!r} as a server.", code="invalid.server_argument",
                              remedy=Remedy("api.server_argument"))
    server.validated()
    return Remote(server.host, server.port, server.user, key_filename=server.key, passphrase=passphrase,
                  password=password, known_hosts=known_hosts, connect_timeout=connect_timeout, jump=server.jump)
