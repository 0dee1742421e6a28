"""The testbed itself: its info file, `status`, and an idempotent `up`."""

from __future__ import annotations

import os
import socket
import stat
import subprocess

import pytest

from conftest import REPO, SWARM, TESTBED_FILE

TESTBED = REPO / "scripts" / "testbed"


def test_info_file_has_what_tests_need(testbed):
    s = testbed["ssh"]
    for key in ("host", "port", "user", "key", "password", "host_key", "host_key_fingerprint", "known_hosts_line",
                "user_nodocker", "user_bare"):
        assert s.get(key), key
    assert isinstance(s["port"], int)
    assert os.path.exists(s["key"])
    assert s["host_key_fingerprint"].startswith("SHA256:")
    assert s["known_hosts_line"].split()[1:] == s["host_key"].split()[:2]
    reg = testbed["registry"]
    for key in ("address", "user", "password", "ca_cert"):
        assert reg.get(key), key
    assert os.path.exists(reg["ca_cert"])
    assert testbed["http"]["host"] and testbed["http"]["port"]
    assert set(testbed["images"]) >= {"base", "python", "postgres", "redis", "caddy", "pgbouncer"}
    assert testbed["docker"]["server"].startswith("unix://")
    # It holds passwords: only its owner reads it.
    assert stat.S_IMODE(TESTBED_FILE.stat().st_mode) == 0o600


def test_fingerprint_in_info_file_is_the_servers(testbed):
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", "/dev/stdin"], input=testbed["ssh"]["host_key"] + "\n",
                         capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == testbed["ssh"]["host_key_fingerprint"]
    with socket.create_connection((testbed["ssh"]["host"], testbed["ssh"]["port"]), timeout=10) as sock:
        assert sock.recv(4) == b"SSH-"


# In the Swarm's scope (conftest's scheduler): the Swarm tests stop a node on purpose, which
# status reports as DOWN; at the same time as them, this would fail for no fault of the testbed.
@pytest.mark.parametrize("scope", [SWARM])
def test_status_exits_zero(scope):
    res = subprocess.run([str(TESTBED), "status"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "DOWN" not in res.stdout


def test_the_pgbouncer_image_runs_as_a_user_with_pgbouncer_on_its_path(testbed):
    # What labdeploy.pooler expects of any PgBouncer image, in both engines.
    for engine in (testbed["docker"]["local"], testbed["docker"]["server"]):
        res = subprocess.run(["docker", "-H", engine, "run", "--rm", "--entrypoint", "sh",
                              testbed["images"]["pgbouncer"], "-c",
                              "id -u; command -v pgbouncer >/dev/null && pgbouncer --version"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        uid, version = res.stdout.splitlines()[:2]
        assert uid != "0" and version.startswith("PgBouncer 1."), res.stdout


@pytest.mark.servers("bookworm")  # `up` checks the whole testbed: once is enough
def test_second_up_only_checks(testbed):
    res = subprocess.run([str(TESTBED), "up"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = (res.stdout + res.stderr).lower().splitlines()
    busy = [line for line in lines if any(word in line for word in ("building", "starting", "installing"))]
    assert not busy, busy
    assert any("ready" in line for line in lines)
