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
from ..progress import Reporter, null_reporter, step

GB = 1024 ** 3
RAM_PER_EXPERIMENT_GB = 5  # the seed's rule of thumb
MIN_DISK_GB = 10  # room for a few experiment images and their data
COLUMNS = ["check", "ok", "detail", "hint"]


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


def _row(check: str, ok: bool, detail: str, hint: str = "") -> dict:
    return {"check": check, "ok": bool(ok), "detail": detail, "hint": "" if ok else hint}


def judge(facts: dict[str, list[str]], *, user: str = "USER", ports: tuple[int, int] = (80, 443)) -> list[dict]:
    """Turn the gathered facts into check rows (pure)."""
    rows = []
    docker_path = facts.get("docker_path", [])
    has_docker = bool(docker_path)
    rows.append(_row("Docker installed", has_docker, docker_path[0] if has_docker else "no `docker` command",
                     "Install Docker Engine on the server (https://docs.docker.com/engine/install/)."))
    info = facts.get("docker_info", [])
    rc_line = next((l for l in info if l.startswith("rc=")), "rc=1")
    usable = has_docker and rc_line == "rc=0"
    text = " ".join(l for l in info if not l.startswith("rc=")).strip()
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
    rows.append(_row("Docker usable without sudo", usable, detail, hint))
    comp = (facts.get("compose") or ["none"])[0]
    has_compose = comp != "none" and has_docker
    rows.append(_row("Docker Compose", has_compose,
                     {"v2": "docker compose (v2) ", "v1": "docker-compose (v1) "}.get(comp[:2], "") + comp[3:]
                     if has_compose else "neither `docker compose` nor `docker-compose` found",
                     "Install the docker-compose-plugin package (or Debian's docker-compose)."))
    mem = {}
    for line in facts.get("meminfo", []):
        m = re.match(r"(\w+):\s+(\d+)", line)
        if m:
            mem[m.group(1)] = int(m.group(2)) * 1024
    total, avail = mem.get("MemTotal", 0), mem.get("MemAvailable", 0)
    fit = int(avail // (RAM_PER_EXPERIMENT_GB * GB))
    rows.append(_row("Memory", fit >= 1,
                     f"{avail / GB:.1f} GB free of {total / GB:.1f} GB: room for about {fit} more simultaneous "
                     f"experiment{'s' if fit != 1 else ''} (~{RAM_PER_EXPERIMENT_GB} GB each)",
                     f"Each running experiment needs about {RAM_PER_EXPERIMENT_GB} GB of RAM: stop one, or use a "
                     "server with more memory."))
    disk = (facts.get("disk") or [""])[0].split()
    try:
        free_disk = int(disk[3]) * 1024
    except (IndexError, ValueError):
        free_disk = 0
    rows.append(_row("Disk space", free_disk >= MIN_DISK_GB * GB,
                     f"{free_disk / GB:.1f} GB free in the home folder (at least {MIN_DISK_GB} GB advised)",
                     "Free some space (`docker system prune` removes unused images), or grow the disk."))
    listening = _listening_ports(facts.get("listen", []))
    proxy = " ".join(facts.get("proxy", []))
    for port in ports:
        held = port in listening
        ours = held and f":{port}->" in proxy
        if not held:
            rows.append(_row(f"Port {port}", True, "free"))
        elif ours:
            rows.append(_row(f"Port {port}", True, "held by labdeploy's proxy (dallinger-caddy)"))
        elif not usable:
            rows.append(_row(f"Port {port}", False, "in use; whether by labdeploy's proxy can't be told "
                             "without Docker access", "Fix the Docker checks above, then check again."))
        else:
            rows.append(_row(f"Port {port}", False, "in use by another program",
                             f"Stop the web server that uses port {port} (e.g. `sudo systemctl stop nginx` or "
                             "apache2); labdeploy's Caddy needs ports 80 and 443."))
    projects, apps = set(), set()
    for line in facts.get("projects", []):
        parts = line.split(" ", 1)
        if parts[0] and parts[0] != layout.STACK_PROJECT:
            projects.add(parts[0])
        if len(parts) > 1 and parts[1].strip():
            apps.add(parts[1].strip())
    running = max(len(projects), len(apps))
    if not usable:
        rows.append(_row("Experiments running", False, "can't tell without Docker access",
                         "Fix the Docker checks above, then check again."))
        rows.append(_row("Shared services (PostgreSQL, Caddy)", False, "can't tell without Docker access",
                         "Fix the Docker checks above, then prepare the server."))
        return rows
    rows.append(_row("Experiments running", True,
                     f"{running} experiment{'s' if running != 1 else ''} running" +
                     (f" ({', '.join(sorted(apps or projects)[:10])})" if running else "")))
    stack_names = set(facts.get("stack", []))
    stack_ok = {layout.POSTGRES_CONTAINER, layout.CADDY_CONTAINER} <= stack_names
    rows.append(_row("Shared services (PostgreSQL, Caddy)", stack_ok,
                     "running" if stack_ok else "not running yet",
                     "Prepare the server (setup panel's last step, or labdeploy.server.stack.prepare())."))
    return rows


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
                rows.append(_row("SSH login", False, exc.message, exc.hint))
                return pd.DataFrame(rows, columns=COLUMNS)
            rows.append(_row("SSH login", True, f"logged in as {remote.label}"))
            out = remote.run(hostfacts.facts(), check=False, timeout=120).stdout
            rows.extend(judge(hostfacts.read_facts(out), user=remote.user, ports=ports))
        finally:
            if owned:
                remote.close()
    return pd.DataFrame(rows, columns=COLUMNS)


def experiments_that_fit(table: pd.DataFrame) -> int:
    """How many more simultaneous experiments the memory allows (from a readiness table)."""
    row = table[table["check"] == "Memory"]
    if row.empty:
        return 0
    m = re.search(r"room for about (\d+)", row.iloc[0]["detail"])
    return int(m.group(1)) if m else 0


def is_ready(table: pd.DataFrame, *, need_stack: bool = False) -> bool:
    """True when every check that blocks deploying passed."""
    blocking = table if need_stack else table[table["check"] != "Shared services (PostgreSQL, Caddy)"]
    return bool(blocking["ok"].all())
