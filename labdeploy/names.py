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
    "alerts",                          # ~/dallinger/alerts, ~/dallinger-data/alerts (the alert watcher)
    "labdeploy", "docker", "web", "worker", "clock",
})
RESERVED_PREFIX = "dallinger-"


def app_name(name: str) -> str:
    """An app name: lowercase letters, digits and hyphens, starting with a letter."""
    if not isinstance(name, str) or not name:
        raise ValidationError("The app name is empty.",
                              "Choose a name such as 'my-experiment' (lowercase letters, digits, hyphens).",
                              code="invalid.app_name")
    if len(name) > APP_MAX:
        raise ValidationError(f"The app name {name!r} is {len(name)} characters long; at most {APP_MAX} are allowed.",
                              "Choose a shorter name.", code="invalid.app_name")
    if not _APP_RE.fullmatch(name) or "--" in name:
        raise ValidationError(
            f"The app name {name!r} can't be used.",
            "Use only lowercase letters, digits and single hyphens, start with a letter and end with a "
            "letter or digit, e.g. 'stroop-pilot-2'.", code="invalid.app_name")
    if name in RESERVED_APP_NAMES or name.startswith(RESERVED_PREFIX):
        raise ValidationError(
            f"The app name {name!r} is reserved: the server's shared services and folders use it.",
            f"Choose another name, e.g. '{name}-study' or 'my-experiment'. Reserved: "
            f"{', '.join(sorted(RESERVED_APP_NAMES))} and every name starting with '{RESERVED_PREFIX}'.",
            code="invalid.app_name.reserved")
    return name


HOST_MAX = 253  # RFC 1035: a whole DNS name
_HOST_HINT = ("Use a host name such as 'lab.example.org' (letters, digits, dots, hyphens) or an IP address "
              "such as 203.0.113.7 or 2001:db8::7; no spaces, quotes or shell characters.")



def is_app_name(name) -> bool:
    """True for a name app_name() accepts (a folder or label read from a server may be anything)."""
    try:
        app_name(name)
        return True
    except ValidationError:
        return False

def _dns_name_problem(name: str) -> str:
    """Why `name` is not an RFC 1123 host name ('' when it is one). A final dot is allowed."""
    if len(name) > HOST_MAX:
        return f"it is {len(name)} characters long; at most {HOST_MAX} are allowed"
    labels = (name[:-1] if name.endswith(".") else name).split(".")
    if not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        return "it is not a valid host name"
    if labels[-1].isdigit():
        # '10.0.0.300' or '1234' would be read as (broken) IPv4 addresses by ssh and browsers.
        return "it looks like an IP address but is not a valid one"
    return ""


def _ip(name: str):
    """The address if `name` is an IPv4 or IPv6 address, else None. An IPv6 scope must be a
    number: ipaddress accepts any text after '%' (spaces, quotes, braces, shell syntax)."""
    if ":" not in name:
        try:
            return ipaddress.IPv4Address(name)
        except ValueError:
            return None
    address, percent, scope = name.partition("%")
    if percent and not (scope.isascii() and scope.isdigit() and len(scope) <= 10):
        return None
    try:
        return ipaddress.IPv6Address(address) if re.fullmatch(r"[0-9A-Fa-f:.]+", address) else None
    except ValueError:
        return None


def host(name: str) -> str:
    """An SSH target: an RFC 1123 host name, an IPv4 address, or an IPv6 address without a
    scope or with a numeric one (fe80::1%2)."""
    if not isinstance(name, str) or not name:
        raise ValidationError("The server address is empty.", "Enter a host name such as 'lab.example.org' or an IP address.",
                              code="invalid.host")
    if _ip(name) is not None:
        return name
    problem = "it has a '%' part that is not a numeric IPv6 scope" if ":" in name and "%" in name \
        else _dns_name_problem(name)
    if problem:
        raise ValidationError(f"The server address {name!r} is not a valid host name or IP address: {problem}.",
                              _HOST_HINT, code="invalid.host")
    return name


