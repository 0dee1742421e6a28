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

    .venv/bin/python bench/deploy.py [--repeat 1]

Uses a temporary HOME (no real ~/.ssh or ~/.docker is touched) and app names t-dep-bench-*.
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

TESTBED = Path(os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json"))
EXAMPLE = REPO / "examples" / "stroop"


def one_line_change(folder: Path, n: int) -> None:
    app_py = folder / "stroop" / "app.py"
    app_py.write_text(app_py.read_text() + f"\n# bench change {n} {uuid.uuid4().hex[:6]}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="updates measured per route (median shown)")
    args = parser.parse_args()
    tb = json.loads(TESTBED.read_text())
    work = Path(tempfile.mkdtemp(prefix="labdeploy-bench-"))
    os.environ["HOME"] = str(work / "home")  # registry logins etc. land here, not in the real HOME
    (work / "home").mkdir()
    os.environ.pop("DOCKER_CONFIG", None)

    from labdeploy.app import apps, deploy
    from labdeploy.images import registry
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
    app, plain_app = f"t-dep-bench-{suffix}", f"t-dep-bench-sh-{suffix}"
    common = {"build_args": {"BASE_IMAGE": tb["images"]["python"]}, "redis_image": tb["images"]["redis"],
              "health_path": "/health"}
    reg_opts = {**common, "mode": "registry", "base_name": f"{reg['address']}/t-dep-bench"}
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

        t0 = time.perf_counter()
        fn(timer)
        row = {"what": label, "seconds": time.perf_counter() - t0,
               "connections": remote.stats["connections"] - c0, "commands": remote.stats["commands"] - n0}
        rows.append(row)
        return row

    try:
        # ---- first deploys (labdeploy's timed; the plain shell's files made once by labdeploy)
        one_line_change(exp, 0)
        measure("labdeploy first deploy (registry)", lambda t: deploy.deploy(exp, app, remote, reporter=t, **reg_opts))
        # server-build keeps a copy of the build context on the server: a first build fills it
        one_line_change(exp, 1)
        deploy.update(exp, app, remote, mode="server-build", **common)
        deploy.deploy(exp, plain_app, remote, **common)
        from labdeploy.server import compose
        compose.run_compose(remote, f"dallinger/{plain_app}", ["-p", plain_app, "down"])
        plain = PlainShell(tb, work, plain_app)
        first_plain = plain.release("p0", exp)
        rows.append({"what": "plain shell first deploy", **first_plain})

        # ---- updates, interleaved so that drift of the machine (caches, load) hits all alike
        ld_reg, ld_sb, plain_updates = [], [], []
        for i in range(args.repeat):
            one_line_change(exp, 10 + i)
            ld_reg.append(measure("labdeploy update (registry)",
                                  lambda t: deploy.update(exp, app, remote, reporter=t, **reg_opts)))
            one_line_change(exp, 30 + i)
            ld_sb.append(measure("labdeploy update (server-build)",
                                 lambda t: deploy.update(exp, app, remote, mode="server-build", reporter=t,
                                                         **common)))
            one_line_change(exp, 50 + i)
            r = plain.release(f"p{i + 1}", exp)
            plain_updates.append(r)
            rows.append({"what": "plain shell update", **r})
    finally:
        for a in (app, plain_app):
            try:
                apps.destroy(a, remote, confirm=True, remove_data=True, export_check=False)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                print(f"cleanup of {a}: {exc}", file=sys.stderr)
        if plain is not None:
            plain.cleanup()  # after destroy: no container uses its images any more
        remote.close()
        shutil.rmtree(work, ignore_errors=True)
        # registry mode built these here; destroy removed the server's copies
        local = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                               capture_output=True, text=True).stdout.split()
        mine = [r for r in local if r.startswith(f"{reg['address']}/t-dep-bench/{app}:")]
        if mine:
            subprocess.run(["docker", "rmi", *mine], capture_output=True)

    print(f"{'what':40} {'seconds':>8} {'ssh conns':>10} {'remote cmds':>12}")
    for r in sorted(rows, key=lambda r: r["what"]):
        print(f"{r['what']:40} {r['seconds']:8.1f} {r['connections']:10d} {r['commands']:12d}")
    print("\nmedian seconds per labdeploy step:")
    for label, steps in step_times.items():
        print(f"  {label:38} " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in steps.items()))
    med = lambda rs: statistics.median(r["seconds"] for r in rs)  # noqa: E731
    base = med(plain_updates)
    print(f"\nupdate time ratio vs plain shell: registry {med(ld_reg) / base:.2f}x, "
          f"server-build {med(ld_sb) / base:.2f}x (target <= 1.2x)")
    print(f"first deploy ratio vs plain shell (which skips DB/Caddy setup): "
          f"{rows[0]['seconds'] / first_plain['seconds']:.2f}x")


class PlainShell:
    """The seed's commands with the Docker CLI, ssh and curl; every ssh is a new connection."""

    def __init__(self, tb: dict, work: Path, app: str) -> None:
        s, self.reg = tb["ssh"], tb["registry"]
        self.tb, self.app = tb, app
        self.repo = f"{self.reg['address']}/t-dep-bench/{app}"
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
                                f"http://{self.tb['http']['host']}/launch"], capture_output=True)
            if r.returncode == 0 and b"success" in r.stdout:
                break
            time.sleep(0.3)
        else:
            raise RuntimeError("plain shell: /launch never answered")
        return {"seconds": time.perf_counter() - t0, "connections": 3, "commands": 3}

    def cleanup(self) -> None:
        subprocess.run([*self.ssh, f"docker rmi {' '.join(self.tags)}; rm -rf {self.server_cfg}"],
                       capture_output=True)
        subprocess.run(["docker", "rmi", *self.tags], capture_output=True)


if __name__ == "__main__":
    main()
