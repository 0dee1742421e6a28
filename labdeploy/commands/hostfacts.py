"""What a server offers for hosting experiments, gathered in one round trip: Docker, Compose,
memory, disk, listening ports, the proxy, the projects running. Judged by
labdeploy.server.readiness.
"""

from __future__ import annotations

from .. import names
from . import sections
from .shell import script

# Each section starts with a marker line; every command tolerates failure so one missing tool
# does not hide the other facts.
FACTS = r"""
echo '@@docker_path'; command -v docker 2>/dev/null || true
echo '@@docker_info'; if command -v docker >/dev/null 2>&1; then docker version --format '{{.Server.Version}}' 2>&1; echo "rc=$?"; fi
echo '@@compose'
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then echo "v2 $(docker compose version --short 2>/dev/null)";
elif command -v docker-compose >/dev/null 2>&1; then echo "v1 $(docker-compose version --short 2>/dev/null)"; else echo none; fi
echo '@@meminfo'; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>/dev/null || true
echo '@@disk'; df -Pk "$HOME" 2>/dev/null | tail -n 1
echo '@@listen'; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$4 == "0A" {print $2}'
echo '@@proxy'; if command -v docker >/dev/null 2>&1; then docker ps --filter name=^/dallinger-caddy$ --format '{{.Names}} {{.Ports}}' 2>/dev/null; fi
echo '@@projects'; if command -v docker >/dev/null 2>&1; then docker ps --format '{{.Label "com.docker.compose.project"}} {{.Label "labdeploy.app"}}' 2>/dev/null; fi
echo '@@stack'; if command -v docker >/dev/null 2>&1; then docker ps --filter name=^/dallinger- --format '{{.Names}}' 2>/dev/null; fi
echo '@@addresses'; hostname -I 2>/dev/null || ip -o addr show 2>/dev/null | awk '{split($4, a, "/"); print a[1]}'
echo '@@reached'; echo "$SSH_CONNECTION" | awk '{print $3}'
echo '@@stack_json'; cat "$HOME/dallinger/stack.json" 2>/dev/null || true
echo '@@end'
"""

# What each name resolves to on the server itself (its own resolver, /etc/hosts included), as a
# browser there would see it: one section per name, one address a line.
RESOLVE = r"""
t=; if command -v timeout >/dev/null 2>&1; then t='timeout 15'; fi
for name in "$@"; do
  echo "@@resolve $name"
  $t getent ahosts "$name" 2>/dev/null | awk '{print $1}' | sort -u
done
echo '@@end'
"""

# The server's CPUs and memory: what an app's default CPU limit is derived from (labdeploy.app.limits).
def facts() -> list[str]:
    return script(FACTS)


def resolve(*hostnames: str) -> list[str]:
    """Resolve each name on the server (`read_resolved` reads the answer)."""
    return script(RESOLVE, *(names.host(h) for h in hostnames))


def read_resolved(output: str) -> dict[str, list[str]]:
    """Name -> the addresses the server resolved it to ([] for none)."""
    return {name.split(" ", 1)[1]: sections.lines(text) for name, text in sections.parse(output).items()
            if name.startswith("resolve ")}


def read_facts(output: str) -> dict[str, list[str]]:
    """Section name -> its non-blank lines."""
    return {name: sections.lines(text) for name, text in sections.parse(output).items()}


# The server's CPU and memory right now, for a rehearsal's samples: the cumulative CPU
# counters (the caller takes the difference of two readings), the memory, the core count.
USAGE = r"""
echo '@@cpu'; head -n 1 /proc/stat
echo '@@meminfo'; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>/dev/null || true
echo '@@cores'; nproc 2>/dev/null || grep -c '^processor' /proc/cpuinfo
echo '@@end'
"""


def usage() -> list[str]:
    return script(USAGE)


def read_usage(output: str) -> dict:
    """{"busy": jiffies, "total": jiffies, "mem_total": bytes, "mem_available": bytes, "cores": n};
    missing values are None."""
    found = read_facts(output)
    cpu = (found.get("cpu") or [""])[0].split()
    busy = total = None
    if len(cpu) >= 5 and cpu[0] == "cpu":
        ticks = [int(x) for x in cpu[1:] if x.isdigit()]
        total = sum(ticks[:8])  # guest time is already counted in user time
        busy = total - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait are not busy
    mem = {}
    for line in found.get("meminfo", []):
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            mem[key.strip()] = int(parts[0]) * 1024
    cores = (found.get("cores") or [""])[0]
    return {"busy": busy, "total": total, "mem_total": mem.get("MemTotal"), "mem_available": mem.get("MemAvailable"),
            "cores": int(cores) if cores.isdigit() else None}


def read_size(output: str) -> tuple[int, int]:
    """(CPUs, memory in bytes; 0 when unknown) from `usage`'s output, for the 5 GB rule's defaults."""
    found = read_usage(output)
    return max(found["cores"] or 1, 1), found["mem_total"] or 0
