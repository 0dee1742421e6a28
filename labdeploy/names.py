"""Validation of every name that reaches a shell, a path or SQL.

Names are checked here first and quoted anyway where they are used.
"""

from __future__ import annotations

import ipaddress
import re

from .errors import ValidationError

APP_MAX = 40  # leaves room for prefixes inside PostgreSQL's 63-byte identifiers
_APP_RE = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$")
_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# Names the server's layout and shared stack already use (labdeploy.layout): an app of that
# name would share a folder, a Compose project, a container or a volume with them, and its
# deploy (`--remove-orphans`) or destroy (`rm -rf ~/dallinger/<app>`) would reach them.
# Every name of the form `dallinger-*` is kept for the stack's own containers, now and later.
RESERVED_APP_NAMES = frozenset({
    "dallinger",                       # ~/dallinger, the stack's Compose project and network
    "dallinger-data",                  # ~/dallinger-data
    "secrets", "caddy", "caddy-d",     # ~/dallinger/secrets, caddy.d, the stack's services
    "postgresql", "postgres", "pgbouncer", "redis",
    "backups", "build", "locks", "stack", "shared",  # ~/dallinger-data/backups, .build, .locks
    "labdeploy", "docker", "web", "worker", "clock",
})
RESERVED_PREFIX = "dallinger-"


def app_name(name: str) -> str:
    """An app name: lowercase letters, digits and hyphens, starting with a letter."""
    if not isinstance(name, str) or not name:
        raise ValidationError("The app name is empty.",
                              "Choose a name such as 'my-experiment' (lowercase letters, digits, hyphens).")
    if len(name) > APP_MAX:
        raise ValidationError(f"The app name {name!r} is {len(name)} characters long; at most {APP_MAX} are allowed.",
                              "Choose a shorter name.")
    if not _APP_RE.fullmatch(name) or "--" in name:
        raise ValidationError(
            f"The app name {name!r} can't be used.",
            "Use only lowercase letters, digits and single hyphens, start with a letter and end with a "
            "letter or digit, e.g. 'stroop-pilot-2'.")
    if name in RESERVED_APP_NAMES or name.startswith(RESERVED_PREFIX):
        raise ValidationError(
            f"The app name {name!r} is reserved: the server's shared services and folders use it.",
            f"Choose another name, e.g. '{name}-study' or 'my-experiment'. Reserved: "
            f"{', '.join(sorted(RESERVED_APP_NAMES))} and every name starting with '{RESERVED_PREFIX}'.")
    return name


def host(name: str) -> str:
    """A host name or an IP address."""
    if not isinstance(name, str) or not name:
        raise ValidationError("The server address is empty.", "Enter a host name such as 'lab.example.org' or an IP address.")
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise ValidationError(
            f"The server address {name!r} is not a valid host name or IP address.",
            "Use a host name such as 'lab.example.org' (letters, digits, dots, hyphens) or an IP address; "
            "no spaces or shell characters.")
    return name


def user(name: str) -> str:
    """A POSIX login name."""
    if not isinstance(name, str) or not _USER_RE.fullmatch(name):
        raise ValidationError(
            f"The user name {name!r} is not a valid login name.",
            "Use the account name you log in to the server with: lowercase letters, digits, '_', '-' or '.', "
            "starting with a letter or '_'.")
    return name


def port(value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError(f"The port {value!r} is not a number.", "SSH normally uses port 22.") from None
    if not 1 <= number <= 65535:
        raise ValidationError(f"The port {number} is out of range.", "Use a port between 1 and 65535 (SSH normally uses 22).")
    return number


def service(name: str) -> str:
    """A compose service name such as web, worker, clock, redis."""
    if not isinstance(name, str) or not _SERVICE_RE.fullmatch(name):
        raise ValidationError(f"The service name {name!r} is not valid.",
                              "Use one of the app's services, e.g. web, worker, clock or redis.")
    return name


def server_name(name: str) -> str:
    """The local nickname of a registered server."""
    if not isinstance(name, str) or not _SERVER_NAME_RE.fullmatch(name):
        raise ValidationError(f"The server name {name!r} is not valid.",
                              "Use letters, digits, '.', '_' or '-', e.g. 'lab-server'.")
    return name


def db_identifier(app: str) -> str:
    """The PostgreSQL database and role name of an app (hyphens become underscores)."""
    return "app_" + app_name(app).replace("-", "_")
