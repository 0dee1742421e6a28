"""Bounded logs on the testbed: the shared stack's containers rotate their logs, and a noisy app
that writes 10x its log limit keeps its log files within max-size x max-file, while logs()
still reads lines from the rotated file."""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import on_server_filesystem
from deploy_support import prepare_local_stack
from labdeploy.app import appcompose
from labdeploy.server import compose, layout, logrotation
from labdeploy.watch import containers

APP = "t-lg-noisy"
LIMIT = "100k"
FILES = 2
LINES = 2000  # ~1 KB each: ~2 MB, 10x the 200 KB the app may keep

NOISY = """i=0
pad=$(printf '%01000d' 0)
while [ $i -lt 2000 ]; do echo "noisy $i $pad"; i=$((i+1)); done
echo "noisy done"
exec sleep 100000
"""


def _log_sizes(testbed, remote, container: str) -> dict:
    path = remote.run(["docker", "inspect", "-f", "{{.LogPath}}", container]).stdout.strip()
    out = subprocess.run(on_server_filesystem(testbed, ["sh", "-c", 'stat -c "%n %s" "$1"*', "-", path]),
                         capture_output=True, text=True, check=True).stdout
    return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines()}


def _remove(remote) -> None:
    remote.run(["sh", "-c", 'ids=$(docker ps -aq --filter "label=labdeploy.app=$1"); [ -z "$ids" ] || '
                'docker rm -f $ids', "-", APP], check=False)
    remote.run(["rm", "-rf", "--", layout.app_dir(APP), layout.app_data(APP)], check=False)


@pytest.fixture
def noisy(testbed, remote):
    _remove(remote)
    remote.makedirs(layout.app_dir(APP), 0o755)
    remote.makedirs(layout.app_data(APP), 0o755)
    remote.put_bytes(f"{layout.app_data(APP)}/noisy.sh", NOISY.encode(), mode=0o644)
    remote.put_bytes(layout.app_secrets(APP), b"", mode=0o600)
    doc = appcompose.app_compose_document(
        APP, testbed["images"]["python"], version="1", redis_image=testbed["images"]["redis"],
        commands={"web": "sh /data/noisy.sh", "worker": "sleep 100000", "clock": "sleep 100000"},
        processes=("web", "worker"), logging=logrotation.options(LIMIT, FILES))
    remote.put_bytes(layout.app_compose(APP), appcompose.app_compose_yaml(doc).encode(), mode=0o644)
    compose.run_app(remote, APP, ["up", "-d"])
    yield remote
    _remove(remote)


def test_the_stack_rotates_its_logs(testbed, remote):
    prepare_local_stack(remote, testbed)
    seen = remote.run(["docker", "inspect", "-f", "{{.Name}} {{json .HostConfig.LogConfig}}",
                       layout.POSTGRES_CONTAINER, layout.CADDY_CONTAINER, layout.BACKUP_CONTAINER]).stdout
    for line in seen.splitlines():
        assert '"Type":"json-file"' in line and '"max-file":"3"' in line and '"max-size":"10m"' in line, line


def test_a_noisy_app_keeps_its_log_files_bounded_and_logs_reads_the_rotated_ones(testbed, noisy):
    remote = noisy
    deadline = time.monotonic() + 180
    while True:
        df = containers.logs(APP, remote, "web", tail="all")
        if any(line == "noisy done" for line in df["line"]):
            break
        assert time.monotonic() < deadline, "the noisy app did not finish writing"
        time.sleep(2)
    web = remote.run(["docker", "ps", "-q", "--filter", f"label=labdeploy.app={APP}",
                      "--filter", "label=labdeploy.service=web"]).stdout.split()[0]
    sizes = _log_sizes(testbed, remote, web)
    limit = logrotation.size_bytes(LIMIT)
    assert 1 <= len(sizes) <= FILES, sizes
    assert all(size <= limit + 4096 for size in sizes.values()), sizes  # one line may cross the mark
    assert sum(sizes.values()) * 10 < LINES * 1000 * 1.05  # ~2 MB were written
    numbered = [int(line.split()[1]) for line in df["line"] if line.startswith("noisy ") and line != "noisy done"]
    # More lines than one file holds: logs() read the rotated file too, in order, up to the last.
    assert len(numbered) > limit // 1100 + 5 and numbered == sorted(numbered) and numbered[-1] == LINES - 1
