"""An app's description translated into a Docker Swarm stack file (`docker stack deploy`), and
the cluster's one ingress (Caddy). Pure: same input, same document.

What changes from the single-server compose file (labdeploy.app.appcompose), by Swarm's rules:
web and worker run `deploy.replicas` copies (Dallinger's num_dynos_web / num_dynos_worker);
every service uses `endpoint_mode: dnsrr` (its name resolves to its tasks' addresses, no
virtual IP: IPVS, which Swarm's virtual IPs and routing mesh need, is missing from some
kernels); PostgreSQL and Redis are the app's own and pinned with their volumes to the node
labelled `labdeploy.data=true`; no build, container_name or restart keys (Swarm restarts);
updates start the new web task first and roll back by themselves when it fails its health
check (update_config / rollback_config). Caddy is the single ingress: one service on the
manager, ports published in host mode, reaching each app's web replicas by name on the
shared overlay network. Secrets reach the services from the 0600 files beside the stack file
(env_file), never from the document.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

from .. import names
from ..commands import entrypoints
from ..errors import ValidationError
from ..server import layout
from . import appcompose, limits

ENGINES = ("compose", "swarm")
ROOT = "dallinger-swarm"  # the manager's folder: ingress/, and one folder per app
INGRESS_STACK = "dallinger"  # a reserved app name: no app's stack can take it
INGRESS_SERVICE = f"{INGRESS_STACK}_caddy"
INGRESS_NETWORK = "dallinger-ingress"
DATA_LABEL = "labdeploy.data"
STACK_FILE = "stack.yml"
POSTGRES_ENV = "postgres.env"  # POSTGRES_PASSWORD, 0600
WEB_KEY = "num_dynos_web"
POSTGRES_USER = POSTGRES_DB = "dallinger"
VERSION = "3.8"


def engine(value) -> str:
    """The deploy engine, checked before anything connects."""
    if value not in ENGINES:
        raise ValidationError(f"engine={value!r} is not one of {', '.join(ENGINES)}.",
                              "Use 'compose' (one server, the default) or 'swarm' (a Docker Swarm's manager).",
                              code="invalid.engine")
    return value


def web_replicas(config: Optional[Mapping[str, str]]) -> int:
    """How many web processes: Dallinger's num_dynos_web (default 1), bounded as the workers are."""
    raw = (config or {}).get(WEB_KEY, "1")
    try:
        count = int(str(raw).strip())
    except ValueError:
        count = 0
    if not 1 <= count <= limits.MAX_WORKERS:
        raise ValidationError(f"{WEB_KEY} = {raw!r} is not a number of web processes from 1 to {limits.MAX_WORKERS}.",
                              f"Set {WEB_KEY} to a whole number such as 1 or 2.", code="invalid.config.num_dynos_web")
    return count


def app_dir(app: str) -> str:
    return f"{ROOT}/{names.app_name(app)}"


def ingress_dir() -> str:
    return f"{ROOT}/ingress"


def database_url(password: str) -> str:
    return f"postgresql://{POSTGRES_USER}:{password}@postgresql:5432/{POSTGRES_DB}"


def _deploy(replicas: int, app: str, service: str, version: str, *, constraints: Sequence[str] = (),
            limit: Optional[dict] = None, rolling: bool = False) -> dict:
    spec: dict = {"mode": "replicated", "replicas": replicas, "endpoint_mode": "dnsrr",
                  "labels": {"labdeploy.app": app, "labdeploy.service": service, "labdeploy.version": version},
                  "restart_policy": {"condition": "any", "delay": "2s"}}
    if constraints:
        spec["placement"] = {"constraints": list(constraints)}
    if limit:
        spec["resources"] = {"limits": dict(limit)}
    if rolling:  # the new task must pass its health check before the old one stops; else back
        spec["update_config"] = {"parallelism": 1, "delay": "2s", "order": "start-first",
                                 "failure_action": "rollback", "monitor": "20s"}
        spec["rollback_config"] = {"parallelism": 1, "order": "start-first"}
    return spec


def _process(app: str, service: str, image: str, version: str, command: str, env: dict, replicas: int,
             limit: Optional[dict]) -> dict:
    doc = {
        "image": image,
        "command": appcompose._command(command),
        "init": True,
        "env_file": [appcompose.SECRETS_FILE],
        "environment": {**env, "LABDEPLOY_PROCESS": service},
        "networks": ["default"],
        "deploy": _deploy(replicas, app, service, version, limit=limit, rolling=True),
    }
    if service == "web":
        probe = f"import socket; socket.create_connection(('127.0.0.1', {layout.WEB_PORT}), 3)"
        doc["healthcheck"] = {"test": ["CMD-SHELL", f'python3 -c "{probe}" || python -c "{probe}"'],
                              "interval": "5s", "timeout": "5s", "retries": 3, "start_period": "60s"}
        doc["networks"] = ["default", "ingress"]
    return doc


