"""Judging readiness facts (pure)."""

from labdeploy.commands import hostfacts
from labdeploy.server import readiness

GOOD = {
    "docker_path": ["/usr/bin/docker"],
    "docker_info": ["24.0.7", "rc=0"],
    "compose": ["v2 2.24.0"],
    "meminfo": ["MemTotal:       16000000 kB", "MemAvailable:   12000000 kB"],
    "disk": ["/dev/sda1 100000000 50000000 50000000 50% /home"],
    "listen": [],
    "proxy": [],
    "projects": ["dallinger ", "exp-a exp-a", "exp-a exp-a", "exp-b exp-b"],
    "stack": ["dallinger-postgresql", "dallinger-caddy"],
}


def rows(facts, **kw):
    return {r["check"]: r for r in readiness.judge(facts, user="alice", **kw)}


def test_a_good_server_passes_everything_and_counts():
    got = rows(GOOD)
    assert all(r["ok"] for r in got.values()), got
    assert "room for about 2 more" in got["Memory"]["detail"]
    assert got["Experiments running"]["detail"].startswith("2 experiments")
    assert got["Docker Compose"]["detail"].startswith("docker compose (v2)")


def test_compose_v1_is_accepted():
    got = rows({**GOOD, "compose": ["v1 1.29.2"]})
    assert got["Docker Compose"]["ok"] and "v1" in got["Docker Compose"]["detail"]


def test_too_little_memory_says_so():
    got = rows({**GOOD, "meminfo": ["MemTotal: 4000000 kB", "MemAvailable: 3000000 kB"]})
    assert not got["Memory"]["ok"] and "about 0 more" in got["Memory"]["detail"] and got["Memory"]["hint"]


def test_port_held_by_someone_else_vs_our_proxy():
    listen = ["00000000:0050", "00000000:01BB"]  # 80 and 443 in /proc/net/tcp hex
    other = rows({**GOOD, "listen": listen})
    assert not other["Port 80"]["ok"] and "nginx" in other["Port 80"]["hint"]
    ours = rows({**GOOD, "listen": listen, "proxy": ["dallinger-caddy 0.0.0.0:80->80/tcp, 0.0.0.0:443->443/tcp"]})
    assert ours["Port 80"]["ok"] and ours["Port 443"]["ok"]


def test_permission_denied_hints_the_docker_group():
    got = rows({**GOOD, "docker_info": ["permission denied while trying to connect to the Docker daemon socket",
                                        "rc=1"]})
    row = got["Docker usable without sudo"]
    assert not row["ok"] and "usermod -aG docker alice" in row["hint"]
    assert not got["Experiments running"]["ok"]


def test_no_docker():
    got = rows({**GOOD, "docker_path": [], "docker_info": [], "compose": ["none"]})
    assert not got["Docker installed"]["ok"] and "Install Docker" in got["Docker installed"]["hint"]
    assert not got["Docker Compose"]["ok"]


def test_the_facts_are_read_section_by_section():
    text = "@@a\nx\n\n@@b\n@@c\ny\nz\n"
    assert hostfacts.read_facts(text) == {"a": ["x"], "b": [], "c": ["y", "z"]}
