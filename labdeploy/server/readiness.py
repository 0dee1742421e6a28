"""Can this server host experiments? One table of checks (check, ok, detail, hint).

Facts are gathered by one shell script in one round trip (labdeploy.commands.hostfacts); the
judging is pure Python (`judge(facts, ...)`) so it is unit-testable.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import threading
from typing import Optional

import pandas as pd

from . import layout
from .stack import is_local_domain
from .. import names
from ..commands import hostfacts
from ..errors import LabdeployError
from ..progress import Reporter, WarningEvent, null_reporter, step
from ..remedies import Remedy, api_hint

GB = 1024 ** 3
RAM_PER_EXPERIMENT_GB = 5  # the seed's rule of thumb
MIN_DISK_GB = 10  # room for a few experiment images and their data
COLUMNS = ["id", "check", "ok", "detail", "hint", "remedy"]
# The name resolved before any app is deployed: under the domain, as every app's name is.
DNS_PROBE = "labdeploy-dns-check"
LOCAL_RESOLVE_TIMEOUT = 5.0  # seconds this computer waits for its own resolver


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


# --------------------------------------------------------------------------- DNS (public domains)

def dns_name(domain: str, app: Optional[str] = None) -> str:
    """The name whose DNS is checked: the app's own, or a probe name under the domain (what a
    wildcard record `*.<domain>` answers)."""
    return f"{names.app_name(app) if app else DNS_PROBE}.{names.domain(domain)}"


def _addresses(lines: list[str]) -> list[str]:
    """The IP addresses among words (`hostname -I` prints them on one line), in order, once."""
    seen: list[str] = []
    for word in " ".join(lines).split():
        try:
            address = str(ipaddress.ip_address(word.split("%", 1)[0]))
        except ValueError:
            continue
        if address not in seen:
            seen.append(address)
    return seen


def server_address(reached_at: list[str], facts: dict[str, list[str]]) -> str:
    """The address to point DNS at: where this computer reaches the server (its public address
    behind a NAT too), else where the SSH connection arrived, else the server's first one."""
    candidates = _addresses(reached_at) + _addresses(facts.get("reached", [])) + _addresses(facts.get("addresses", []))
    usable = [a for a in candidates if not ipaddress.ip_address(a).is_loopback]
    usable.sort(key=lambda a: ipaddress.ip_address(a).version)  # IPv4 first: the A record most need
    return usable[0] if usable else "the server's public IP address"


def judge_dns(domain: str, name: str, resolved: list[str], facts: dict[str, list[str]], *,
              reached_at: list[str] = (), local: Optional[list[str]] = None) -> dict:
    """Does `name` (under `domain`) lead to this server? `resolved`: what the server resolves it
    to; `reached_at`: the addresses this computer reaches the server at; `local`: what this
    computer resolves the name to (None: not asked). Pure."""
    ours = set(_addresses(facts.get("addresses", [])) + _addresses(facts.get("reached", []))
               + _addresses(list(reached_at)))
    resolved = _addresses(resolved)
    target = server_address(list(reached_at), facts)
    kind = "AAAA" if ":" in target else "A"
    hint = (f"Point an {kind} record for *.{domain} (or one for each app's name) at {target}, the address of "
            "this server, then check again; certificates can only be had once it points here, and a new record "
            "can take a while to be seen everywhere.")
    label = f"DNS for {domain}"
    if not resolved:
        return _row("dns", label, False, f"{name} does not resolve on the server", hint)
    here = [a for a in resolved if a in ours]
    if here:
        return _row("dns", label, True, f"{name} points at {', '.join(here)}, this server")
    detail = f"{name} points at {', '.join(resolved)}, not at this server ({target})"
    if local is not None and set(_addresses(local)) != set(resolved):
        detail += (f"; your computer resolves it to {', '.join(_addresses(local))}" if local
                   else "; your computer does not resolve it")
    return _row("dns", label, False, detail, hint)


def stack_domain(facts: dict[str, list[str]]) -> str:
    """The domain the server's shared stack was prepared with ('' when none, or not prepared)."""
    try:
        return str(json.loads("\n".join(facts.get("stack_json", [])) or "{}").get("settings", {}).get("domain") or "")
    except (ValueError, AttributeError):
        return ""


def _resolve_here(name: str, timeout: float = LOCAL_RESOLVE_TIMEOUT) -> Optional[list[str]]:
    """What this computer resolves `name` to ([] for nothing, None when its resolver does not
    answer in time)."""
    found: dict = {}

    def ask() -> None:
        try:
            found["addresses"] = sorted({info[4][0] for info in socket.getaddrinfo(name, None)})
        except (OSError, UnicodeError):
            found["addresses"] = []

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout)
    return found.get("addresses")


def _dns_row(remote, facts: dict[str, list[str]], domain: Optional[str], app: Optional[str]) -> Optional[dict]:
    """The DNS row for a public domain (the given one, else the stack's); None for local names."""
    domain = stack_domain(facts) if domain is None else domain
    if not domain or is_local_domain(domain):
        return None  # served over plain HTTP through the SSH tunnel: no DNS needed
    name = dns_name(domain, app)
    out = remote.run(hostfacts.resolve(name), check=False, timeout=60).stdout
    host = remote.host.strip("[]")
    try:
        reached = [str(ipaddress.ip_address(host.split("%", 1)[0]))]
    except ValueError:
        reached = _resolve_here(host) or []
    return judge_dns(domain, name, hostfacts.read_resolved(out).get(name, []), facts, reached_at=reached,
                     local=_resolve_here(name))


def check(server, reporter: Optional[Reporter] = None, *, known_hosts=None, ports: tuple[int, int] = (80, 443),
          domain: Optional[str] = None, app: Optional[str] = None) -> pd.DataFrame:
    """The readiness table for a server (a Remote, a Server or a registered name).

    Never raises for a server problem: a failed SSH login is the first row, with its hint.
    For a public domain (`domain`, else the one the server was prepared with; "" for none)
    a row says whether `<app>.<domain>` (or a probe name under it) resolves, on the server, to
    this server: certificates need that.
    """
    from ..ssh import servers  # servers imports remote; keep this module importable on its own

    if domain:  # bad input is refused before anything is asked of the server
        dns_name(domain, app)
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
            facts = hostfacts.read_facts(out)
            rows.extend(judge(facts, user=remote.user, ports=ports))
            dns = _dns_row(remote, facts, domain, app)
            if dns is not None:
                rows.append(dns)
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
        if row["id"] == "dns" and not row["ok"]:
            # Not a refusal: behind a NAT or a VPN the server may not know the address DNS gives.
            warnings.append(WarningEvent(f"{row['check']}: {row['detail']}; the app's certificate can't be had "
                                         "until it points at this server.", row["hint"]))
    return warnings