def stack_document(app: str, image: str, *, version: str, commands: Mapping[str, str], processes: Sequence[str],
                   environment: Optional[Mapping[str, str]] = None, web: int = 1, workers: int = 1,
                   postgres_image: str = "postgres:15", redis_image: str = appcompose.DEFAULT_REDIS_IMAGE,
                   cpus: Optional[float] = None, memory: Optional[int] = None) -> dict:
    """The app's stack file as a dict: its processes (web and worker replicated), and its own
    PostgreSQL and Redis on the data node. `cpus` / `memory` (bytes): each process replica's limits."""
    app, image = names.app_name(app), names.image(image)
    limit = {**({"cpus": f"{limits.cpus(cpus):g}"} if cpus is not None else {}),
             **({"memory": str(limits.memory(memory))} if memory is not None else {})}
    env = appcompose._environment(app, version, environment)
    env["REDIS_URL"] = "redis://redis:6379/0"
    replicas = {"web": web, "worker": workers, "clock": 1}
    services = {name: _process(app, name, image, version, commands[name], env, replicas[name], limit)
                for name in ("web", "worker", "clock") if name in processes}
    on_data_node = [f"node.labels.{DATA_LABEL} == true"]
    services["postgresql"] = {
        "image": names.image(postgres_image, "PostgreSQL image"),
        "environment": {"POSTGRES_USER": POSTGRES_USER, "POSTGRES_DB": POSTGRES_DB},
        "env_file": [POSTGRES_ENV],
        "volumes": ["pg_data:/var/lib/postgresql/data"],
        "healthcheck": {"test": ["CMD-SHELL", f"pg_isready -U {POSTGRES_USER}"], "interval": "5s", "retries": 30},
        "networks": ["default"],
        "deploy": _deploy(1, app, "postgresql", version, constraints=on_data_node),
    }
    services["redis"] = {
        "image": names.image(redis_image, "Redis image"),
        "command": ["redis-server", "--appendonly", "yes", "--dir", "/data", "--protected-mode", "no"],
        "volumes": [f"{appcompose.REDIS_VOLUME}:/data"],
        "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": "5s", "retries": 30},
        "networks": ["default"],
        "deploy": _deploy(1, app, "redis", version, constraints=on_data_node),
    }
    return {"version": VERSION, "services": services,
            "networks": {"default": {"driver": "overlay"},
                         "ingress": {"external": True, "name": INGRESS_NETWORK}},
            "volumes": {"pg_data": {}, appcompose.REDIS_VOLUME: {}}}


def ingress_document(caddy_image: str, config_dir: str, node_id: str, http_port: int = 80,
                     https_port: int = 443) -> dict:
    """The cluster's Caddy: on the manager node `node_id` (the address participants reach), its
    ports in host mode, its configuration from `config_dir` (absolute, on that node)."""
    if not config_dir.startswith("/"):
        raise ValueError("the ingress configuration folder must be absolute")
    ports = [{"target": 80, "published": int(http_port), "protocol": "tcp", "mode": "host"},
             {"target": 443, "published": int(https_port), "protocol": "tcp", "mode": "host"}]
    return {"version": VERSION, "services": {"caddy": {
        "image": names.image(caddy_image, "Caddy image"),
        "ports": ports,
        "volumes": [{"type": "bind", "source": config_dir, "target": "/etc/caddy", "read_only": True},
                    "caddy_data:/data"],
        "networks": ["ingress"],
        "deploy": {"replicas": 1, "placement": {"constraints": [f"node.id == {_node_id(node_id)}"]},
                   "restart_policy": {"condition": "any", "delay": "2s"}, "labels": {"labdeploy.service": "caddy"}},
    }}, "networks": {"ingress": {"driver": "overlay", "attachable": True, "name": INGRESS_NETWORK}},
        "volumes": {"caddy_data": {}}}


def _node_id(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{1,64}", value or ""):
        raise ValidationError(f"{value!r} is not a Swarm node id.", "Ask the manager again.", code="invalid.swarm.node")
    return value


CADDYFILE = "# Written by labdeploy: the Swarm's ingress; one site per app in caddy.d/.\nimport /etc/caddy/caddy.d/*\n"


def site(app: str, host: str) -> str:
    """One app's site: every web replica by name (dnsrr: one address each), refreshed often, so
    a replica rescheduled on another node is found; a failed replica's requests go to another."""
    app = names.app_name(app)
    scheme = "http://" if host.endswith("localhost") else ""
    return (f"{scheme}{host} {{\n"
            f"\treverse_proxy {{\n"
            f"\t\tdynamic a {app}_web {layout.WEB_PORT} {{\n\t\t\trefresh 2s\n\t\t}}\n"
            f"\t\tlb_policy round_robin\n\t\tlb_try_duration 10s\n\t\tfail_duration 10s\n"
            f"\t}}\n}}\n")
