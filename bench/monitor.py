"""Monitoring latency: labdeploy's pg_activity snapshot and status vs the seed's manual way.

On the testbed server, with 1 and then 10 apps (4 labelled containers each: web, worker,
clock, redis) running:

  snapshot   labdeploy  monitor.pg_activity(remote): SQL to a psql kept open on the one SSH
                        connection (PersistentPsql); also the one-shot form (persistent=False:
                        one `docker exec -i dallinger-postgresql psql --csv` per call)
             manual     the seed: `ssh server 'cd ~/dallinger && docker compose exec -T postgresql
                        psql -U dallinger -c "select ... from pg_stat_activity"'`, a new ssh
                        process each time (this server has Compose v1: `docker-compose`)
  status     labdeploy  monitor.status(remote): one round trip for all apps
             manual     `ssh server docker ps -a`, a new ssh process each time

At each network profile (`--profiles lan,wan`, bench/wan.py): the WAN one puts 50 ms each way
and 20 Mbit/s between this computer and the server and counts the round trips of each call.
Targets (LAN): snapshot < 100 ms median and >= 10x faster than manual; status flat from 1 to 10
apps. The machine has 2 cores shared with other work: figures are medians of several runs.
Run: .venv/bin/python bench/monitor.py [--repeats N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from labdeploy.watch import monitor  # noqa: E402
import wan  # noqa: E402  (bench/wan.py: the network profiles)
from labdeploy.remote import Remote  # noqa: E402

TESTBED = os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json")
PREFIX = "t-mon-bench-"
SERVICES = ("web", "worker", "clock", "redis")

SEED_QUERY = ("select pid as process_id, usename as username, datname as database_name, "
              "client_addr as client_address, application_name, backend_start, state, state_change "
              "from pg_stat_activity;")


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def fmt(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=10) if len(ms) >= 2 else ms * 9
    return f"median {statistics.median(ms):7.1f} ms   p10 {q[0]:7.1f}   p90 {q[-1]:7.1f}   (n={len(ms)})"


def start_apps(remote: Remote, images: dict, first: int, last: int) -> None:
    """Labelled containers like a deployed app's (long sleeps: cheap on 2 cores), one round trip."""
    cmds = []
    for i in range(first, last + 1):
        app = f"{PREFIX}{i:02d}"
        for svc in SERVICES:
            image = images["redis"] if svc == "redis" else images["python"]
            argv = ["docker", "run", "-d", "--name", f"{app}-{svc}", "--label", f"labdeploy.app={app}",
                    "--label", f"labdeploy.service={svc}", "--stop-signal", "SIGKILL", image]
            argv += [] if svc == "redis" else ["sleep", "3600"]
            cmds.append(shlex.join(argv) + " >/dev/null")
    remote.run(["sh", "-c", " && ".join(cmds)], timeout=600)


def remove_apps(remote: Remote) -> None:
    remote.run(["sh", "-c", "ids=$(docker ps -aq --filter name=" + shlex.quote(PREFIX) + "); "
                "[ -z \"$ids\" ] || docker rm -f $ids >/dev/null"], check=False, timeout=300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30, help="labdeploy calls per figure")
    ap.add_argument("--manual-repeats", type=int, default=8, help="manual (new ssh) calls per figure")
    ap.add_argument("--profiles", default="lan,wan", help="network profiles, in order (bench/wan.py)")
    ap.add_argument("--keep", action="store_true", help="leave the bench apps running")
    args = ap.parse_args()

    with open(TESTBED) as f:
        tb0 = json.load(f)
    summary = {}
    for profile in wan.profiles(args.profiles):
        with wan.Network(tb0, profile) as net:
            print(f"\n===== {profile.describe()}", flush=True)
            summary[profile.name] = run_profile(net, args)
    names_ = list(summary)
    print("\nside by side (median ms; round trips per call counted by the WAN relay, a new ssh's login included)")
    print(f"{'what':<44}" + "".join(f"{p + ' ms':>10}{p + ' RTs':>9}" for p in names_))
    for key, label in FIGURES:
        print(f"{label:<44}" + "".join(f"{summary[p][0][key]:>10.1f}{summary[p][1].get(key) or '-':>9}"
                                       for p in names_))


FIGURES = ((("status", 10), "labdeploy status() (10 apps)"), ("ps_manual", "manual ssh docker ps -a"),
           ("pg", "labdeploy pg_activity()"), ("pg_oneshot", "labdeploy pg_activity(persistent=False)"),
           ("pg_manual", "manual ssh + compose exec psql"), ("pg_manual_direct", "manual ssh + docker exec psql"))


