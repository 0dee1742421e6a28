"""Can this server host experiments? One table of checks (check, ok, detail, hint).

Facts are gathered by one shell script in one round trip (labdeploy.commands.hostfacts); the
judging is pure Python (`judge(facts, ...)`) so it is unit-testable.
"""

from __future__ import annotations

import re
from typing import Optional

import pandas as pd

from . import layout
from ..commands import hostfacts
from ..errors import LabdeployError
from ..progress import Reporter, WarningEvent, null_reporter, step
from ..remedies import Remedy, api_hint

GB = 1024 ** 3
RAM_PER_EXPERIMENT_GB = 5  # the seed's rule of thumb
MIN_DISK_GB = 10  # room for a few experiment images and their data
COLUMNS = ["id", "check", "ok", "detail", "hint", "remedy"]


def _listening_ports(lines: list[str]) -> set[int]:
    ports = set()
    for addr in lines:
        with_port = addr.rsplit(":", 1)
        if len(with_port) == 2:
            try:
                ports.add(int(with_port[1], 16))
            except ValueError:
                pass
    return ports


def _row(id_: str, check: str, ok: bool, detail: str, hint: str = "", remedy: Optional[Remedy] = None) -> dict:
    """`id_` is the check's stable name (for code); `check` its label (for people). A failed
    check's `remedy`, when it has one, is worded by each front end; `hint` holds the API's words."""
    return {"id": id_, "check": check, "ok": bool(ok), "detail": detail,
            "hint": "" if ok else api_hint(remedy, hint), "remedy": None if ok else remedy}


def judge(facts: dict[str, list[str]], *, user: str = "USER", ports: tuple[int, int] = (80, 443)) -> list[dict]:
    """Turn the gathered facts into check rows (pure)."""
    rows, usable = _docker_rows(facts, user)
    rows += [_memory_row(facts), _disk_row(facts)]
    rows += _port_rows(facts, ports, usable)
    rows += _stack_rows(facts, usable)
    return rows


def _docker_rows(facts: dict[str, list[str]], user: str) -> tuple[list[dict], bool]:
    docker_path = facts.get("docker_path", [])
    has_docker = bool(docker_path)
    rows = [_row("docker_installed", "Docker installed", has_docker,
                 docker_path[0] if has_docker else "no `docker` command",
                 "Install Docker Engine on the server (https://docs.docker.com/engine/install/).")]
    info = facts.get("docker_info", [])
    usable = has_docker and next((line for line in info if line.startswith("rc=")), "rc=1") == "rc=0"
    text = " ".join(line for line in info if not line.startswith("rc=")).strip()
    if not has_docker:
        detail, hint = "not checked: Docker is missing", "Install Docker first."
    elif usable:
        detail, hint = f"Docker {text} answers for {user}", ""
    elif "permission denied" in text.lower():
        detail = f"{user} may not use Docker without sudo (permission denied on the Docker socket)"
        hint = f"On the server run `sudo usermod -aG docker {user}`, then log out and in again."
    else:
        detail = f"Docker does not answer: {text[-300:] or 'no output'}"
        hint = "Start the Docker service (`sudo systemctl start docker`)."
    rows.append(_row("docker_usable", "Docker usable without sudo", usable, detail, hint))
    comp = (facts.get("compose") or ["none"])[0]
    has_compose = comp != "none" and has_docker
    rows.append(_row("compose", "Docker Compose", has_compose,
                     {"v2": "docker compose (v2) ", "v1": "docker-compose (v1) "}.get(comp[:2], "") + comp[3:]
                     if has_compose else "neither `docker compose` nor `docker-compose` found",
                     "Install the docker-compose-plugin package (or Debian's docker-compose)."))
    return rows, usable


