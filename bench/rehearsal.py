"""The rehearsal's load generator: its own ceiling, and one rehearsal's summary.

1. Ceiling: simulated participants with no think time against a trivial HTTP endpoint (a tiny
   asyncio server started by this script inside the testbed server's network namespace, so the
   only address targeted is the testbed's), for a few seconds. Printed: requests/s, the
   generator's CPU seconds (its process does nothing else) and so requests/s per core. The
   generator must never be what limits a rehearsal: at least 500 per core.
2. One rehearsal of examples/stroop on the testbed (a copy deployed, ramped, removed): its
   DataFrames and its sentence.

Run as root (the namespace): .venv/bin/python bench/rehearsal.py [--skip-rehearsal]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TESTBED = Path(os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json"))
PORT = 18622
TRIVIAL = r"""
import asyncio, sys
async def handle(r, w):
    try:
        while (line := await r.readline()):
            n = 0
            while (h := await r.readline()) not in (b"\r\n", b""):
                if h[:15].lower() == b"content-length:":
                    n = int(h[15:])
            if n:
                await r.readexactly(n)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def main():
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def ceiling(tb: dict, participants: int, seconds: float) -> dict:
    from labdeploy.rehearsal import LoadRun, Target

    address = tb["http"]["host"]
    server = subprocess.Popen(["ip", "netns", "exec", tb["netns"], sys.executable, "-c", TRIVIAL, address, str(PORT)])
    try:
        time.sleep(1.5)
        run = LoadRun(Target(address, PORT, "trivial.localhost"), [{"method": "GET", "path": "/"}], [participants],
                      seconds, think=0)
        cpu0, t0 = time.process_time(), time.monotonic()
        with run:
            run.join(seconds + 60)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    finally:
        server.terminate()
        server.wait(10)
    hits = run.hits
    return {"requests": len(hits), "errors": int((~hits["ok"]).sum()), "wall_s": wall, "cpu_s": cpu,
            "rps": len(hits) / wall, "rps_per_core": len(hits) / max(cpu, 1e-9)}


def one_rehearsal(tb: dict) -> str:
    from labdeploy.rehearsal import rehearse
    from labdeploy.remote import Remote
    from deploy_support import EXAMPLE, deploy_kwargs, prepare_local_stack
    from test_rehearsal import STROOP_FLOW

    s = tb["ssh"]
    kh = Path(os.environ["HOME"]) / "known_hosts"
    kh.write_text(s["known_hosts_line"] + "\n")
    remote = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=str(kh), use_agent=False)
    remote.connect()
    try:
        prepare_local_stack(remote, tb)
        result = rehearse("bench-rh", remote, experiment=EXAMPLE, participants=20, ramp=4, duration=80,
                          flow=STROOP_FLOW, think=1.0, force=True, deploy_settings=deploy_kwargs(tb))
        return result.summary() + "\n\n" + result.resources.to_string(float_format=lambda v: f"{v:.4g}")
    finally:
        remote.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--skip-rehearsal", action="store_true")
    args = parser.parse_args()
    tb = json.loads(TESTBED.read_text())
    os.environ["HOME"] = tempfile.mkdtemp(prefix="labdeploy-bench-home-")  # no real ~/.ssh touched
    c = ceiling(tb, args.participants, args.seconds)
    print(f"generator ceiling: {c['requests']} requests in {c['wall_s']:.1f} s ({c['errors']} errors) = "
          f"{c['rps']:.0f} requests/s; generator CPU {c['cpu_s']:.1f} s = {c['rps_per_core']:.0f} requests/s per core "
          f"({'OK' if c['rps_per_core'] >= 500 else 'BELOW'} the 500/core floor); {args.participants} participants, "
          f"no think time, trivial endpoint in the testbed server's namespace")
    if not args.skip_rehearsal:
        print(one_rehearsal(tb))


if __name__ == "__main__":
    main()
