"""Server setup: labdeploy vs the plain-shell way, against the testbed.

Prints wall times and ratios for: the readiness check (one SSH connection, one round trip,
vs one `ssh` per check as a researcher would type them), a repeated prepare (idempotent)
vs `ssh ... docker-compose up -d`, and a pg_stat_activity query as a DataFrame vs
`ssh ... docker exec ... psql`. Run: .venv/bin/python bench/setup_bench.py [repeats]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from labdeploy.server import psql, readiness, stack
from labdeploy.remote import Remote

TESTBED = os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json")

PLAIN_CHECKS = [
    "command -v docker",
    "docker info --format '{{.ServerVersion}}'",
    "docker compose version || docker-compose version",
    "free -b",
    "df -Pk ~",
    "ss -ltn || cat /proc/net/tcp",
    "docker ps --format '{{.Names}} {{.Ports}}'",
]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    tb = json.load(open(TESTBED))
    s = tb["ssh"]
    kh = tempfile.NamedTemporaryFile("w", delete=False, suffix="known_hosts")
    kh.write(s["known_hosts_line"] + "\n")
    kh.close()
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={kh.name}", "-o", "StrictHostKeyChecking=yes",
           "-i", s["key"], "-p", str(s["port"]), f"{s['user']}@{s['host']}"]

    def plain(cmd: str) -> None:
        subprocess.run([*ssh, cmd], capture_output=True, check=False)

    settings = stack.StackSettings.for_images(tb["images"], domain="localhost")

    def fresh_remote() -> Remote:
        return Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=kh.name, use_agent=False)

    rows = []
    # Readiness: a new connection each time, as a researcher running the check would have.
    ours = timed(lambda: readiness.check(fresh_remote()), repeats)
    shell = timed(lambda: [plain(c) for c in PLAIN_CHECKS], repeats)
    rows.append(("readiness check (cold connection)", ours, shell))

    r = fresh_remote().connect()
    stack.prepare(r, settings)
    ours = timed(lambda: stack.prepare(r, settings), repeats)
    shell = timed(lambda: plain("cd ~/dallinger && docker-compose up -d"), repeats)
    rows.append(("prepare again (no-op) vs compose up -d", ours, shell))

    sql = "select pid, usename, datname, state, backend_start from pg_stat_activity"
    ours = timed(lambda: psql.query_df(r, sql), repeats)
    shell = timed(lambda: subprocess.run([*ssh, "docker exec -i dallinger-postgresql psql -U dallinger"],
                                         input=sql.encode() + b";", capture_output=True), repeats)
    rows.append(("pg_stat_activity (DataFrame vs text)", ours, shell))
    r.close()
    os.unlink(kh.name)

    print(f"median of {repeats} runs; testbed {s['user']}@{s['host']}")
    print(f"{'operation':45} {'labdeploy':>10} {'plain ssh':>10} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:45} {a:9.3f}s {b:9.3f}s {b / a:6.2f}x")


if __name__ == "__main__":
    main()
