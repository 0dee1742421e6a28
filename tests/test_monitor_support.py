"""Helpers for the monitoring tests: small labdeploy-style apps and PostgreSQL containers of
our own on the testbed server (names start with t-mon-), removed again after the tests.

The apps follow the deploy layout (~/dallinger/<app>/docker-compose.yml, labels
labdeploy.app / labdeploy.service) with long-lived shell loops instead of a real experiment,
so the monitoring code can be tested before and independently of the deploy module.
"""

from __future__ import annotations

import json
import shlex
import time

from labdeploy.server import compose, layout
from labdeploy import names

APP_PREFIX = "t-mon-"


def compose_yaml(app: str, images: dict, *, crash_web: bool = False) -> str:
    names.app_name(app)

    def svc(service: str, command: list, image: str, **extra) -> dict:
        d = {"image": image, "command": command, "stop_signal": "SIGKILL",
             "labels": {"labdeploy.app": app, "labdeploy.service": service}}
        d.update(extra)
        return d

    # "$$" is compose's escape for a literal "$".
    loop = "echo {s} started; i=0; while true; do i=$$((i+1)); echo {s} tick $$i; sleep 1; done"
    web = (svc("web", ["sh", "-c", "echo web boom: missing DATABASE_URL >&2; exit 3"], images["python"],
               restart="always") if crash_web else
           svc("web", ["sh", "-c", loop.format(s="web")], images["python"],
               healthcheck={"test": ["CMD", "true"], "interval": "1s", "timeout": "2s", "retries": 1}))
    doc = {"version": "2.4", "services": {
        "web": web,
        "worker": svc("worker", ["sh", "-c", loop.format(s="worker")], images["python"]),
        "clock": svc("clock", ["sh", "-c", loop.format(s="clock")], images["python"]),
        "redis": svc("redis", ["redis-server", "--save", "", "--appendonly", "no"], images["redis"]),
    }}
    return json.dumps(doc, indent=1)  # JSON is valid YAML


def make_app(remote, app: str, images: dict, *, crash_web: bool = False) -> None:
    assert app.startswith(APP_PREFIX)
    remote.makedirs(layout.app_dir(app))
    remote.put_bytes(layout.app_compose(app), compose_yaml(app, images, crash_web=crash_web))
    compose.run_compose(remote, layout.app_dir(app), ["up", "-d"], timeout=180)


def remove_app(remote, app: str) -> None:
    assert app.startswith(APP_PREFIX)
    if remote.exists(layout.app_compose(app)):
        compose.run_compose(remote, layout.app_dir(app), ["down", "-t", "1"], timeout=180, check=False)
    remote.run(["rm", "-rf", layout.app_dir(app)], check=False)
    # Anything left with our label (e.g. a compose down that failed half way).
    remote.run(["sh", "-c", "ids=$(docker ps -aq --filter " + shlex.quote(f"label=labdeploy.app={app}") +
                "); [ -z \"$ids\" ] || docker rm -f $ids"], check=False)


def wait_up(remote, app: str, services=("web", "worker", "clock", "redis"), timeout: float = 60) -> None:
    from labdeploy.watch.containers import status

    deadline = time.monotonic() + timeout
    while True:
        df = status(remote, app)
        up = {r.service for r in df.itertuples() if r.state == "running" and r.health in ("", "healthy")}
        if set(services) <= up:
            return
        assert time.monotonic() < deadline, f"{app} not up: {df[['service', 'state', 'health']]}"
        time.sleep(0.5)


def start_postgres(remote, name: str, images: dict, *, max_connections: int = 20) -> None:
    """A PostgreSQL container of our own (superuser `dallinger`, local socket without password),
    so a test may stop it or fill its connections without touching the shared one."""
    assert name.startswith(APP_PREFIX)
    remote.run(["docker", "rm", "-f", name], check=False)
    remote.run(["docker", "run", "-d", "--name", name, "--label", "labdeploy.test=monitor",
                "-e", "POSTGRES_USER=dallinger", "-e", "POSTGRES_PASSWORD_FILE=/etc/hostname",
                images["postgres"], "postgres", "-c", f"max_connections={max_connections}",
                "-c", "superuser_reserved_connections=2"], timeout=120)
    wait_postgres(remote, name)


def wait_postgres(remote, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while remote.run(["docker", "exec", name, "pg_isready", "-U", "dallinger", "-d", "dallinger"],
                     check=False).exit_status != 0:
        assert time.monotonic() < deadline, f"{name} did not become ready"
        time.sleep(0.3)


def sql(remote, container: str, text: str, database: str = "dallinger") -> str:
    return remote.run(["docker", "exec", "-i", container, "psql", "-U", "dallinger", "-X", "-q", "-A", "-t",
                       "-v", "ON_ERROR_STOP=1", "-d", database], stdin=text.encode(), timeout=60).stdout


def make_app_db(remote, container: str, app: str, *, limit: int) -> str:
    """Role + database named like a deployed app's, with a connection limit."""
    ident = names.db_identifier(app)
    sql(remote, container, f'DROP DATABASE IF EXISTS "{ident}"; DROP ROLE IF EXISTS "{ident}";')
    sql(remote, container, f'CREATE ROLE "{ident}" LOGIN CONNECTION LIMIT {int(limit)}; '
                           f'CREATE DATABASE "{ident}" OWNER "{ident}";')
    return ident


def drop_app_db(remote, container: str, app: str) -> None:
    ident = names.db_identifier(app)
    assert ident.startswith("app_t_mon_")
    sql(remote, container, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ident}';"
                           f' DROP DATABASE IF EXISTS "{ident}"; DROP ROLE IF EXISTS "{ident}";')


def hold_connections(remote, container: str, role: str, n: int, seconds: int = 60,
                     application_name: str = "t-mon-holder") -> None:
    """Open n real sessions as `role` that stay open for `seconds` (idle in a pg_sleep)."""
    for _ in range(n):
        remote.run(["docker", "exec", "-d", "-e", f"PGAPPNAME={application_name}", container,
                    "psql", "-U", role, "-d", role, "-X", "-c", f"select pg_sleep({int(seconds)})"])


def count_connections(remote, container: str, role: str) -> int:
    return int(sql(remote, container, f"select count(*) from pg_stat_activity where usename = '{role}'").strip())


def wait_connections(remote, container: str, role: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while count_connections(remote, container, role) < n:
        assert time.monotonic() < deadline, f"{role} did not reach {n} connections"
        time.sleep(0.2)
