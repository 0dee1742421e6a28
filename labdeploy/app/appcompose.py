"""An app's compose file (~/dallinger/<app>/docker-compose.yml) built as data, and the
commands its processes run.

Services are named as in the seed (web, worker, clock, redis; and pgbouncer, the app's own
connection pooler) so `docker compose restart web` keeps working. No secret is ever in this
document: they reach the containers through `env_file: secrets.env` (mode 0600 on the server).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

import yaml

from ..server import layout
from .. import names
from ..server import logrotation, pooler
from ..commands import entrypoints
from ..errors import ValidationError

SECRETS_FILE = "secrets.env"
REDIS_VOLUME = "redis_data"
DEFAULT_REDIS_IMAGE = "redis:7"
WEB_PORT = layout.WEB_PORT  # kept here too: the compose file is where apps meet it
DATA_MOUNT = "/data"  # ~/dallinger-data/<app> inside the containers

# Dallinger and PsyNet images start their processes with these (Procfile-less default).
DALLINGER_COMMANDS = {
    "web": "dallinger_heroku_web",
    "worker": "dallinger_heroku_worker",
    "clock": "dallinger_heroku_clock",
}

# Dallinger's environment contract; the experiment's own keys are added to it.
BASE_ENVIRONMENT = {"PORT": str(WEB_PORT), "HOST": "0.0.0.0", "HOME": "/tmp"}

# Used with fullmatch: `re.match(...$)` lets a final newline through.
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+)\s*:\s*(.+)$")


def env_key(key: str) -> str:
    if not isinstance(key, str) or not _ENV_KEY_RE.fullmatch(key):
        raise ValidationError(f"The configuration key {key!r} can't be used as an environment variable.",
                              "Use letters, digits and underscores, starting with a letter or underscore.",
                              code="invalid.config.key")
    return key


def read_procfile(experiment_dir) -> dict[str, str]:
    """The processes' commands from the experiment's Procfile (Heroku style, as Dallinger
    experiments once used), or Dallinger's own commands when there is none."""
    path = Path(experiment_dir) / "Procfile"
    if not path.is_file():
        return dict(DALLINGER_COMMANDS)
    commands: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _PROCFILE_LINE.match(line.strip())
        if not m:
            raise ValidationError(f"Line {number} of {path} is not 'process: command'.",
                                  "Write one line per process, e.g. 'web: gunicorn app:app'.",
                                  code="invalid.procfile")
        commands[m.group(1)] = m.group(2).strip()
    missing = [p for p in layout.PROCESS_SERVICES if p not in commands]
    if missing:
        raise ValidationError(f"{path} has no command for {', '.join(missing)}.",
                              "Give a line for each of web, worker and clock (or delete the Procfile to use "
                              "Dallinger's dallinger_heroku_* commands).", code="invalid.procfile")
    return commands


def _command(line: str, *, pooled: bool = False) -> list[str]:
    # Procfile lines are shell lines; `exec` makes the process PID 1's child-free replacement
    # so it receives Docker's stop signal. `$$` stops Compose from interpolating on the server.
    # With the pooler, psycopg2 must wait cooperatively under gevent (labdeploy.pooler).
    return entrypoints.compose_escaped(entrypoints.process(line, pooled=pooled))


def _labels(app: str, service: str, version: str) -> dict[str, str]:
    return {"labdeploy.app": app, "labdeploy.service": service, "labdeploy.version": version}


_LOGGING = logrotation.options()  # the default; the server's choice comes as `logging`


def app_compose_document(app: str, image: str, *, version: str, commands: Optional[Mapping[str, str]] = None,
                         environment: Optional[Mapping[str, str]] = None,
                         redis_image: str = DEFAULT_REDIS_IMAGE,
                         processes: Sequence[str] = layout.PROCESS_SERVICES,
                         pooler_image: Optional[str] = None, connection_limit: Optional[int] = None,
                         logging: Optional[dict] = None) -> dict:
    """The app's compose file as a dict. Pure: same input, same document. `processes` may leave
    out the clock (Dallinger runs one only with `clock_on`); web and worker are always there.
    With `pooler_image`, the app gets its own PgBouncer (labdeploy.server.pooler), sized from
    the role's `connection_limit`, and its processes start after it; DATABASE_URL must then
    name the pooler (database.database_url(..., pooler=True)). `logging`: every service's log
    rotation (labdeploy.server.logrotation.of(stack settings)); the default bounds each at 30 MB."""
    if not set(processes) <= set(layout.PROCESS_SERVICES) or not {"web", "worker"} <= set(processes):
        raise ValidationError(f"The processes {tuple(processes)!r} are not web and worker (and clock).",
                              "Give ('web', 'worker', 'clock') or ('web', 'worker').", code="invalid.processes")
    app = names.app_name(app)
    image = names.image(image)
    redis_image = names.image(redis_image, "Redis image")
    env = _environment(app, version, environment)
    pooled = pooler_image is not None
    services = {name: _process(app, name, image, version, dict(commands or DALLINGER_COMMANDS), env, pooled)
                for name in ("web", "worker", "clock") if name in processes}
    services["web"]["networks"] = {"default": {}, layout.NETWORK: {"aliases": [layout.web_alias(app)]}}
    # The app's choice, so an update without the option keeps it (labdeploy.server.pooler.in_compose).
    services["web"]["labels"][pooler.LABEL] = "on" if pooled else "off"
    # Only needs the port to be open: works for any image that has a Python (Dallinger's do).
    probe = f"import socket; socket.create_connection(('127.0.0.1', {WEB_PORT}), 3)"
    services["web"]["healthcheck"] = {"test": ["CMD-SHELL", f'python3 -c "{probe}" || python -c "{probe}"'],
                                      "interval": "10s", "timeout": "5s", "retries": 3, "start_period": "30s"}
    if pooled:
        from ..server.database import DEFAULT_CONNECTION_LIMIT

        limit = DEFAULT_CONNECTION_LIMIT if connection_limit is None else connection_limit
        services[pooler.SERVICE] = pooler.service(app, pooler_image, limit, logging=_LOGGING)
    services["redis"] = _redis(app, redis_image)
    for service in services.values():  # the server's choice, else the default
        service["logging"] = dict(logging or _LOGGING)
    return {"services": services, "networks": {layout.NETWORK: {"external": True, "name": layout.NETWORK}},
            "volumes": {REDIS_VOLUME: {}}}


