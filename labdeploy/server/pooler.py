"""Each app's own connection pooler (PgBouncer) in front of the shared PostgreSQL, built as data.

Why: an app's role has a connection limit (database.DEFAULT_CONNECTION_LIMIT), but Dallinger
makes its SQLAlchemy engine with pool_size=1000 in every gunicorn worker, and greenlets that
wait on Redis keep a connection checked out, so a busy PsyNet app asks for more connections
than its role may open and participants get HTTP 500 ("too many connections for role").
Dallinger's pool can't be sized from outside, so the app talks to its own PgBouncer instead:
the app may open thousands of client connections, PgBouncer holds at most `pool_size(limit)`
connections to PostgreSQL, and a request that finds them all busy waits its turn.

* Transaction pooling: a server connection is lent for one transaction. Dallinger and PsyNet
  (SQLAlchemy + psycopg2) keep no session state between transactions and use no
  protocol-level prepared statements, so that is safe; session pooling would pin a server
  connection to every idle connection in the app's SQLAlchemy pool, which is the problem.
  psycopg 3 prepares statements by itself, which PgBouncer before 1.21 can't pool per
  transaction: apps with their own Procfile get the pooler only when asked for.
* Each app reaches its own pooler by a unique name, `<app>-pgbouncer`: every app's services
  share the `dallinger` network, where Compose registers each service name ("pgbouncer") as
  an alias for all of them.
* Waiting must not stop a whole process. psycopg2 is a C extension that gevent can't patch:
  a greenlet whose transaction waits in PgBouncer's queue blocks its entire gunicorn worker,
  including the greenlets that hold the server connections it waits for, until gunicorn kills
  the worker (HTTP 502). So the app's processes get a `sitecustomize` (mounted read-only,
  found through PYTHONPATH) that, once gevent has monkey-patched a process, installs
  psycopg2's documented wait callback (as psycogreen does): waits then yield to other
  greenlets. COPY and large objects, which psycopg2 refuses in that mode (PsyNet's launch
  ingests its database template with COPY), run in the ordinary blocking mode. Processes
  without gevent are left as they are.
* The password never enters the compose file or a command line: it reaches the container
  from a 0600 env_file (read by the Docker daemon), and the start script writes
  pgbouncer.ini and the user list with umask 077 to a tmpfs, then execs pgbouncer. Any image
  with `pgbouncer` and `sh` on PATH works, whatever its (non-root) user.

Everything here is pure: same input, same output.
"""

from __future__ import annotations

import re
from typing import Optional

import yaml

from . import database, layout
from .. import names
from ..commands import containers, entrypoints
from ..errors import LabdeployError, Remedy, ValidationError

SERVICE = layout.POOLER_SERVICE
PORT = layout.POOLER_PORT
# The default image for real servers: CloudNativePG's PgBouncer (a CNCF project): rebuilt
# weekly on Debian stable-slim for security updates, runs as a non-root user, has `sh`, and
# is on ghcr.io (no Docker Hub pull limits). PgBouncer 1.21+ also pools psycopg 3's prepared
# statements. A server without access to it sets its own (stack setting pgbouncer_image).
DEFAULT_IMAGE = "ghcr.io/cloudnative-pg/pgbouncer:1.25.2"
ENV_FILE = entrypoints.POOLER_ENV_FILE  # in ~/dallinger/<app>, mode 0600: only the pooler's password
PASSWORD_VAR = entrypoints.POOLER_PASSWORD_VAR
CONFIG_DIR = entrypoints.POOLER_CONFIG_DIR  # a tmpfs inside the container
MAX_CLIENT_CONN = 4000  # the app's side: Dallinger's pools may open many; they cost PgBouncer little
NOFILE = 8192  # open files: clients + server connections + a margin
# What PostgreSQL's pg_stat_activity shows for the pooler's connections (a client that sets
# its own application_name shows that instead while it runs a transaction).
APPLICATION_NAME = "pgbouncer"
LABEL = "labdeploy.server.pooler"  # on the web service: "on" / "off", the app's choice for the next update
PYTHON_DIR = "psycopg-gevent"  # in ~/dallinger/<app>: sitecustomize.py, mounted into the processes
PYTHON_MOUNT = entrypoints.PYTHON_MOUNT

