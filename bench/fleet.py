"""The fleet's tables over 1 vs 4 servers: asked at once, the time stays about flat.

The testbed has two servers; for 4, each is registered twice under another name (labdeploy
opens one connection per registered server, so 4 names are 4 SSH connections and 4 sets of
remote commands, on 2 machines). Each call opens its connections afresh, as a `labdeploy fleet`
command does, and closes them. For comparison, the same servers asked one after the other
(monitor.status per server, each with its own connection).

Run: .venv/bin/python bench/fleet.py [--repeats N]
     (as root, for the testbed's key). `--once --servers N` makes one fleet.status call and
     exits, for timing the whole process from outside, e.g.:
     farm-bench -n 5 -- .venv/bin/python bench/fleet.py --once --servers 1 \\
         --vs '.venv/bin/python bench/fleet.py --once --servers 4'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

TESTBED = os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json")
NAMES = [("bookworm", "bookworm"), ("trixie", "trixie"), ("bookworm-2", "bookworm"), ("trixie-2", "trixie")]


def register(count: int) -> list[str]:
    """A fresh HOME with `count` registered names for the testbed's servers (set before labdeploy loads)."""
    testbed = json.loads(Path(TESTBED).read_text())["servers"]
    home = Path(tempfile.mkdtemp(prefix="labdeploy-fleet-bench-"))
    os.environ["HOME"] = str(home)
    os.environ.pop("SSH_AUTH_SOCK", None)
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "known_hosts").write_text("".join(s["ssh"]["known_hosts_line"] + "\n" for s in testbed.values()))
    from labdeploy.ssh import servers

    for name, flavour in NAMES[:count]:
        s = testbed[flavour]["ssh"]
        servers.add(name, s["host"], s["user"], s["port"], key=s["key"], replace=True)
    return [name for name, _ in NAMES[:count]]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def one_after_the_other(names: list[str]) -> None:
    from labdeploy.watch import monitor

    for name in names:
        monitor.status(name)  # its own connection, opened and closed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--once", action="store_true", help="one fleet.status call, then exit")
    ap.add_argument("--servers", type=int, default=4, choices=(1, 2, 3, 4))
    args = ap.parse_args()
    if args.once:
        register(args.servers)
        from labdeploy.app import fleet

        df = fleet.status()
        assert not df.attrs["not_answering"], df.attrs
        return
    names = register(4)
    from labdeploy.app import fleet

    fleet.status(names[:1])  # warm up: imports, first connections
    print(f"fleet over the testbed's 2 servers registered under 1-4 names; median of {args.repeats}, seconds")
    print(f"{'servers':>8} {'fleet.status':>13} {'fleet.usage':>12} {'one after the other':>20}")
    for n in (1, 2, 4):
        chosen = names[:n]
        status = timed(lambda: fleet.status(chosen), args.repeats)
        usage = timed(lambda: fleet.usage(chosen), args.repeats)
        serial = timed(lambda: one_after_the_other(chosen), args.repeats)
        print(f"{n:>8} {statistics.median(status):>13.3f} {statistics.median(usage):>12.3f} "
              f"{statistics.median(serial):>20.3f}")


if __name__ == "__main__":
    main()