def domain(name: str) -> str:
    """The domain apps are served under: `<app>.<domain>` must be a valid host name for every
    app name, so it is a DNS name (no IP address, no final dot) short enough for the longest
    app name."""
    hint = ("Give a DNS name whose subdomains point at the server, such as 'experiments.example.org' (letters, "
            "digits, dots, hyphens; no spaces, quotes or braces), or 'localhost' to reach apps through an SSH "
            "tunnel.")
    if not isinstance(name, str) or not name:
        raise ValidationError("The domain is empty.", hint, code="invalid.domain")
    address = _ip(name)
    if address is not None or (":" in name and "%" in name):
        # `<app>.10.0.0.2` is no host name: nothing would ever resolve it.
        example = f"'{name}.nip.io'" if address is not None and address.version == 4 else "one"
        raise ValidationError(
            f"The domain {name!r} is an IP address; apps are served at <app>.<domain>, which must be a name.",
            "Give a DNS name that points at the server; for a server known only by its IP address, a wildcard "
            f"DNS service gives you {example}; or use 'localhost' and open apps through an SSH tunnel.",
            code="invalid.domain")
    if name.endswith("."):
        raise ValidationError(f"The domain {name!r} ends with a dot.", f"Leave the dot out: {name.rstrip('.')!r}.",
                              code="invalid.domain")
    longest = HOST_MAX - APP_MAX - 1
    if len(name) > longest:
        raise ValidationError(
            f"The domain {name!r} is {len(name)} characters long; at most {longest} are allowed, so that "
            f"<app>.<domain> stays within {HOST_MAX} characters for app names of up to {APP_MAX}.",
            "Use a shorter domain.", code="invalid.domain")
    problem = _dns_name_problem(name)
    if problem:
        raise ValidationError(f"The domain {name!r} can't be used: {problem}.", hint, code="invalid.domain")
    return name


ACME_URL_MAX = 300
_ACME_URL_RE = re.compile(r"https://([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?((?:/[A-Za-z0-9._-]+)*/?)")


def acme_directory(url: str) -> str:
    """An ACME server's directory URL: https://host[:port]/path. Deliberately narrow (a DNS name
    or IPv4 address, a path of plain segments, no query, user or fragment): it is written into
    the Caddyfile as one token."""
    hint = ("Give the directory URL of your ACME server, such as 'https://ca.lab.example.org/acme/acme/directory' "
            "(step-ca) or Let's Encrypt's staging directory, or leave it empty for Let's Encrypt.")
    if not isinstance(url, str) or not url:
        raise ValidationError("The ACME directory URL is empty.", hint, code="invalid.acme_ca")
    if len(url) > ACME_URL_MAX:
        raise ValidationError(f"The ACME directory URL is {len(url)} characters long; at most {ACME_URL_MAX} "
                              "are allowed.", hint, code="invalid.acme_ca")
    if url.lower().startswith("http://"):
        raise ValidationError(f"The ACME directory URL {url!r} is plain HTTP; ACME servers are reached over HTTPS "
                              "(the account key and certificates travel there).",
                              f"Use https://{url[7:]!s}" if _ACME_URL_RE.fullmatch("https://" + url[7:]) else hint,
                              code="invalid.acme_ca")
    m = _ACME_URL_RE.fullmatch(url)
    problem = "" if m else "it is not https://<host>[:<port>]/<path> with plain path segments"
    if m and _ip(m.group(1)) is None:
        problem = _dns_name_problem(m.group(1)) and f"its host {m.group(1)!r} is not a valid name or IPv4 address"
    if m and not problem and m.group(2) is not None and not 1 <= int(m.group(2)) <= 65535:
        problem = f"its port {m.group(2)} is not between 1 and 65535"
    if problem:
        raise ValidationError(f"The ACME directory URL {url!r} can't be used: {problem}.", hint, code="invalid.acme_ca")
    return url


# Deliberately narrower than RFC 5322: the address goes into the Caddyfile and an ACME
# `mailto:` URI, where quotes, spaces, '%' or braces would mean something else.
_EMAIL_LOCAL_RE = re.compile(r"[A-Za-z0-9_+-]+(\.[A-Za-z0-9_+-]+)*")
EMAIL_MAX = 254


