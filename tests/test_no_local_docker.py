"""A researcher's computer without Docker: the whole journey works in server-build mode.

The journey runs in a child process (tests/nodocker_child.py) under `unshare --mount`, where
this computer's Docker is really gone: each socket of the local engine has an empty file
bind-mounted over it (in the child's mount namespace only; the testbed keeps its engine),
PATH is a folder of links to every program except `docker*`, DOCKER_HOST is unset and HOME
is new (no ~/.docker). The child proves all that before it starts, then drives the
`labdeploy` command: register the server (host key by fingerprint), check it, deploy
examples/stroop in server-build mode, update it after a one-line change, status, logs,
connections (pg_activity) and stats, export, backup, and destroy with a final export. The
ssh-copy and registry modes are refused with the same clear error on the command line, in
the API and in the deploy panel, and leave the server as it was (no lock, no app folder).

Everything about the server comes from the `testbed` fixture's dict, so the same test runs
against another testbed server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_support import EXAMPLE, destroy_if_deployed

pytestmark = pytest.mark.testbed

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "nodocker_child.py"
APP = "nod-journey"
REFUSED = "nod-refused"  # never deployed: the refused modes must not leave a trace of it


def _engine_sockets(testbed: dict) -> tuple[list[str], list[str]]:
    """The paths this computer's engine answers on (the default ones and the testbed's local
    one), as named and as mounted (their real paths: /var/run is usually a link to /run)."""
    named = [p for p in dict.fromkeys(("/var/run/docker.sock", "/run/docker.sock",
                                       testbed.get("docker", {}).get("local", "").removeprefix("unix://")))
             if p and os.path.exists(p)]
    return list(dict.fromkeys(os.path.realpath(p) for p in named)), named


def _path_without_docker(folder: Path) -> str:
    """A PATH of one folder: links to every program on this PATH but those named docker*."""
    folder.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for entry in sorted(os.listdir(d)):
            target = os.path.join(d, entry)
            if entry.startswith("docker") or (folder / entry).exists() or not os.access(target, os.X_OK):
                continue
            (folder / entry).symlink_to(target)
    return str(folder)


def _child_env(home: Path, path: str) -> dict:
    keep = ("LANG", "LC_ALL", "TZ")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({"HOME": str(home), "PATH": path, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "TERM": "dumb",
                "COLUMNS": "200"})
    return env  # no DOCKER_HOST, DOCKER_CONFIG, DOCKER_CONTEXT, SSH_AUTH_SOCK


def test_the_journey_needs_no_docker_on_this_computer(testbed, remote, tmp_path):
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    assert unshare and mount, "this test needs util-linux's unshare and mount"
    sockets, socket_names = _engine_sockets(testbed)
    assert sockets, "no local Docker socket found: nothing to hide, the test would prove nothing"
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "work").mkdir()
    empty = tmp_path / "not-a-socket"
    empty.write_bytes(b"")
    plan = {"sockets": sockets, "socket_names": socket_names, "mount": mount, "empty_file": str(empty), "work": str(tmp_path / "work"),
            "example": str(EXAMPLE), "app": APP, "refused_app": REFUSED, "ssh": testbed["ssh"],
            "images": testbed["images"], "http": testbed["http"],
            # only named in the image name the refused registry mode gets; never contacted
            "registry": testbed.get("registry", {}).get("address", "registry.invalid:5000")}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    plan_file.chmod(0o600)  # the testbed's details (its account password among them)
    destroy_if_deployed(remote, APP)
    try:
        proc = subprocess.run([unshare, "--mount", "--propagation", "private", "--", sys.executable, str(CHILD),
                               str(plan_file)], env=_child_env(home, _path_without_docker(tmp_path / "bin")),
                              capture_output=True, text=True, timeout=2400, cwd=str(home))
    finally:
        destroy_if_deployed(remote, APP)
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-8000:]}"
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(found, indent=1))
    # Docker was really gone in the child...
    assert set(found["socket_errors"]) == set(sockets) | set(socket_names)
    assert found["probe"].startswith("no local Docker: server-build mode only")
    # ...and every step of the journey ran there.
    assert len(set(found["versions"])) == 2 and found["exported"]["participants"] == 1
    assert "--mode server-build" in found["refused_hint"] and "Transfer mode" in found["panel_message"]
    assert "app folder" in found["destroyed"]["removed"]
    # The hiding stayed in the child: this computer's engine still answers here.
    from labdeploy.images import localdocker

    assert localdocker.probe().engine
