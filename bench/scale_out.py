"""One experiment on 1 Swarm node vs 3, then one node lost mid-run (the testbed's cluster).

examples/stroop is deployed on the testbed's three-node Swarm (engine="swarm") with every
process replica capped at CPU_CAP CPUs by Swarm's resource limits (deploy.resources.limits,
from deploy(..., cpu_limit=...)). All nodes share this machine's 2 cores, so the cap is what
makes "one node" and "three nodes" comparable: one web replica on one node holds CPU_CAP; three
replicas, one per node (Swarm's spread), hold 3 x CPU_CAP. Caddy (the ingress, on the manager)
and the load generator are not capped and run on the same 2 cores: the cap is kept low enough
(0.25 CPU) that they are not what limits the 3-node figure.

Simulated participants (labdeploy.rehearsal.load, bounded: PARTICIPANTS at once, SECONDS per
phase, each asking the experiment's start page with no think time) go through the ingress:
requests/s and p95 latency for 1 web replica, then 3. Then, with 3 replicas under the same load,
one worker node's Docker engine is stopped by its pid (the testbed's pidfile) after STOP_AT s:
the requests that failed are counted, and the time until Swarm runs 3 web replicas again (on
the nodes left) is measured. The node is started again (the testbed's own function) and the app
removed whatever happens.

Run (as root, the testbed up): .venv/bin/python bench/scale_out.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
from importlib.machinery import SourceFileLoader
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from labdeploy.app import deploy, swarm  # noqa: E402
from labdeploy.images import registry  # noqa: E402
from labdeploy.images.registry import Credentials  # noqa: E402
from labdeploy.rehearsal import load  # noqa: E402
from labdeploy.remote import Remote  # noqa: E402
from labdeploy.server import stack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TESTBED = Path(os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json"))
APP = "swm-bench"
CPU_CAP = float(os.environ.get("SCALE_OUT_CPU_CAP", "0.25"))  # lower on an idle machine to show the scaling
PARTICIPANTS = 24
SECONDS = 40
FAULT_SECONDS = 120
STOP_AT = 15
FLOW = [{"method": "GET", "path": "/"}]


def testbed_script():
    path = ROOT / "scripts" / "testbed"
    spec = importlib.util.spec_from_loader("testbed_script", SourceFileLoader("testbed_script", str(path)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def manager_of(tb: dict) -> Remote:
    s = tb["swarm"]["ssh"]
    known = Path(tempfile.mkdtemp(prefix="scale-out-")) / "known_hosts"
    known.write_text(s["known_hosts_line"] + "\n")
    r = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=str(known), use_agent=False)
    r.connect()
    return r


def web_running(manager) -> list:
    df = swarm.status(manager, APP)
    return sorted(df[(df.service == "web") & df.state.str.startswith("Running")].node)


def scale_web(manager, replicas: int, timeout: float = 180) -> list:
    manager.run(["docker", "service", "scale", "--detach", f"{APP}_web={replicas}"], timeout=60)
    deadline = time.monotonic() + timeout
    while len(web_running(manager)) != replicas:
        if time.monotonic() > deadline:
            raise RuntimeError(f"web did not reach {replicas} replicas")
        time.sleep(2)
    time.sleep(5)  # Caddy's name lookup (refresh 2 s) sees every replica
    return web_running(manager)


def measure(target: load.Target, seconds: float, during=None) -> dict:
    run = load.LoadRun(target, load.Flow(tuple(FLOW), think=0.0), [PARTICIPANTS], seconds, timeout=20)
    with run:
        extra = during(run) if during else {}
        run.join(seconds + 60)
    hits = run.hits
    ok = hits[hits.ok]
    return {"requests": len(hits), "failed": int((~hits.ok).sum()), "req_per_s": round(len(ok) / seconds, 1),
            "p50_ms": round(1000 * ok.seconds.quantile(0.5), 1), "p95_ms": round(1000 * ok.seconds.quantile(0.95), 1),
            **extra}


def lose_a_node(manager, script, name: str):
    """During the run: stop `name`'s engine at STOP_AT s, then time until 3 web replicas run again."""
    def during(run) -> dict:
        time.sleep(STOP_AT)
        pid = script.read_pid(f"swarm-{name}")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        down = back = None
        while time.monotonic() - t0 < FAULT_SECONDS - STOP_AT - 5:
            nodes = dict(line.split()[:2] for line in manager.run(
                ["docker", "node", "ls", "--format", "{{.Hostname}} {{.Status}}"]).stdout.splitlines())
            if down is None and nodes.get(name) == "Down":
                down = time.monotonic() - t0
            running = web_running(manager)
            if down is not None and len(running) == 3 and name not in running:
                back = time.monotonic() - t0
                break
            time.sleep(1)
        return {"stopped": name, "node_down_after_s": down and round(down, 1),
                "replicas_back_after_s": back and round(back, 1)}
    return during


def main() -> int:
    tb = json.loads(TESTBED.read_text())
    sw, images, reg = tb["swarm"], tb["images"], tb["registry"]
    script, manager = testbed_script(), manager_of(tb)
    creds = Credentials(reg["address"], reg["user"], reg["password"])
    registry.login_local(creds)
    swarm.prepare(manager, stack.StackSettings.for_images(images, domain="localhost"))
    target = load.Target(sw["http"]["host"], sw["http"]["port"], f"{APP}.localhost")
    lost = sw["nodes"][-1]["name"]
    results = {}
    try:
        deploy.deploy(ROOT / "examples" / "stroop", APP, manager, engine="swarm", mode="registry", credentials=creds,
                      base_name=f"{reg['address']}/swm", build_args={"BASE_IMAGE": images["python"]},
                      redis_image=images["redis"], health_path="/health", cpu_limit=CPU_CAP,
                      config={"num_dynos_web": "1"})
        for replicas in (1, 3):
            nodes = scale_web(manager, replicas)
            results[f"{replicas} node(s)"] = {"web_on": nodes, **measure(target, SECONDS)}
            print(replicas, results[f"{replicas} node(s)"], flush=True)
        results["3 nodes, one lost"] = measure(target, FAULT_SECONDS, lose_a_node(manager, script, lost))
        print(results["3 nodes, one lost"], flush=True)
    finally:
        node = next(n for n in script.SWARM_NODES if n["name"] == lost)
        script.ensure_swarm_dockerd(node)
        try:
            swarm.destroy(APP, manager, confirm=True, remove_data=True)
        except deploy.UnknownApp:
            pass
        registry.forget_session()
    print(f"\nCPU cap per replica: {CPU_CAP} CPU; {PARTICIPANTS} participants, no think time, GET /")
    for name, r in results.items():
        print(f"{name:20} {json.dumps(r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