def email(address: str) -> str:
    """A contact e-mail address (for Let's Encrypt): local@domain with a real top-level domain."""
    hint = "Give an address such as 'you@lab.example.org' (Let's Encrypt writes there about certificates), or none."
    if not isinstance(address, str) or not address:
        raise ValidationError("The contact email is empty.", hint, code="invalid.email")
    local, at, dom = address.rpartition("@")
    ok = (at and len(address) <= EMAIL_MAX and len(local) <= 64 and _EMAIL_LOCAL_RE.fullmatch(local)
          and "." in dom and not dom.endswith(".") and not _dns_name_problem(dom)
          and re.fullmatch(r"[A-Za-z]{2,63}", dom.rsplit(".", 1)[-1]))
    if not ok:
        raise ValidationError(f"The contact email {address!r} does not look like an email address.", hint,
                              code="invalid.email")
    return address


def user(name: str) -> str:
    """A POSIX login name."""
    if not isinstance(name, str) or not _USER_RE.fullmatch(name):
        raise ValidationError(
            f"The user name {name!r} is not a valid login name.",
            "Use the account name you log in to the server with: lowercase letters, digits, '_', '-' or '.', "
            "starting with a letter or '_'.", code="invalid.user")
    return name


def port(value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError(f"The port {value!r} is not a number.", "SSH normally uses port 22.",
                              code="invalid.port") from None
    if not 1 <= number <= 65535:
        raise ValidationError(f"The port {number} is out of range.", "Use a port between 1 and 65535 (SSH normally uses 22).",
                              code="invalid.port")
    return number


def service(name: str) -> str:
    """A compose service name such as web, worker, clock, redis."""
    if not isinstance(name, str) or not _SERVICE_RE.fullmatch(name):
        raise ValidationError(f"The service name {name!r} is not valid.",
                              "Use one of the app's services, e.g. web, worker, clock or redis.",
                              code="invalid.service")
    return name


JUMP_MAX_HOPS = 4
JUMP_NONE = "none"  # as OpenSSH's `ProxyJump none`: no jump host, even if ~/.ssh/config names one
_JUMP_HINT = ("Give the jump host as user@host or user@host:port, e.g. 'alice@bastion.example.org' or "
              "'alice@bastion.example.org:2222' (an IPv6 address in brackets: 'alice@[2001:db8::7]:22'); "
              f"several, first hop first, separated by commas (at most {JUMP_MAX_HOPS}); 'none' for no jump "
              "host. No spaces, quotes or options.")


def jump_hops(text: str) -> list:
    """The hops of a ProxyJump value, first hop first, as (user or None, host, port or None).

    Each hop is `[user@]host[:port]` (OpenSSH's `-J` syntax; `ssh://[user@]host[:port]` too), an
    IPv6 address in brackets when a port follows. Validated like a server's host, user and
    port: nothing here ever becomes an ssh option or a command. `none` means no hop ([])."""
    if not isinstance(text, str) or not text:
        raise ValidationError("The jump host is empty.", _JUMP_HINT, code="invalid.jump")
    if text == JUMP_NONE:
        return []
    if len(text) > 1000 or not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise ValidationError(f"The jump host {text!r} can't be used: it has spaces, line breaks or characters "
                              "outside plain ASCII.", _JUMP_HINT, code="invalid.jump")
    parts = text.split(",")
    if len(parts) > JUMP_MAX_HOPS:
        raise ValidationError(f"The jump host list {text!r} has {len(parts)} hops; at most {JUMP_MAX_HOPS} are "
                              "allowed.", _JUMP_HINT, code="invalid.jump")
    return [_jump_hop(part, text) for part in parts]


def _jump_hop(part: str, whole: str) -> tuple:
    def refuse(why: str):
        return ValidationError(f"The jump host {whole!r} can't be used: {why}.", _JUMP_HINT, code="invalid.jump")

    spec = part[len("ssh://"):] if part.startswith("ssh://") else part
    if not spec:
        raise refuse("a hop is empty")
    user_text, at, rest = spec.rpartition("@")
    user_ = None
    if at:
        try:
            user_ = user(user_text)
        except ValidationError:
            raise refuse(f"{user_text!r} is not a valid login name") from None
    port_text = None
    if rest.startswith("["):
        host_text, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise refuse(f"{rest!r} is not [address] or [address]:port")
        port_text = after[1:] if after else None
    elif rest.count(":") == 1:
        host_text, _, port_text = rest.partition(":")
    else:  # a host name, or a bare IPv6 address (no port)
        host_text = rest
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            raise refuse(f"the port {port_text!r} is not a number")
    try:
        host_ = host(host_text)
    except ValidationError:
        raise refuse(f"{host_text!r} is not a valid host name or IP address") from None
    try:
        port_ = port(port_text) if port_text is not None else None
    except ValidationError:
        raise refuse(f"the port {port_text} is out of range (1-65535)") from None
    return user_, host_, port_


def jump_hop_text(user_: "str | None", host_: str, port_: "int | None") -> str:
    """One hop written back as `[user@]host[:port]` (an IPv6 address in brackets with a port)."""
    where = f"[{host_}]" if ":" in host_ and port_ is not None else host_
    return (f"{user_}@" if user_ else "") + where + (f":{port_}" if port_ is not None else "")


def jump(text: str) -> str:
    """A ProxyJump value, checked and written the one way it is stored: `user@host[:port]`
    hops separated by commas, or 'none'."""
    hops = jump_hops(text)
    return ",".join(jump_hop_text(*hop) for hop in hops) if hops else JUMP_NONE


def server_name(name: str) -> str:
    """The local nickname of a registered server."""
    if not isinstance(name, str) or not _SERVER_NAME_RE.fullmatch(name):
        raise ValidationError(f"The server name {name!r} is not valid.",
                              "Use letters, digits, '.', '_' or '-', e.g. 'lab-server'.", code="invalid.server_name")
    return name


def db_identifier(app: str) -> str:
    """The PostgreSQL database and role name of an app (hyphens become underscores)."""
    return "app_" + app_name(app).replace("-", "_")


# --------------------------------------------------------------------------- image names
# Docker's reference grammar (distribution/reference), enough to refuse what Docker refuses;
# used with fullmatch (`re.match(...$)` would let a trailing newline through).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_RE = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                        r"(?::[0-9]+)?")
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def _valid_repository(name: str) -> bool:
    # As in Docker: the first part is a registry only if it has '.' or ':' or is 'localhost'.
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return bool(_DOMAIN_RE.fullmatch(first) and _PATH_RE.fullmatch(rest))
    return bool(_PATH_RE.fullmatch(name))


def image_repository(name: str) -> str:
    """A Docker repository name such as 'registry.example.org/lab/images' (no tag)."""
    if not isinstance(name, str) or not name or len(name) > 255 or not _valid_repository(name):
        raise ValidationError(
            f"{name!r} is not a valid Docker image name.",
            "Use lowercase letters, digits, '.', '_', '-' and '/' (a registry host may come first, e.g. "
            "'registry.gitlab.com/my-group/experiment-images'); no spaces, capitals or tags.",
            code="invalid.image_name")
    return name


def image_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
        raise ValidationError(f"{tag!r} is not a valid Docker image tag.",
                              "Use letters, digits, '_', '.' or '-' (at most 128), starting with a letter or digit.",
                              code="invalid.image_tag")
    return tag


def image(ref: str, what: str = "image") -> str:
    """An image reference as Compose and `docker run` take it: repository[:tag][@sha256:digest],
    e.g. 'redis:7', 'ghcr.io/cloudnative-pg/pgbouncer:1.25.2'."""
    ok = isinstance(ref, str) and 0 < len(ref) <= 512
    if ok:
        rest, _, digest = ref.partition("@")
        last = rest.rpartition("/")[2]
        repository, tag = (rest.rpartition(":")[0], rest.rpartition(":")[2]) if ":" in last else (rest, "")
        ok = (_valid_repository(repository) and (not tag or bool(_TAG_RE.fullmatch(tag)))
              and (not digest or bool(_DIGEST_RE.fullmatch(digest))) and ("@" not in ref or bool(digest)))
    if not ok:
        raise ValidationError(f"The {what} {ref!r} is not a valid image name.",
                              "Use an image reference such as 'postgres:15' or 'registry.example.org/lab/caddy:2'.",
                              code="invalid.image_name")
    return ref