SITECUSTOMIZE = '''\
"""Written by labdeploy (see labdeploy.pooler): in a process that gevent monkey-patches,
psycopg2 waits for the database cooperatively, so a query waiting for a free connection of
the app's PgBouncer lets the process's other requests go on. Other processes: no change."""

import importlib.machinery as _machinery
import importlib.util as _util
import os as _os
import sys as _sys


def _run_shadowed():
    """This file hides any other sitecustomize (Debian's Python has one): run that too."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    rest = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != here]
    spec = _machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and spec.origin != __file__:
        spec.loader.exec_module(_util.module_from_spec(spec))


def _make_psycopg2_green():
    import psycopg2
    from gevent.socket import wait_read, wait_write
    from psycopg2 import extensions

    def wait(conn, timeout=None):
        while True:
            state = conn.poll()
            if state == extensions.POLL_OK:
                return
            if state == extensions.POLL_READ:
                wait_read(conn.fileno(), timeout=timeout)
            elif state == extensions.POLL_WRITE:
                wait_write(conn.fileno(), timeout=timeout)
            else:
                raise psycopg2.OperationalError("Bad result from poll: %r" % (state,))

    def blocking(method):
        # psycopg2 refuses COPY and large objects while a wait callback is set.
        def call(self, *args, **kwargs):
            callback = extensions.get_wait_callback()
            extensions.set_wait_callback(None)
            try:
                return method(self, *args, **kwargs)
            finally:
                extensions.set_wait_callback(callback)
        return call

    class Cursor(extensions.cursor):
        copy_from = blocking(extensions.cursor.copy_from)
        copy_to = blocking(extensions.cursor.copy_to)
        copy_expert = blocking(extensions.cursor.copy_expert)

    class Connection(extensions.connection):
        lobject = blocking(extensions.connection.lobject)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cursor_factory = Cursor

    plain_connect = psycopg2.connect

    def connect(*args, **kwargs):
        if kwargs.get("connection_factory") is None and kwargs.get("cursor_factory") is None:
            kwargs["connection_factory"] = Connection
        return plain_connect(*args, **kwargs)

    psycopg2.connect = connect
    extensions.set_wait_callback(wait)


def _after_gevent_patch(event):
    from gevent import events

    if isinstance(event, events.GeventDidPatchAllEvent):
        try:
            _make_psycopg2_green()
        except ImportError:  # no psycopg2 in this app
            pass


try:
    _run_shadowed()
finally:
    try:
        from gevent import events as _events
    except ImportError:
        pass
    else:
        _events.subscribers.append(_after_gevent_patch)
'''

# The database password is URL-safe (database.random_password); the start script refuses
# anything else rather than quote it into the user list.
_PASSWORD_RE = re.compile(r"[A-Za-z0-9_-]{8,200}")


alias = layout.pooler_alias


