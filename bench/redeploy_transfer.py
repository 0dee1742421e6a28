"""Redeploy after a one-line code change: bytes over SSH and wall time per transfer mode.

Compares labdeploy's modes ("server-build", "ssh-copy", "registry") with the plain-shell way
of the seed (`docker build`, `docker push`, `ssh server docker pull`), against the testbed.
For each route: a first delivery (not measured) puts the previous version on the server,
then one line of the experiment's code changes and getting the new image onto the server
is measured.

    .venv/bin/python bench/redeploy_transfer.py [--experiment examples/stroop] [--repeat 1] [--profiles lan,wan]

At each network profile (bench/wan.py): the WAN one puts 50 ms each way and 20 Mbit/s on the
SSH path and on both sides' registry paths, and counts the round trips of each route.

Bytes over SSH come from Remote.stats (bytes on the TCP socket, both directions). Registry
traffic (push + pull) is the compressed size of the layers the new manifest adds, read from
the registry (the same layers go up once and come down once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labdeploy.images import registry, transfer  # noqa: E402
from labdeploy.experiment import folder
from labdeploy.remote import Remote  # noqa: E402
import wan  # noqa: E402  (bench/wan.py: the network profiles)

TESTBED = Path(os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json"))


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def pick_experiment(arg: str | None) -> Path:
    if arg:
        return Path(arg).resolve()
    stroop = REPO / "examples" / "stroop"
    return stroop if (stroop / "Dockerfile").exists() else REPO / "tests" / "data" / "img_experiment"


def base_build_args(experiment: Path, tb: dict) -> dict:
    """Point the Dockerfile's base-image ARG at the testbed's python image (no Docker Hub here)."""
    text = (experiment / "Dockerfile").read_text()
    for name in ("BASE_IMAGE", "BASE"):
        if re.search(rf"^ARG {name}\b", text, re.M):
            return {name: tb["images"]["python"]}
    return {}


def code_file(experiment: Path) -> Path:
    ctx = folder.scan_context(experiment)
    candidates = [p for p in ctx.files if p.endswith(".py")]
    preferred = [p for p in candidates if p.endswith(("app.py", "experiment.py"))]
    return experiment / sorted(preferred or candidates)[0]


def one_line_change(path: Path) -> None:
    with open(path, "a") as f:
        f.write(f"# redeploy benchmark change {uuid.uuid4().hex[:8]}\n")


def manifest_layers(tb: dict, ref: str) -> dict:
    """digest -> compressed size of the layers of `ref` in the registry."""
    reg = tb["registry"]
    repo, _, tag = ref.partition(f"{reg['address']}/")[2].rpartition(":")
    resp = requests.get(f"https://{reg['address']}/v2/{repo}/manifests/{tag}",
                        auth=(reg["user"], reg["password"]), verify=reg["ca_cert"], timeout=30,
                        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    resp.raise_for_status()
    return {layer["digest"]: layer["size"] for layer in resp.json()["layers"]}


def registry_bytes(tb: dict, old_ref: str, new_ref: str) -> int:
    old, new = manifest_layers(tb, old_ref), manifest_layers(tb, new_ref)
    return 2 * sum(size for digest, size in new.items() if digest not in old)  # up once, down once


def run_mode(remote: Remote, tb: dict, src: Path, mode: str, creds, workdir: Path, net) -> dict:
    exp = workdir / f"exp-{mode}"
    shutil.copytree(src, exp)
    app = f"t-img-bench-{mode.split('-')[0]}-{uuid.uuid4().hex[:6]}"
    base = f"{tb['registry']['address']}/t-img-bench" if mode == "registry" else "t-img-bench"
    kwargs = dict(app=app, mode=mode, base_name=base, build_args=base_build_args(src, tb))
    if mode == "registry":
        kwargs.update(credentials=creds, logout_after_pull=True)
    first = transfer.deliver(remote, exp, **kwargs)
    changed = code_file(exp)
    one_line_change(changed)
    sent0, recv0 = remote.stats["bytes_sent"], remote.stats["bytes_received"]
    trips = net.counts()
    t0 = time.perf_counter()
    got = transfer.deliver(remote, exp, **kwargs)
    wall = time.perf_counter() - t0
    trips = sum(net.since(trips).values())
    assert got.ref != first.ref and transfer.server_image_id(remote, got.ref)
    reg = registry_bytes(tb, first.ref, got.ref) if mode == "registry" else 0
    return {"route": mode, "app": app, "refs": [first.ref, got.ref], "wall": wall,
            "ssh_sent": remote.stats["bytes_sent"] - sent0, "ssh_recv": remote.stats["bytes_received"] - recv0,
            "registry": reg, "changed_file": changed.stat().st_size, "trips": trips}


def run_plain_shell(tb: dict, src: Path, workdir: Path, net) -> dict:
    """The seed's way with the Docker CLI and the system ssh (a new SSH connection per command)."""
    exp = workdir / "exp-plain"
    shutil.copytree(src, exp)
    reg = tb["registry"]
    s = tb["ssh"]
    repo = f"{reg['address']}/t-img-bench/t-img-bench-plain-{uuid.uuid4().hex[:6]}"
    cfg = workdir / "docker-config"  # the CLI's login lives here, not in the real ~/.docker
    cfg.mkdir(mode=0o700)
    kh = workdir / "known_hosts"
    kh.write_text(s["known_hosts_line"] + "\n")
    server_cfg = f"dallinger/.build/t-img-bench-plain-{uuid.uuid4().hex[:6]}"
    ssh = ["ssh", "-i", s["key"], "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes",
           "-o", "BatchMode=yes", "-p", str(s["port"]), f"{s['user']}@{s['host']}"]
    build_args = [a for k, v in base_build_args(src, tb).items() for a in ("--build-arg", f"{k}={v}")]
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}

    def sh(argv, stdin=None):
        subprocess.run(argv, input=stdin, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    sh(["docker", "--config", str(cfg), "login", "-u", reg["user"], "--password-stdin", reg["address"]],
       reg["password"].encode())
    sh([*ssh, f"mkdir -p {server_cfg} && DOCKER_CONFIG={server_cfg} docker login -u {reg['user']} "
               f"--password-stdin {reg['address']}"], reg["password"].encode())

    def release(tag: str) -> float:
        t0 = time.perf_counter()
        sh(["docker", "build", "-q", *build_args, "-t", f"{repo}:{tag}", str(exp)])
        sh(["docker", "--config", str(cfg), "push", f"{repo}:{tag}"])
        sh([*ssh, f"DOCKER_CONFIG={server_cfg} docker pull {repo}:{tag}"])
        return time.perf_counter() - t0

    try:
        release("v1")
        changed = code_file(exp)
        one_line_change(changed)
        trips = net.counts()
        wall = release("v2")
        trips = sum(net.since(trips).values())
        reg_bytes = registry_bytes(tb, f"{repo}:v1", f"{repo}:v2")
    finally:
        subprocess.run([*ssh, f"docker rmi {repo}:v1 {repo}:v2; rm -rf {server_cfg}"], capture_output=True)
        subprocess.run(["docker", "rmi", f"{repo}:v1", f"{repo}:v2"], capture_output=True)
    return {"route": "plain shell", "wall": wall, "ssh_sent": None, "ssh_recv": None, "registry": reg_bytes,
            "changed_file": changed.stat().st_size, "refs": [], "trips": trips}


def cleanup(remote: Remote, results: list) -> None:
    import docker

    client = docker.from_env()
    for r in results:
        app = r.get("app")
        if not app:
            continue
        remote.run(["sh", "-c", f"docker image ls -q --filter label=labdeploy.app={app} | sort -u | "
                                f"xargs -r docker rmi -f"], check=False)
        remote.run(["rm", "-rf", "--", transfer.build_dir(app)], check=False)
        for image in client.images.list(filters={"label": f"labdeploy.app={app}"}):
            client.images.remove(image.id, force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", help="experiment folder (default: examples/stroop)")
    parser.add_argument("--repeat", type=int, default=1, help="measured redeploys per route (median shown)")
    parser.add_argument("--profiles", default="lan,wan", help="network profiles, in order (bench/wan.py)")
    args = parser.parse_args()
    tb0 = json.loads(TESTBED.read_text())
    src = pick_experiment(args.experiment)
    summary = {}
    for profile in wan.profiles(args.profiles):
        with wan.Network(tb0, profile) as net:
            print(f"\n===== {profile.describe()}", flush=True)
            summary[profile.name] = run_profile(net, src, args.repeat)
    names_ = list(summary)
    print("\nside by side (median wall seconds; round trips counted by the WAN relays, ssh + registry)")
    print(f"{'route':<13}" + "".join(f"{p + ' s':>9}{p + ' RTs':>10}" for p in names_))
    for route in [*transfer.MODES, "plain shell"]:
        print(f"{route:<13}" + "".join(f"{summary[p][route][0]:>9.2f}{summary[p][route][1] or '-':>10}"
                                       for p in names_))
    return 0


def run_profile(net, src: Path, repeat: int) -> dict:
    """Every route at one network profile; prints its table; {route: (median wall, round trips)}."""
    tb = net.testbed
    s = tb["ssh"]
    with tempfile.TemporaryDirectory(prefix="labdeploy-bench-") as tmp:
        tmp = Path(tmp)
        kh = tmp / "known_hosts_labdeploy"
        kh.write_text(s["known_hosts_line"] + "\n")
        remote = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False)
        remote.connect()
        os.environ["HOME"] = str(tmp)  # no real ~/.dallingerconfig or ~/.docker involved
        creds = registry.Credentials(tb["registry"]["address"], tb["registry"]["user"], tb["registry"]["password"])
        registry.login_local(creds)
        print(f"experiment: {src} ({human(folder.scan_context(src).total_size)} of build context)")
        results = []
        try:
            for mode in transfer.MODES:
                runs = [run_mode(remote, tb, src, mode, creds, tmp / f"{mode}-{i}", net) for i in range(repeat)]
                results.extend(runs)
                print(f"  measured {mode}", flush=True)
            plain = [run_plain_shell(tb, src, tmp / f"plain-{i}", net) for i in range(repeat)]
            results.extend(plain)
            print("  measured plain shell", flush=True)
        finally:
            cleanup(remote, results)
            remote.close()

    def med(route, key):
        vals = [r[key] for r in results if r["route"] == route and r[key] is not None]
        return statistics.median(vals) if vals else None

    plain_wall = med("plain shell", "wall")
    changed = med("server-build", "changed_file")
    print(f"\nchanged file: {human(changed)} (one line appended); plain-shell route = docker build + docker push "
          f"+ ssh server docker pull")
    print(f"{'route':<13} {'SSH sent':>10} {'SSH recv':>10} {'registry':>10} {'wall s':>7} "
          f"{'sent/changed':>13} {'time vs plain':>14} {'round trips':>12}")
    out = {}
    for route in [*transfer.MODES, "plain shell"]:
        sent, recv, reg, wall, trips = (med(route, k) for k in ("ssh_sent", "ssh_recv", "registry", "wall", "trips"))
        ratio = f"{sent / changed:.2f}x" if sent is not None else "-"
        vs = f"{wall / plain_wall:.2f}x" if plain_wall else "-"
        print(f"{route:<13} {human(sent) if sent is not None else 'n/a':>10} "
              f"{human(recv) if recv is not None else 'n/a':>10} {human(reg) if reg else '-':>10} "
              f"{wall:>7.2f} {ratio:>13} {vs:>14} {trips if trips else '-':>12}")
        out[route] = (wall, trips)
    print("\nSSH sent/recv: bytes on the SSH socket (labdeploy's one connection); registry: compressed layers "
          "pushed + pulled; 'time vs plain' < 1 means faster than the plain-shell registry route.")
    return out


if __name__ == "__main__":
    sys.exit(main())
