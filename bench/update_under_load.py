"""Updates under load: failed participant requests and latency, labdeploy vs the plain way.

Against the testbed: 50 simulated participants (tests/participant_load.py: each loops through
examples/stroop's routes through Caddy: start, three answers, finish, with think time) while
the app is

* updated 5 times (a one-line change each: a new image),
* updated to a version whose web process crashes at start,
* updated with launch to a version whose POST /launch answers 500,
* restarted (web and worker).

labdeploy does each with its health-gated switch. The plain way is what the seed does: on the
server, the compose file names the new image and `docker compose up -d` recreates web (a
failed version is then put back the same way; a restart is `docker compose restart web
worker`). Both run against their own copy of the app, one operation after the other.

Prints, per operation and side: requests during it, failed requests (5xx or no answer), p50
and p95 latency, and p95 during / p95 at rest.

    .venv/bin/python bench/update_under_load.py [--participants 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from participant_load import Participants, p95_ratio  # noqa: E402

TESTBED = Path(os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json"))
EXAMPLE = REPO / "examples" / "stroop"
OURS, PLAIN = "bench-upd-switch", "bench-upd-plain"
CRASH = ("web: python -c 'import sys; print(\"crashes on purpose\"); sys.exit(3)'\n"
         "worker: python -m stroop.worker\nclock: python -m stroop.clock\n")


def variant(root: Path, name: str, *, crash: bool = False, bad_launch: bool = False) -> Path:
    exp = root / name
    shutil.copytree(EXAMPLE, exp)
    app_py = exp / "stroop" / "app.py"
    text = app_py.read_text() + f"\n# bench change {name} {uuid.uuid4().hex[:6]}\n"
    if bad_launch:
        text = text.replace("        db.create_tables()\n", "        raise RuntimeError('launch broke')\n", 1)
    app_py.write_text(text)
    if crash:
        (exp / "Procfile").write_text(CRASH)
    return exp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=50)
    args = parser.parse_args()
    tb = json.loads(TESTBED.read_text())
    os.environ["HOME"] = tempfile.mkdtemp(prefix="labdeploy-bench-home-")  # no real ~/.ssh touched

    from labdeploy.app import apps, deploy
    from labdeploy import monitor
    from labdeploy.remote import Remote
    from labdeploy.server import compose, layout, stack

    s = tb["ssh"]
    kh = Path(os.environ["HOME"]) / "known_hosts"
    kh.write_text(s["known_hosts_line"] + "\n")
    remote = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=str(kh), use_agent=False)
    remote.connect()
    stack.prepare(remote, stack.StackSettings.for_images(tb["images"], domain="localhost"))
    kw = {"build_args": {"BASE_IMAGE": tb["images"]["python"]}, "redis_image": tb["images"]["redis"],
          "health_path": "/health"}
    base = f"http://{tb['http']['host']}:{tb['http']['port']}"
    root = Path(tempfile.mkdtemp(prefix="labdeploy-bench-"))

    for app in (OURS, PLAIN):
        try:
            apps.destroy(app, remote, confirm=True, remove_data=True, export_check=False, remove_backups=True,
                         force=True)
        except deploy.UnknownApp:
            pass
        deploy.deploy(EXAMPLE, app, remote, **kw)

    # Versions for both sides, built once beforehand by labdeploy's own update of PLAIN (timed
    # below only for OURS): the plain way then only switches images, as after `docker build`.
    folders = {f"v{i}": variant(root, f"v{i}") for i in range(1, 6)}
    folders["crash"] = variant(root, "crash", crash=True)
    folders["bad-launch"] = variant(root, "bad-launch", bad_launch=True)
    images = {}
    for name in ["bad-launch"] + [f"v{i}" for i in range(1, 6)]:  # PLAIN ends running v5
        images[name] = deploy.update(folders[name], PLAIN, remote, **kw).image
    before_image = images["v5"]
    plain_compose = remote.get_bytes(layout.app_compose(PLAIN)).decode()

    def ours(name: str):
        if name == "restart":
            return lambda: monitor.restart(OURS, remote, ["web", "worker"]) is not None and "ok"
        opts = {"launch": True, "launch_attempts": 2} if name == "bad-launch" else {}
        opts.update({"start_timeout": 60} if name == "crash" else {})

        def run():
            try:
                deploy.update(folders[name], OURS, remote, **kw, **opts)
                return "ok"
            except deploy.DeployFailed as exc:
                return f"failed at {exc.failed_step}, rolled back"
        return run

    def plain_up(image: str, command_crash: bool = False) -> None:
        text = plain_compose.replace(before_image, image)
        if command_crash:
            text = text.replace("- exec gunicorn ", "- exit 3; exec gunicorn ", 1)
        remote.put_bytes(layout.app_compose(PLAIN), text, mode=0o644)
        compose.run_app(remote, PLAIN, ["up", "-d"], timeout=300)

    def plain(name: str):
        def run():
            if name == "restart":
                compose.run_app(remote, PLAIN, ["restart", "web", "worker"], timeout=300)
            elif name == "crash":  # up, see it crash, put the previous version back by hand
                plain_up(before_image, command_crash=True)
                time.sleep(5)
                plain_up(before_image)
            elif name == "bad-launch":  # up, POST /launch answers 500, put the previous back
                plain_up(images["bad-launch"])
                time.sleep(3)
                plain_up(before_image)
            else:
                plain_up(images[name])
            time.sleep(2)  # the new web process starts answering meanwhile
            return "done"
        return run

    operations = [f"v{i}" for i in range(1, 6)] + ["crash", "bad-launch", "restart"]
    rows = []
    for side, app, make in (("labdeploy", OURS, ours), ("plain", PLAIN, plain)):
        with Participants(base, app, n=args.participants, think=1.0) as load:
            time.sleep(8)
            rest = load.window(load.t0 + 3, time.monotonic())
            for name in operations:
                t0 = time.monotonic()
                outcome = make(name)()
                t1 = time.monotonic()
                w = load.window(t0, t1 + 1)
                rows.append((side, name, outcome, w, rest, t1 - t0))
                time.sleep(2)
        if side == "plain":
            remote.put_bytes(layout.app_compose(PLAIN), plain_compose, mode=0o644)

    print(f"\n{args.participants} simulated participants through Caddy; at rest (labdeploy's app): "
          f"{rows[0][4].describe()}")
    print(f"{'operation':<12} {'side':<10} {'seconds':>7} {'requests':>8} {'failed':>6} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'p95/rest':>8}  outcome")
    for side, name, outcome, w, rest, secs in sorted(rows, key=lambda r: (operations.index(r[1]), r[0])):
        print(f"{name:<12} {side:<10} {secs:7.1f} {len(w.hits):8d} {len(w.failed):6d} {w.quantile(0.5) * 1000:7.0f} "
              f"{w.quantile(0.95) * 1000:7.0f} {p95_ratio(w, rest):8.2f}  {outcome}")
    total = {side: sum(len(r[3].failed) for r in rows if r[0] == side) for side in ("labdeploy", "plain")}
    print(f"\nfailed participant requests over all operations: labdeploy {total['labdeploy']}, "
          f"plain {total['plain']}")
    for app in (OURS, PLAIN):
        apps.destroy(app, remote, confirm=True, remove_data=True, export_check=False, remove_backups=True,
                     force=True)
    remote.close()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