def reserve(limit: int) -> int:
    """Connections of the role left outside the pool: a psql of the researcher's, the old
    processes' connections while an update switches an app over to its pooler, a tool run
    with the app's credentials."""
    limit = int(limit)
    return min(max(2, limit // 5), 10)


def pool_size(limit: int) -> int:
    """Server connections the pooler may hold: the role's limit less the reserve."""
    limit = database.connection_limit(limit)
    return max(1, limit - reserve(limit))


def ini(app: str, limit: int) -> str:
    """pgbouncer.ini for the app (no secret in it)."""
    db = names.db_identifier(app)
    size = pool_size(limit)
    settings = [
        ("listen_addr", "0.0.0.0"),
        ("listen_port", PORT),
        ("unix_socket_dir", ""),  # TCP only: no socket directory the image's user must own
        ("auth_type", "scram-sha-256"),
        ("auth_file", f"{CONFIG_DIR}/userlist.txt"),
        ("pool_mode", "transaction"),
        ("default_pool_size", size),
        ("min_pool_size", 0),
        ("reserve_pool_size", 0),
        # Hard caps: whatever the clients do, the role's limit holds.
        ("max_db_connections", size),
        ("max_user_connections", size),
        ("max_client_conn", MAX_CLIENT_CONN),
        # A request that finds every server connection busy waits this long, then fails.
        ("query_wait_timeout", 120),
        ("server_connect_timeout", 15),
        ("server_login_retry", 2),
        ("server_idle_timeout", 60),  # give idle connections back to PostgreSQL
        ("server_lifetime", 3600),
        ("client_login_timeout", 60),
        # 0: an idle client (SQLAlchemy's pooled connection) is never cut off; it holds no
        # server connection anyway.
        ("client_idle_timeout", 0),
        ("ignore_startup_parameters", "extra_float_digits"),
        ("log_connections", 0),  # the app's pools reconnect often; keep the log readable
        ("log_disconnections", 0),
        ("log_pooler_errors", 1),
        ("stats_period", 300),
    ]
    lines = [f"; Written by labdeploy at container start; see ~/dallinger/{names.app_name(app)}/docker-compose.yml.",
             "[databases]",
             f"{db} = host={database.POSTGRES_HOST} port=5432 dbname={db} application_name={APPLICATION_NAME}",
             "",
             "[pgbouncer]"]
    lines += [f"{key} = {value}".rstrip() for key, value in settings]
    return "\n".join(lines) + "\n"


def start_script(app: str, limit: int) -> str:
    """The container's command (sh): write the configuration and the user list into the
    tmpfs, drop the password from the environment, exec pgbouncer (commands.entrypoints)."""
    return entrypoints.pooler_script(names.db_identifier(app), ini(app, limit))


def process_command(line: str) -> str:
    """A process's shell line with the sitecustomize on its PYTHONPATH (the image's own
    PYTHONPATH kept after it). Not yet escaped for Compose."""
    return entrypoints.process_line(line, pooled=True)


def python_volume() -> str:
    """The mount of ~/dallinger/<app>/psycopg-gevent (relative to the compose file)."""
    return f"./{PYTHON_DIR}:{PYTHON_MOUNT}:ro"


def env_file(password: str) -> str:
    """The pooler's env_file text (mode 0600 on the server): its password only."""
    if not isinstance(password, str) or not _PASSWORD_RE.fullmatch(password):
        raise ValidationError("The app's database password can't be handed to its pooler (not URL-safe).",
                              code="invalid.pooler.password", remedy=Remedy("pooler.off"))
    return f"{PASSWORD_VAR}={password}\n"


def service(app: str, image: str, limit: int, *, logging: Optional[dict] = None) -> dict:
    """The compose service. No version label and nothing that changes with a code update, so
    an update leaves the pooler (and the connections it holds) running."""

    app = names.app_name(app)
    return {
        "image": names.image(image, "PgBouncer image"),
        # entrypoint, not command: an image's own entrypoint (some build a configuration from
        # DATABASE_URL-like variables) must not run first.
        # `$$`: Compose must not interpolate the script's variables on the server.
        "entrypoint": entrypoints.compose_escaped(entrypoints.pooler_start(names.db_identifier(app),
                                                                          ini(app, limit))),
        "restart": "unless-stopped",
        "env_file": [ENV_FILE],
        "tmpfs": [f"{CONFIG_DIR}:mode=1777,size=1m"],
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "ulimits": {"nofile": {"soft": NOFILE, "hard": NOFILE}},
        # PgBouncer's SIGINT waits for running transactions; SIGTERM (before 1.23) drops them.
        "stop_signal": "SIGINT",
        "networks": {"default": {"aliases": [alias(app)]}, layout.NETWORK: {"aliases": [alias(app)]}},
        "labels": {"labdeploy.app": app, "labdeploy.service": SERVICE},
        **({"logging": logging} if logging else {}),
    }


class PoolerImageUnavailable(LabdeployError):
    """The server could not pull or start the pooler's image."""

    code = "pooler.image.unavailable"


_PULL_FAILURES = ("pull access denied", "manifest unknown", "not found", "no such image", "unauthorized",
                  "denied", "no such host", "i/o timeout", "connection refused", "toomanyrequests",
                  "failed to resolve", "error pulling", "tls handshake")


def image_failure(exc: Exception, image: dict) -> Optional[PoolerImageUnavailable]:
    """When `compose up` failed on the pooler's image ({"value", "from"} as deploy remembers
    it), an error that names the setting to change; else None."""
    name = image.get("value", "")
    output = f"{getattr(exc, 'stderr', '')}\n{getattr(exc, 'stdout', '')}\n{getattr(exc, 'message', exc)}"
    low = output.lower()
    if not name or name.lower() not in low or not any(word in low for word in _PULL_FAILURES):
        return None
    source = {"given": "given for this deploy", "app": "this app's earlier choice", "server": "the server's setting",
              "default": "labdeploy's default"}.get(image.get("from", ""), "")
    lines = [line for line in output.splitlines() if name.lower() in line.lower()]
    return PoolerImageUnavailable(
        f"The server could not get the connection pooler's image {name} ({source}): "
        f"{(lines[-1] if lines else output.strip().splitlines()[-1]).strip()[:500]}",
        remedy=Remedy("pooler.image"))


def started_argv(app: str) -> list[str]:
    """When each running container of the app started (one round trip)."""
    return containers.started(app)


def stale_processes(output: str, processes) -> list[str]:
    """The processes (from `started_argv`'s output) that started before the pooler: they hold
    connections to a pooler that has since been replaced, which fail at their next use."""
    started = containers.read_started(output)
    if SERVICE not in started:
        return []
    return [p for p in processes if p in started and started[p] < started[SERVICE]]


def in_compose(compose_text: Optional[str]) -> dict:
    """What an app's current compose file says about its pooler: {"enabled": True/False/None,
    "image": str or None}. None: not recorded (no compose file, or one written before the
    pooler existed)."""
    try:
        doc = yaml.safe_load(compose_text or "") or {}
        services = doc.get("services") or {}
    except (yaml.YAMLError, AttributeError):
        return {"enabled": None, "image": None}
    if not isinstance(services, dict):
        return {"enabled": None, "image": None}
    pooler = services.get(SERVICE)
    if isinstance(pooler, dict):
        return {"enabled": True, "image": pooler.get("image") if isinstance(pooler.get("image"), str) else None}
    web = services.get("web")
    labels = web.get("labels") if isinstance(web, dict) else None
    if isinstance(labels, dict) and labels.get(LABEL) == "off":
        return {"enabled": False, "image": None}
    return {"enabled": None, "image": None}


def choose(given: Optional[bool], previous: Optional[bool], dallinger_app: bool) -> tuple[bool, str]:
    """On or off, and why: given now > the app's last choice > on for Dallinger/PsyNet apps
    (their pools need it), off for apps with their own Procfile (their driver may not suit
    transaction pooling; pooler=True turns it on)."""
    if given is not None:
        return bool(given), "given"
    if previous is not None:
        return bool(previous), "app"
    return bool(dallinger_app), "default"
