"""Deploy and update times, SSH connections and remote commands: labdeploy vs the plain shell.

Against the testbed:

* labdeploy: a first deploy of examples/stroop, then an update after a one-line change, in
  "registry" mode (the seed's route: build here, push, pull on the server) and an update in
  "server-build" mode. SSH connections and remote commands come from Remote.stats. Registry
  logins (here and on the server) are made once beforehand, as for the plain shell.
* plain shell: the sequence a researcher types today for the same app, each `ssh` a new
  connection: docker build, docker push, ssh docker pull, ssh compose up, ssh caddy reload,
  curl POST /launch. Its "first deploy" starts from stopped containers but a compose file,
  database and Caddy site already in place (a researcher makes those by hand once; labdeploy
  does it inside its timed first deploy).

At each network profile (`--profiles lan,wan`, bench/wan.py): "lan" talks to the testbed
directly; "wan" puts a relay with 50 ms each way and 20 Mbit/s on every path that crosses a
network in reality (researcher -> server SSH and HTTP, researcher -> registry, server ->
registry) and counts the round trips each operation needs. Before the clock starts, the
image's base layers reach the registry and the server once (as after any earlier
experiment), so both ways ship only what the one-line change makes.

    .venv/bin/python bench/deploy.py [--repeat 1] [--profiles lan,wan]

Uses a temporary HOME (no real ~/.ssh or ~/.docker is touched) and app names wan-dep-*.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import wan  # noqa: E402  (bench/wan.py: the network profiles)

TESTBED = Path(os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json"))
EXAMPLE = REPO / "examples" / "stroop"


def one_line_change(folder: Path, n: int) -> None:
    app_py = folder / "stroop" / "app.py"
    app_py.write_text(app_py.read_text() + f"\n# bench change {n} {uuid.uuid4().hex[:6]}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="updates measured per route (median shown)")
    parser.add_argument("--profiles", default="lan,wan", help="network profiles, in order (bench/wan.py)")
    args = parser.parse_args()
    tb0 = json.loads(TESTBED.read_text())
    results = {}
    for profile in wan.profiles(args.profiles):
        with wan.Network(tb0, profile) as net:
            print(f"--- {profile.describe()}", flush=True)
            results[profile.name] = run_profile(net, args.repeat)
            print_profile(profile, *results[profile.name])
    print_side_by_side(results)


def run_profile(net: "wan.Network", repeat: int) -> tuple:
    """Every measured operation at one network profile: (rows, step_times)."""
    tb = net.testbed
    work = Path(tempfile.mkdtemp(prefix="labdeploy-bench-"))
    os.environ["HOME"] = str(work / "home")  # registry logins etc. land here, not in the real HOME
    (work / "home").mkdir()
    os.environ.pop("DOCKER_CONFIG", None)

    from labdeploy.app import apps, deploy
    from labdeploy.images import registry, transfer
    from labdeploy.server import stack
    from labdeploy.progress import StepFinished, StepStarted
    from labdeploy.remote import Remote

    s, reg = tb["ssh"], tb["registry"]
    kh = work / "known_hosts"
    kh.write_text(s["known_hosts_line"] + "\n")
    remote = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False)
    remote.connect()
    stack.prepare(remote, stack.StackSettings.for_images(tb["images"], domain="localhost"))
    creds = registry.Credentials(reg["address"], reg["user"], reg["password"])
    registry.login_local(creds)
    # Both sides log in once, before the clock starts (a researcher does it once per machine:
    # the registry panel, or `labdeploy registry login`); deploys then use those logins.
    registry.login_server(remote, creds)
    suffix = uuid.uuid4().hex[:4]
    app, plain_app, warm_app = f"wan-dep-bench-{suffix}", f"wan-dep-bench-sh-{suffix}", f"wan-dep-warm-{suffix}"
    common = {"build_args": {"BASE_IMAGE": tb["images"]["python"]}, "redis_image": tb["images"]["redis"],
              "health_path": "/health"}
    base_name = f"{reg['address']}/wan-dep-bench"
    reg_opts = {**common, "mode": "registry", "base_name": base_name}
    exp = work / "exp"
    shutil.copytree(EXAMPLE, exp)
    rows = []
    plain = None

    step_times: dict = {}  # label -> step -> [seconds]

    def measure(label: str, fn) -> dict:
        c0, n0 = remote.stats["connections"], remote.stats["commands"]
        remote.close()  # each labdeploy call starts from no connection, as in a fresh notebook
        began: dict = {}

        def timer(event) -> None:
            if isinstance(event, StepStarted):
                began[event.step] = time.perf_counter()
            elif isinstance(event, StepFinished) and event.step in began:
                step_times.setdefault(label, {}).setdefault(event.step, []).append(
                    time.perf_counter() - began[event.step])

        trips = net.counts()
        t0 = time.perf_counter()
        fn(timer)
        row = {"what": label, "seconds": time.perf_counter() - t0, "round_trips": net.since(trips),
               "connections": remote.stats["connections"] - c0, "commands": remote.stats["commands"] - n0}
        rows.append(row)
        return row

    try:
        # The image's base layers reach the registry and the server once, untimed, for both ways
        # alike (as after any earlier experiment): the timed work ships what a one-line change makes.
        transfer.deliver(remote, exp, app=warm_app, mode="registry", build_args=common["build_args"],
                         base_name=base_name)
        # ---- first deploys (labdeploy's timed; the plain shell's files made once by labdeploy)
        one_line_change(exp, 0)
        measure("labdeploy first deploy (registry)", lambda t: deploy.deploy(exp, app, remote, reporter=t, **reg_opts))
        # server-build keeps a copy of the build context on the server: a first build fills it
        one_line_change(exp, 1)
        deploy.update(exp, app, remote, mode="server-build", **common)
        deploy.deploy(exp, plain_app, remote, **common)
        from labdeploy.server import compose
        compose.run_compose(remote, f"dallinger/{plain_app}", ["-p", plain_app, "down"])
        plain = PlainShell(tb, work, plain_app, net)
        one_line_change(exp, 2)
        rows.append({"what": "plain shell first deploy", **plain.release("p0", exp)})

        # ---- updates, interleaved so that drift of the machine (caches, load) hits all alike
        for i in range(repeat):
            one_line_change(exp, 10 + i)
            measure("labdeploy update (registry)", lambda t: deploy.update(exp, app, remote, reporter=t, **reg_opts))
            one_line_change(exp, 30 + i)
            measure("labdeploy update (server-build)",
                    lambda t: deploy.update(exp, app, remote, mode="server-build", reporter=t, **common))
            one_line_change(exp, 50 + i)
            rows.append({"what": "plain shell update", **plain.release(f"p{i + 1}", exp)})
    finally:
        for a in (app, plain_app):
            try:
                apps.destroy(a, remote, confirm=True, remove_data=True, export_check=False)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                print(f"cleanup of {a}: {exc}", file=sys.stderr)
        if plain is not None:
            plain.cleanup()  # after destroy: no container uses its images any more
        remote.run(["sh", "-c", f"docker image ls -q --filter label=labdeploy.app={warm_app} | sort -u | "
                                f"xargs -r docker rmi -f"], check=False)
        remote.close()
        shutil.rmtree(work, ignore_errors=True)
        # registry mode built these here; destroy removed the server's copies
        local = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                               capture_output=True, text=True).stdout.split()
        mine = [r for r in local if r.startswith((f"{base_name}/{app}:", f"{base_name}/{warm_app}:"))]
        if mine:
            subprocess.run(["docker", "rmi", *mine], capture_output=True)
    return rows, step_times


def _trips(row: dict) -> str:
    rt = row.get("round_trips") or {}
    if not any(rt.values()):
        return "-"
    return f"{sum(rt.values())} ({rt.get('ssh', 0)}/{rt.get('registry', 0)}/{rt.get('http', 0)})"


def _median_rows(rows: list) -> dict:
    """what -> (median seconds, a row of that kind for the counts, n)."""
    out = {}
    for what in sorted({r["what"] for r in rows}):
        mine = [r for r in rows if r["what"] == what]
        med = statistics.median(r["seconds"] for r in mine)
        out[what] = (med, min(mine, key=lambda r: abs(r["seconds"] - med)), len(mine))
    return out


def print_profile(profile, rows: list, step_times: dict) -> None:
    print(f"\n{profile.describe()}")
    print(f"{'what':40} {'seconds':>8} {'ssh conns':>10} {'remote cmds':>12}  round trips (ssh/registry/http)")
    for r in sorted(rows, key=lambda r: r["what"]):
        print(f"{r['what']:40} {r['seconds']:8.1f} {r['connections']:10d} {r['commands']:12d}  {_trips(r)}")
    print("median seconds per labdeploy step:")
    for label, steps in step_times.items():
        print(f"  {label:38} " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in steps.items()))


def print_side_by_side(results: dict) -> None:
    names = list(results)
    meds = {p: _median_rows(rows) for p, (rows, _) in results.items()}
    print("\nside by side (median seconds; round trips counted by the WAN relays: ssh/registry/http)")
    print(f"{'what':40} " + " ".join(f"{p + ' s':>8} {p + ' RTs':>18}" for p in names))
    for what in sorted({w for m in meds.values() for w in m}):
        cells = []
        for p in names:
            med, row, _ = meds[p].get(what, (None, {}, 0))
            cells.append(f"{med:8.1f} {_trips(row):>18}" if med is not None else f"{'-':>8} {'-':>18}")
        print(f"{what:40} " + " ".join(cells))
    for p in names:
        m = meds[p]
        base = m["plain shell update"][0]
        print(f"{p}: update vs plain shell: registry {m['labdeploy update (registry)'][0] / base:.2f}x, "
              f"server-build {m['labdeploy update (server-build)'][0] / base:.2f}x; first deploy vs plain first "
              f"start: {m['labdeploy first deploy (registry)'][0] / m['plain shell first deploy'][0]:.2f}x")


class PlainShell:
    """The seed's commands with the Docker CLI, ssh and curl; every ssh is a new connection."""

    def __init__(self, tb: dict, work: Path, app: str, net) -> None:
        s, self.reg = tb["ssh"], tb["registry"]
        self.tb, self.app, self.net = tb, app, net
        self.repo = f"{self.reg['address']}/wan-dep-bench/{app}"
        self.cfg = work / "docker-config"  # the CLI's login: not the real ~/.docker
        self.cfg.mkdir(mode=0o700)
        kh = work / "known_hosts"
        self.ssh = ["ssh", "-i", s["key"], "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "BatchMode=yes", "-p", str(s["port"]), f"{s['user']}@{s['host']}"]
        self.server_cfg = f"dallinger/.build/{app}-docker"
        self.tags: list[str] = []
        self.sh(["docker", "--config", str(self.cfg), "login", "-u", self.reg["user"], "--password-stdin",
                 self.reg["address"]], self.reg["password"].encode())
        self.sh([*self.ssh, f"mkdir -p {self.server_cfg} && DOCKER_CONFIG={self.server_cfg} docker login -u "
                            f"{self.reg['user']} --password-stdin {self.reg['address']}"], self.reg["password"].encode())

    @staticmethod
    def sh(argv, stdin=None) -> None:
        subprocess.run(argv, input=stdin, check=True, env={**os.environ, "DOCKER_BUILDKIT": "0"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)

    def release(self, tag: str, exp: Path) -> dict:
        ref = f"{self.repo}:{tag}"
        self.tags.append(ref)
        trips = self.net.counts()
        t0 = time.perf_counter()
        self.sh(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={self.tb['images']['python']}", "-t", ref,
                 str(exp)])
        self.sh(["docker", "--config", str(self.cfg), "push", ref])
        self.sh([*self.ssh, f"DOCKER_CONFIG={self.server_cfg} docker pull {ref}"])
        self.sh([*self.ssh, f"cd dallinger/{self.app} && sed -i '/redis/!s|^\\( *image:\\).*|\\1 {ref}|' "
                            f"docker-compose.yml && docker-compose -p {self.app} up -d"])
        self.sh([*self.ssh, "docker exec dallinger-caddy caddy reload --config /etc/caddy/Caddyfile "
                            "--adapter caddyfile"])
        for _ in range(60):  # curl until the new web process answers /launch
            r = subprocess.run(["curl", "-sf", "-X", "POST", "-H", f"Host: {self.app}.localhost",
                                f"http://{self.tb['http']['host']}:{self.tb['http']['port']}/launch"],
                               capture_output=True)
            if r.returncode == 0 and b"success" in r.stdout:
                break
            time.sleep(0.3)
        else:
            raise RuntimeError("plain shell: /launch never answered")
        return {"seconds": time.perf_counter() - t0, "connections": 3, "commands": 3,
                "round_trips": self.net.since(trips)}

    def cleanup(self) -> None:
        subprocess.run([*self.ssh, f"docker rmi {' '.join(self.tags)}; rm -rf {self.server_cfg}"],
                       capture_output=True)
        subprocess.run(["docker", "rmi", *self.tags], capture_output=True)


if __name__ == "__main__":
    main()
