"""The researcher's journey on a computer without Docker: run by tests/test_no_local_docker.py
inside `unshare --mount`, as `python nodocker_child.py PLAN.json`.

It first hides this computer's Docker engine (an empty file bind-mounted over each socket, in
this mount namespace only) and proves that Docker is really gone: no `docker` on PATH, the
sockets refuse connections, the SDK finds no engine, no DOCKER_HOST, no ~/.docker. Then it
drives the `labdeploy` command (`python -m labdeploy.cli`) through setup, a server-build
deploy, an update, monitoring, an export, a backup and destroy, and checks that the two
modes that build here are refused before the server is touched. It stops at the first
failure with what it saw; at the end it prints one JSON line with what it found.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

PLAN = json.loads(Path(sys.argv[1]).read_text())
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # deploy_support (the testbed's stack settings)
FOUND: dict = {}


class Failed(Exception):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


# ---------------------------------------------------------------- 1. no Docker here, for real

def hide_docker() -> None:
    for sock in PLAN["sockets"]:
        subprocess.run([PLAN["mount"], "--bind", PLAN["empty_file"], sock], check=True)


def prove_no_docker() -> None:
    check(shutil.which("docker") is None, f"`docker` is on PATH: {shutil.which('docker')}")
    for d in os.environ["PATH"].split(os.pathsep):
        check(not any(p.name.startswith("docker") for p in Path(d).iterdir()), f"a docker binary in {d}")
    check("DOCKER_HOST" not in os.environ and "DOCKER_CONTEXT" not in os.environ, "DOCKER_HOST is set")
    check(not (Path.home() / ".docker").exists(), "~/.docker exists")
    for path in dict.fromkeys(PLAN["sockets"] + PLAN["socket_names"]):  # /var/run/docker.sock and its real path
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            raise Failed(f"{path} still accepts connections")
        except OSError as exc:
            FOUND.setdefault("socket_errors", {})[path] = type(exc).__name__
        finally:
            s.close()
    import docker

    try:
        docker.from_env(timeout=5).ping()
        raise Failed("the Docker SDK still reaches an engine")
    except docker.errors.DockerException as exc:
        FOUND["sdk_error"] = str(exc)[:200]
    from labdeploy.images import localdocker

    local = localdocker.probe()
    check(not local.engine and local.cli is None, f"labdeploy still sees Docker: {local}")
    FOUND["probe"] = local.summary()


# ---------------------------------------------------------------- the command line

def cli(*argv, expect: int = 0, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "labdeploy.cli", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(Path.home()))
    if proc.returncode != expect or "Traceback" in proc.stderr:
        raise Failed(f"$ labdeploy {' '.join(map(str, argv))}\n[exit {proc.returncode}, expected {expect}]\n"
                     f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def through_caddy(app: str, path: str = "/", method: str = "GET", **kw) -> requests.Response:
    http = PLAN["http"]
    return requests.request(method, f"http://{http['host']}:{http['port']}{path}",
                            headers={"Host": f"{app}.localhost"}, timeout=15, **kw)


def api_remote():
    from labdeploy.remote import Remote

    s = PLAN["ssh"]
    return Remote(s["host"], s["port"], s["user"], key_filename=s["key"],
                  known_hosts=str(Path.home() / ".ssh" / "known_hosts"), use_agent=False)


# ---------------------------------------------------------------- 2. the journey

def setup() -> None:
    s = PLAN["ssh"]
    cli("servers", "add", "nod", "--host", s["host"], "--port", s["port"], "--user", s["user"], "--key", s["key"],
        "--trust-host-key", s["host_key_fingerprint"])
    from deploy_support import prepare_local_stack  # the testbed's images: the same settings every test uses

    with api_remote() as remote:
        remote.connect()
        prepare_local_stack(remote, PLAN)
    checked = subprocess.run([sys.executable, "-m", "labdeploy.cli", "servers", "check"], capture_output=True,
                             text=True, timeout=300, stdin=subprocess.DEVNULL)
    check("no local Docker: server-build mode only" in checked.stderr, f"servers check:\n{checked.stderr}")
    check("Traceback" not in checked.stderr, checked.stderr)
    FOUND["servers_check_exit"] = checked.returncode


def deploy_args(app: str, folder: Path, *extra) -> list:
    return ["deploy", "--app", app, folder, "--build-arg", f"BASE_IMAGE={PLAN['images']['python']}",
            "--redis-image", PLAN["images"]["redis"], "--health-path", "/health", "--start-timeout", "180",
            "--capacity", "warn", "--json", *extra]


def deploy_and_update(app: str, folder: Path) -> None:
    first = json.loads(cli(*deploy_args(app, folder, "--mode", "server-build")).stdout)
    check(through_caddy(app).status_code == 200, "the deployed app does not answer through Caddy")
    pid = through_caddy(app, "/api/participants", "POST", json={"worker_id": "nod-1"}).json()["id"]
    through_caddy(app, f"/api/participants/{pid}/responses", "POST",
                  json={"trial": 1, "word": "red", "ink": "red", "answer": "red", "rt_ms": 512})
    template = folder / "stroop" / "templates" / "index.html"
    # New content every run, so the server really builds (no image of an earlier run to reuse).
    line = f"Colour naming study, no Docker here ({uuid.uuid4().hex[:8]})"
    template.write_text(template.read_text().replace("Colour naming study", line, 1))
    second = json.loads(cli(*deploy_args(app, folder, "--update", "--mode", "server-build")).stdout)
    check(second["version"] != first["version"], "the update kept the old version")
    check(line in through_caddy(app).text, "the update's change is not served")
    FOUND["versions"] = [first["version"], second["version"]]


def watch_and_export(app: str, out: Path) -> None:
    status = json.loads(cli("status", "--app", app, "--json").stdout)
    check(any(r.get("service") == "web" for r in status), f"status without web: {status}")
    logs = cli("logs", "--app", app, "--service", "web", "--tail", "50")
    check(logs.stdout.strip() != "", "no web logs")
    activity_rows = json.loads(cli("connections", "--all", "--json").stdout)  # pg_stat_activity (may be idle)
    connections = json.loads(cli("connections", "--json").stdout)
    check(isinstance(activity_rows, list) and connections["max_connections"] >= 10, f"connections: {connections}")
    from labdeploy.watch import monitor

    with api_remote() as remote:
        remote.connect()
        stats = monitor.stats(remote, app)
        activity = monitor.pg_activity(remote)
    check(len(stats) >= 1 and activity.attrs["max_connections"] >= 10, f"stats or pg_activity: {stats}, {activity}")
    exported = json.loads(cli("export", "--app", app, "--out", out, "--json").stdout)
    counts = {t["table"]: t.get("rows") for t in exported["tables"]}
    check(out.exists() and counts.get("participants") == 1, f"export: {exported}")
    cli("backup", "--app", app)
    backups = json.loads(cli("backups", "--app", app, "--json").stdout)
    check(len(backups) >= 1, "no backup listed")
    FOUND["exported"] = counts


def refused_modes(app: str, new_app: str, folder: Path) -> None:
    """ssh-copy and registry: a clear error, and the server as it was (no lock, no folder)."""
    from labdeploy.server import layout

    with api_remote() as remote:
        remote.connect()
        state_before = remote.get_bytes(layout.app_state(app))
    registry = ["--image-base-name", f"{PLAN['registry']}/labdeploy-nod"]
    for argv in (deploy_args(new_app, folder, "--mode", "ssh-copy"),
                 deploy_args(new_app, folder, "--mode", "registry", *registry),
                 deploy_args(app, folder, "--update", "--mode", "ssh-copy"),
                 deploy_args(app, folder, "--update", "--mode", "registry", *registry)):
        error = json.loads(cli(*argv, expect=1).stdout)["error"]
        check(error["code"] == "docker.local.unavailable", f"{argv}: {error}")
        check("no usable Docker" in error["message"] and "Nothing was sent" in error["message"], error["message"])
        check("Install Docker on this computer" in error["hint"] and "--mode server-build" in error["hint"],
              error["hint"])
    FOUND["refused_hint"] = error["hint"]
    refused_through_the_api(app, new_app, folder)
    with api_remote() as remote:
        remote.connect()
        for path in (layout.app_lock(app), layout.app_lock(new_app), layout.app_dir(new_app),
                     layout.build_dir(new_app)):
            check(not remote.exists(path), f"{path} exists on the server after a refused deploy")
        check(remote.get_bytes(layout.app_state(app)) == state_before, "deploy.json changed")


def refused_through_the_api(app: str, new_app: str, folder: Path) -> None:
    from labdeploy.app import deploy
    from labdeploy.images import localdocker, transfer
    from labdeploy.widgets.deploy import DeployPanel

    remote = api_remote()  # never connected: a refusal comes before the connection
    for fn, name, mode in ((deploy.deploy, new_app, "ssh-copy"), (deploy.update, app, "registry")):
        try:
            fn(folder, name, remote, mode=mode, base_name=f"{PLAN['registry']}/labdeploy-nod")
            raise Failed(f"{mode} deployed without a local Docker")
        except localdocker.DockerUnavailable as exc:
            check("mode='server-build'" in exc.hint, exc.hint)
    check(remote.stats["connections"] == 0, f"a refused deploy connected: {remote.stats}")
    with api_remote() as connected:
        connected.connect()
        before = dict(connected.stats)
        try:
            transfer.deliver(connected, folder, app=new_app, mode="ssh-copy")
            raise Failed("deliver in ssh-copy mode worked without a local Docker")
        except localdocker.DockerUnavailable:
            pass
        check(connected.stats["commands"] == before["commands"], "deliver ran a command before refusing")
        panel = DeployPanel(str(folder), app=new_app, server=connected, mode="registry")
        try:
            check("no local Docker: server-build mode only" in panel.mode_help.value, panel.mode_help.value)
            panel.deploy()
            panel.last_task.join(120)
            check("Transfer mode in the Deploy panel" in panel.message.value, panel.message.value)
            FOUND["panel_message"] = panel.message.value
        finally:
            panel.close()


def destroy(app: str, final: Path) -> None:
    result = json.loads(cli("destroy", "--app", app, "--remove-data", "--remove-backups", "--final-export", final,
                            "--yes", "--json").stdout)
    check(through_caddy(app).status_code != 200, "the destroyed app still answers")
    FOUND["destroyed"] = {k: result.get(k) for k in ("removed", "kept")}


def main() -> int:
    hide_docker()
    prove_no_docker()
    work = Path(PLAN["work"])
    folder = work / "stroop"
    shutil.copytree(PLAN["example"], folder)
    t0 = time.monotonic()
    setup()
    deploy_and_update(PLAN["app"], folder)
    watch_and_export(PLAN["app"], work / "export.zip")
    refused_modes(PLAN["app"], PLAN["refused_app"], folder)
    destroy(PLAN["app"], work / "final")
    FOUND["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(FOUND))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        print(json.dumps(FOUND))
        sys.exit(1)