def _environment(app: str, version: str, environment: Optional[Mapping[str, str]]) -> dict:
    """Dallinger's environment contract, the experiment's keys, and labdeploy's own; `$` doubled
    so Compose passes it on as it is."""
    env = dict(BASE_ENVIRONMENT)
    for key, value in (environment or {}).items():
        env[env_key(key)] = str(value).replace("$", "$$")
    env["LABDEPLOY_APP"] = app
    env["LABDEPLOY_VERSION"] = str(version).replace("$", "$$")
    return env


def _process(app: str, service: str, image: str, version: str, commands: dict, env: dict, pooled: bool) -> dict:
    """One of web, worker, clock: the image, its command, the app's secrets and data folder."""
    if service not in commands:
        raise ValidationError(f"No command for the {service} process.",
                              "Give web, worker and clock commands (a Procfile), or none for Dallinger's.",
                              code="invalid.procfile")
    depends_on = {"redis": {"condition": "service_healthy"}}
    if pooled:  # started is enough: PgBouncer listens within milliseconds and connects lazily
        depends_on[pooler.SERVICE] = {"condition": "service_started"}
    data_volume = f"../../{layout.DATA_ROOT}/{app}:{DATA_MOUNT}"  # relative to ~/dallinger/<app>
    return {
        "image": image,
        "command": _command(commands[service], pooled=pooled),
        "init": True,  # a tiny init forwards Docker's stop signal, so updates don't wait 10 s
        "restart": "unless-stopped",
        "env_file": [SECRETS_FILE],
        "environment": {**env, "LABDEPLOY_PROCESS": service},
        "volumes": [data_volume] + ([pooler.python_volume()] if pooled else []),
        "depends_on": depends_on,
        "labels": _labels(app, service, version),
        "logging": _LOGGING,
        # PostgreSQL lives on the shared network (web's aliases are set by the caller).
        "networks": ["default", layout.NETWORK],
    }


def _redis(app: str, redis_image: str) -> dict:
    return {
        "image": redis_image,
        "command": ["redis-server", "--appendonly", "yes", "--dir", "/data", "--protected-mode", "no"],
        "restart": "unless-stopped",
        "volumes": [f"{REDIS_VOLUME}:/data"],
        "networks": ["default"],  # private to the app: other apps never see it
        "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": "1s", "timeout": "3s", "retries": 30},
        # No version label: an update must not recreate Redis (the app's queue and state).
        "labels": {"labdeploy.app": app, "labdeploy.service": "redis"},
        "logging": _LOGGING,
    }


class _Dumper(yaml.SafeDumper):
    """Readable for a person who opens the file: no anchors, scripts as literal blocks."""

    def ignore_aliases(self, data) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str):
    if "\n" in data:  # PyYAML falls back to quoting when a block can't hold it exactly
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_str(data)


_Dumper.add_representer(str, _str)


def app_compose_yaml(document: dict) -> str:
    header = ("# Written by labdeploy for this app. Secrets are in secrets.env (mode 0600).\n"
              "# Debug as usual: docker compose logs | docker compose exec web /bin/bash | "
              "docker compose restart web\n"
              "# (Compose v1 after an update: docker-compose exec --index N web, N as docker-compose ps shows.)\n")
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def secrets_env(values: Mapping[str, str]) -> str:
    """The env_file text. Values are refused rather than quoted: Compose v1 and v2 read quotes
    and `$` differently, so only characters both read the same way are allowed."""
    lines = []
    for key, value in values.items():
        env_key(key)
        value = str(value)
        if any(c in value for c in "\n\r\"'$\\") or value != value.strip():
            raise ValidationError(f"The secret {key} contains a character that can't be stored safely "
                                  "(quote, $, backslash, newline or surrounding spaces).",
                                  "Choose a value without those characters.", code="invalid.secret_value")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value
    return values