def run_profile(net, args) -> tuple:
    """Every figure at one network profile: ({key: median ms}, {key: round trips per call})."""
    tb = net.testbed
    s = tb["ssh"]
    tmp = tempfile.mkdtemp(prefix="labdeploy-bench-monitor-")
    kh = os.path.join(tmp, "known_hosts")
    with open(kh, "w") as f:
        f.write(s["known_hosts_line"] + "\n")
    remote = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False)
    remote.connect()
    ssh = ["ssh", "-q", "-i", s["key"], "-p", str(s["port"]), "-o", f"UserKnownHostsFile={kh}",
           "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", f"{s['user']}@{s['host']}"]
    compose = "docker compose" if remote.run(["docker", "compose", "version"], check=False).ok else "docker-compose"

    def manual(cmd: str):
        return lambda: subprocess.run(ssh + [cmd], check=True, capture_output=True)

    manual_pg = manual(f"cd ~/dallinger && {compose} exec -T postgresql psql -U dallinger -c {shlex.quote(SEED_QUERY)}")
    manual_pg_direct = manual(f"docker exec dallinger-postgresql psql -U dallinger -c {shlex.quote(SEED_QUERY)}")
    manual_ps = manual("docker ps -a")
    print(f"load average at start: {os.getloadavg()[0]:.1f} (2 cores, shared with other work)\n")

    remove_apps(remote)
    results = {}
    trips = {}

    def counted(key, fn, repeats):
        """timed(), and the round trips of one call (the relay's count over the repeats)."""
        before = net.counts()
        ms = timed(fn, repeats)
        if net.links:
            trips[key] = round(sum(net.since(before).values()) / repeats)
        return ms
    try:
        # 1 app, 10 apps, then 1 app again: other work on the machine shifts the figures over
        # time, so the 1-app figure is taken before and after and the two are averaged.
        for run, n_apps in enumerate((1, 10, 1)):
            if run == 0:
                start_apps(remote, tb["images"], 1, 1)
            elif n_apps == 10:
                start_apps(remote, tb["images"], 2, 10)
            else:
                remove_apps(remote)
                start_apps(remote, tb["images"], 1, 1)
            total = len(monitor.status(remote))
            monitor.status(remote)  # warm
            ms = counted(("status", n_apps), lambda: monitor.status(remote), args.repeats)
            results.setdefault(("status", n_apps), []).extend(ms)
            print(f"status, {n_apps:2d} bench apps ({total} labdeploy containers on the server in all):")
            print(f"  labdeploy status()        {fmt(ms)}")
            if n_apps == 10:
                results["pg"] = timed(lambda: monitor.pg_activity(remote), 1)  # opens the persistent psql
                results["pg"] = counted("pg", lambda: monitor.pg_activity(remote), args.repeats)
                results["pg_oneshot"] = counted("pg_oneshot", lambda: monitor.pg_activity(remote, persistent=False),
                                                args.repeats)
                results["pg_manual"] = counted("pg_manual", manual_pg, args.manual_repeats)
                results["pg_manual_direct"] = counted("pg_manual_direct", manual_pg_direct, args.manual_repeats)
        results["ps_manual"] = counted("ps_manual", manual_ps, args.manual_repeats)
        print(f"  manual `ssh server docker ps -a` {fmt(results['ps_manual'])}")

        print("\npg_stat_activity snapshot (taken while the 10 bench apps ran):")
        print(f"  labdeploy pg_activity()                      {fmt(results['pg'])}")
        print(f"  labdeploy pg_activity(persistent=False)      {fmt(results['pg_oneshot'])}")
        print(f"  manual ssh + `{compose} exec -T postgresql psql` {fmt(results['pg_manual'])}")
        print(f"  manual ssh + `docker exec ... psql` (no compose) {fmt(results['pg_manual_direct'])}")
    finally:
        if not args.keep:
            remove_apps(remote)
        monitor.close_persistent_psql(remote)
        remote.close()

    med = {k: statistics.median(v) for k, v in results.items()}
    print("\nsummary")
    print(f"  snapshot median {med['pg']:.1f} ms (target < 100 ms): {'OK' if med['pg'] < 100 else 'MISSED'}")
    print(f"  snapshot vs the seed's manual way: {med['pg_manual'] / med['pg']:.1f}x faster (target >= 10x): "
          f"{'OK' if med['pg_manual'] / med['pg'] >= 10 else 'MISSED'}")
    print(f"  snapshot vs manual without compose: {med['pg_manual_direct'] / med['pg']:.1f}x faster")
    print(f"  one-shot snapshot: {med['pg_oneshot']:.1f} ms, {med['pg_manual'] / med['pg_oneshot']:.1f}x faster "
          "than the seed's way")
    ratio = med[("status", 10)] / med[("status", 1)]  # the 1-app runs before and after, pooled
    print(f"  status 10 apps / 1 app: {ratio:.2f}x ({med[('status', 1)]:.1f} -> {med[('status', 10)]:.1f} ms; "
          f"flat means well under the 10x a per-app loop would cost): {'OK' if ratio < 2 else 'MISSED'}")
    print(f"  status vs manual `ssh server docker ps -a`: {med['ps_manual'] / med[('status', 10)]:.1f}x faster")
    return med, trips


if __name__ == "__main__":
    main()
