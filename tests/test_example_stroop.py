"""The example experiment on its own: built with the local Docker engine and run against real
PostgreSQL and Redis containers (the testbed's images), the way Dallinger would run it."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, timeout=300).stdout.strip()


@pytest.fixture(scope="module")
def running_example(testbed):
    tag = f"t-dep-example:{uuid.uuid4().hex[:8]}"
    docker("build", "-q", "--build-arg", f"BASE_IMAGE={testbed['images']['python']}", "-t", tag, str(EXAMPLE))
    net = f"t-dep-ex-{uuid.uuid4().hex[:8]}"
    docker("network", "create", net)
    names = []

    def run(name: str, *args: str) -> str:
        full = f"{net}-{name}"
        names.append(full)
        docker("run", "-d", "--name", full, "--network", net, "--network-alias", name, *args)
        return full

    try:
        run("postgresql", "-e", "POSTGRES_USER=dallinger", "-e", "POSTGRES_PASSWORD=pw", testbed["images"]["postgres"])
        run("redis", testbed["images"]["redis"])
        env = ["-e", "DATABASE_URL=postgresql://dallinger:pw@postgresql:5432/dallinger",
               "-e", "REDIS_URL=redis://redis:6379/0", "-e", "dashboard_password=sesame",
               "-e", "CLOCK_INTERVAL=1"]
        web = run("web", *env, tag)
        run("worker", *env, tag, "python", "-m", "stroop.worker")
        run("clock", *env, tag, "python", "-m", "stroop.clock")
        ip = docker("inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}", web)
        base = f"http://{ip}:5000"
        deadline = time.monotonic() + 60
        while True:  # PostgreSQL's first start (initdb) takes a few seconds
            try:
                if requests.get(base + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the example never became healthy:\n" + docker("logs", web, check=False))
            time.sleep(0.5)
        yield base
    finally:
        for name in names:
            docker("rm", "-f", "-v", name, check=False)
        docker("network", "rm", net, check=False)
        docker("rmi", tag, check=False)


def test_launch_then_a_participant_completes_the_task(running_example, testbed):
    base = running_example
    assert requests.post(base + "/launch", timeout=10).json()["status"] == "success"
    # launching twice is harmless (a rerun of a failed deploy launches again)
    assert requests.post(base + "/launch", timeout=10).json()["status"] == "success"

    page = requests.get(base + "/", timeout=5)
    assert page.status_code == 200 and "Colour naming study" in page.text
    assert requests.get(base + "/static/stroop.js", timeout=5).status_code == 200

    p = requests.post(base + "/api/participants", json={"worker_id": "w1"}, timeout=5).json()
    assert len(p["trials"]) == 8
    for t in p["trials"]:
        r = requests.post(f"{base}/api/participants/{p['id']}/responses",
                          json={**t, "answer": t["ink"], "rt_ms": 512.5}, timeout=5)
        assert r.json()["correct"] is True
    done = requests.post(f"{base}/api/participants/{p['id']}/finish", timeout=5).json()
    assert done["accuracy"] == 1.0

    # The dashboard needs the password; with it, the counts show.
    assert requests.get(base + "/dashboard", timeout=5).status_code == 401
    dash = requests.get(base + "/dashboard", auth=("admin", "sesame"), timeout=5)
    assert dash.status_code == 200 and 'id="count-responses">8<' in dash.text


def test_worker_scores_and_clock_ticks(running_example):
    base = running_example
    requests.post(base + "/launch", timeout=10)
    p = requests.post(base + "/api/participants", json={}, timeout=5).json()
    for t in p["trials"][:2]:
        requests.post(f"{base}/api/participants/{p['id']}/responses",
                      json={**t, "answer": "nonsense", "rt_ms": 700}, timeout=5)
    requests.post(f"{base}/api/participants/{p['id']}/finish", timeout=5)
    deadline = time.monotonic() + 30
    counts = {}
    while time.monotonic() < deadline:
        dash = requests.get(base + "/dashboard", auth=("admin", "sesame"), timeout=5).text
        counts = {k: int(dash.split(f'id="count-{k}">')[1].split("<")[0]) for k in ("scored", "ticks")}
        # web -> Redis -> worker scored the participant; clock -> Redis -> worker ran a tick
        if counts["scored"] >= 1 and counts["ticks"] >= 1:
            break
        time.sleep(0.5)
    assert counts["scored"] >= 1 and counts["ticks"] >= 1, counts


def test_bad_response_is_refused_with_400(running_example):
    r = requests.post(running_example + "/api/participants/1/responses", json={"trial": "x"}, timeout=5)
    assert r.status_code == 400