def _memory_row(facts: dict[str, list[str]]) -> dict:
    mem = {}
    for line in facts.get("meminfo", []):
        m = re.match(r"(\w+):\s+(\d+)", line)
        if m:
            mem[m.group(1)] = int(m.group(2)) * 1024
    total, avail = mem.get("MemTotal", 0), mem.get("MemAvailable", 0)
    fit = int(avail // (RAM_PER_EXPERIMENT_GB * GB))
    return _row("memory", "Memory", fit >= 1,
                f"{avail / GB:.1f} GB free of {total / GB:.1f} GB: room for about {fit} more simultaneous "
                f"experiment{'s' if fit != 1 else ''} (~{RAM_PER_EXPERIMENT_GB} GB each)",
                f"Each running experiment needs about {RAM_PER_EXPERIMENT_GB} GB of RAM: stop one, or use a "
                "server with more memory.")


def _disk_row(facts: dict[str, list[str]]) -> dict:
    disk = (facts.get("disk") or [""])[0].split()
    try:
        free_disk = int(disk[3]) * 1024
    except (IndexError, ValueError):
        free_disk = 0
    return _row("disk", "Disk space", free_disk >= MIN_DISK_GB * GB,
                f"{free_disk / GB:.1f} GB free in the home folder (at least {MIN_DISK_GB} GB advised)",
                "Free some space (`docker system prune` removes unused images), or grow the disk.")


def _port_rows(facts: dict[str, list[str]], ports: tuple[int, int], usable: bool) -> list[dict]:
    listening = _listening_ports(facts.get("listen", []))
    proxy = " ".join(facts.get("proxy", []))
    rows = []
    for port in ports:
        name = (f"port_{port}", f"Port {port}")
        if port not in listening:
            rows.append(_row(*name, True, "free"))
        elif f":{port}->" in proxy:
            rows.append(_row(*name, True, "held by labdeploy's proxy (dallinger-caddy)"))
        elif not usable:
            rows.append(_row(*name, False, "in use; whether by labdeploy's proxy can't be told without Docker access",
                             "Fix the Docker checks above, then check again."))
        else:
            rows.append(_row(*name, False, "in use by another program",
                             f"Stop the web server that uses port {port} (e.g. `sudo systemctl stop nginx` or "
                             "apache2); labdeploy's Caddy needs ports 80 and 443."))
    return rows


def _stack_rows(facts: dict[str, list[str]], usable: bool) -> list[dict]:
    """How many experiments run, and whether the shared PostgreSQL and Caddy do."""
    if not usable:
        return [_row("experiments", "Experiments running", False, "can't tell without Docker access",
                     "Fix the Docker checks above, then check again."),
                _row("stack", "Shared services (PostgreSQL, Caddy)", False, "can't tell without Docker access",
                     "Fix the Docker checks above, then prepare the server.")]
    projects, apps = set(), set()
    for line in facts.get("projects", []):
        parts = line.split(" ", 1)
        if parts[0] and parts[0] != layout.STACK_PROJECT:
            projects.add(parts[0])
        if len(parts) > 1 and parts[1].strip():
            apps.add(parts[1].strip())
    running = max(len(projects), len(apps))
    stack_ok = {layout.POSTGRES_CONTAINER, layout.CADDY_CONTAINER} <= set(facts.get("stack", []))
    return [_row("experiments", "Experiments running", True,
                 f"{running} experiment{'s' if running != 1 else ''} running" +
                 (f" ({', '.join(sorted(apps or projects)[:10])})" if running else "")),
            _row("stack", "Shared services (PostgreSQL, Caddy)", stack_ok, "running" if stack_ok else "not running yet",
                 remedy=Remedy("stack.prepare"))]


def check(server, reporter: Optional[Reporter] = None, *, known_hosts=None, ports: tuple[int, int] = (80, 443)
          ) -> pd.DataFrame:
    """The readiness table for a server (a Remote, a Server or a registered name).

    Never raises for a server problem: a failed SSH login is the first row, with its hint.
    """
    from ..ssh import servers  # servers imports remote; keep this module importable on its own

    reporter = reporter or null_reporter
    rows = []
    with step(reporter, "readiness"):
        remote = servers.resolve(server, known_hosts=known_hosts)
        owned = remote is not server  # a connection made here is closed here
        try:
            try:
                remote.connect()
            except LabdeployError as exc:
                rows.append(_row("ssh_login", "SSH login", False, exc.message, exc.hint, remedy=exc.remedy))
                return pd.DataFrame(rows, columns=COLUMNS)
            rows.append(_row("ssh_login", "SSH login", True, f"logged in as {remote.label}"))
            out = remote.run(hostfacts.facts(), check=False, timeout=120).stdout
            rows.extend(judge(hostfacts.read_facts(out), user=remote.user, ports=ports))
        finally:
            if owned:
                remote.close()
    return pd.DataFrame(rows, columns=COLUMNS)


def experiments_that_fit(table: pd.DataFrame) -> int:
    """How many more simultaneous experiments the memory allows (from a readiness table)."""
    row = table[table["id"] == "memory"]
    if row.empty:
        return 0
    m = re.search(r"room for about (\d+)", row.iloc[0]["detail"])
    return int(m.group(1)) if m else 0


def is_ready(table: pd.DataFrame, *, need_stack: bool = False) -> bool:
    """True when every check that blocks deploying passed."""
    blocking = table if need_stack else table[table["id"] != "stack"]
    return bool(blocking["ok"].all())


class ServerNotReady(LabdeployError):
    """A check that a deploy needs did not pass."""

    code = "server.not_ready"


# What a deploy can't do without (the others only warn).
BLOCKING = frozenset({"ssh_login", "docker_installed", "docker_usable", "compose", "stack"})


def judge_deploy(table: pd.DataFrame, *, operation: str = "deploy", capacity: str = "warn") -> list[WarningEvent]:
    """What the readiness table means for a deploy (pure): raises ServerNotReady for a check
    that blocks it, returns warnings for the rest. Memory counts only for a new app (an update
    replaces containers that already use their share); `capacity` is warn / refuse / ignore."""
    warnings = []
    for _, row in table.iterrows():
        if row["id"] in BLOCKING and not row["ok"]:
            raise ServerNotReady(f"The server is not ready: {row['check']}: {row['detail']}.", row["hint"],
                                 remedy=row.get("remedy"))
        if row["id"] == "memory" and not row["ok"] and operation == "deploy" and capacity != "ignore":
            msg = f"Not enough memory for another experiment: {row['detail']}."
            if capacity == "refuse":
                raise ServerNotReady(msg, remedy=Remedy("deploy.capacity", advice=row["hint"]))
            warnings.append(WarningEvent(msg, row["hint"]))
        if row["id"] == "disk" and not row["ok"]:
            warnings.append(WarningEvent(f"Low disk space: {row['detail']}.", row["hint"]))
    return warnings
