"""What a server offers for hosting experiments, gathered in one round trip: Docker, Compose,
memory, disk, listening ports, the proxy, the projects running. Judged by
labdeploy.server.readiness.
"""

from __future__ import annotations

from . import sections
from .shell import script

# Each section starts with a marker line; every command tolerates failure so one missing tool
# does not hide the other facts.
FACTS = r"""
echo '@@docker_path'; command -v docker 2>/dev/null || true
echo '@@docker_info'; if command -v docker >/dev/null 2>&1; then docker info --format '{{.ServerVersion}}' 2>&1; echo "rc=$?"; fi
echo '@@compose'
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then echo "v2 $(docker compose version --short 2>/dev/null)";
elif command -v docker-compose >/dev/null 2>&1; then echo "v1 $(docker-compose version --short 2>/dev/null)"; else echo none; fi
echo '@@meminfo'; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>/dev/null || true
echo '@@disk'; df -Pk "$HOME" 2>/dev/null | tail -n 1
echo '@@listen'; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$4 == "0A" {print $2}'
echo '@@proxy'; if command -v docker >/dev/null 2>&1; then docker ps --filter name=^/dallinger-caddy$ --format '{{.Names}} {{.Ports}}' 2>/dev/null; fi
echo '@@projects'; if command -v docker >/dev/null 2>&1; then docker ps --format '{{.Label "com.docker.compose.project"}} {{.Label "labdeploy.app"}}' 2>/dev/null; fi
echo '@@stack'; if command -v docker >/dev/null 2>&1; then docker ps --filter name=^/dallinger- --format '{{.Names}}' 2>/dev/null; fi
echo '@@end'
"""


def facts() -> list[str]:
    return script(FACTS)


def read_facts(output: str) -> dict[str, list[str]]:
    """Section name -> its non-blank lines."""
    return {name: sections.lines(text) for name, text in sections.parse(output).items()}
