"""The app's web process, asked over HTTP through the SSH connection: its address on the
shared network, whether it answers, `POST /launch`, its health path.

Going through the SSH connection (a forwarded port to the container's address) works before
any DNS record exists and whatever the server's firewall does, so a deploy can check and
launch an app the moment it starts.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from typing import Sequence

from ..errors import LabdeployError
from ..progress import LogLine, Reporter
from ..server import layout
from ..server import webcheck
from ..server.webcheck import request
from . import settle

STOPPED_AT_START = "The app's processes stopped right after starting: {}."
STOPPED_AT_START_HINT = ("Read the container logs below: usually the real error is at their end. "
                         "Try the image locally (`docker run IMAGE`) to reproduce it.")


class _QuietRefusals(logging.Filter):
    """Waiting for the web process means connecting before it listens; paramiko logs each
    refused tunnel channel at ERROR, which Python prints on stderr (red noise in a notebook).
    Those refusals are expected here and handled, so they are not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED" not in record.getMessage()


logging.getLogger("paramiko.transport").addFilter(_QuietRefusals())


def stopped_at_start(bad: Sequence[str]) -> LabdeployError:
    return LabdeployError(STOPPED_AT_START.format(", ".join(bad)), STOPPED_AT_START_HINT, code="app.crashed")


def web_address(remote, app: str, image: str, processes: Sequence[str], seen: list, *,
                check_forwarding: bool = True) -> str:
    """The web container's address on the shared network. The snapshot read for it is
    appended to `seen` (with its time) for the wait that follows (settle.wait_started)."""
    containers = settle.snapshot(remote, app)
    seen.append((containers, time.monotonic()))
    web = containers.get("web")
    if not web or not web["ip"]:
        # A web process that died at once has no address yet: say that, not a network riddle.
        bad = settle.crashed(containers, image, processes)
        if bad:
            raise stopped_at_start(bad)
        raise LabdeployError("The web container is not running on the shared network.",
                             "Read the logs below; `docker compose ps` in ~/dallinger/<app> shows its state.",
                             code="app.web_not_running")
    if check_forwarding:
        _check_forwarding(remote, web["ip"])
    return web["ip"]


def _check_forwarding(remote, ip: str) -> None:
    """Fail at once, and say why, when the server's sshd forbids port forwarding (health and
    /launch would otherwise time out with no explanation). A refused port is fine here."""
    import paramiko

    try:
        chan = remote.open_tcp_channel(ip, layout.WEB_PORT, timeout=remote.connect_timeout)
        chan.close()
        return
    except paramiko.SSHException as exc:
        # Only a refusal by sshd's policy is an answer here; a timeout or a refused port means
        # the process is not up (yet), which the wait for the web process judges.
        if not (isinstance(exc, paramiko.ChannelException) and exc.code == 1):  # ADMINISTRATIVELY_PROHIBITED
            return
        raise LabdeployError(
            "The server's SSH service does not allow port forwarding, which labdeploy uses to check "
            "and launch the app before DNS is set up.",
            "Ask the administrator to set `AllowTcpForwarding local` (or yes) in /etc/ssh/sshd_config "
            "and reload sshd.", code="ssh.forwarding_prohibited") from exc


def wait_answering(remote, app: str, image: str, processes: Sequence[str], port: int, host: str, path: str,
                   timeout: float) -> int:
    """Until the web process answers HTTP at all (any status): it is up; returns the status
    `path` answered. A process that exits or restarts meanwhile fails at once instead of
    after the timeout."""
    def alive() -> None:
        bad = settle.crashed(settle.snapshot(remote, app), image, processes)
        if bad:
            raise stopped_at_start(bad)

    return webcheck.wait_answering(port, host, path, timeout, alive)


def launch(port: int, host: str, attempts: int, reporter: Reporter) -> dict:
    """POST /launch with retries and backoff; the answer must be JSON with status success."""
    delay, last = 1.0, ""
    for attempt in range(1, attempts + 1):
        try:
            status, body = request(port, "POST", "/launch", host, timeout=120)
            try:
                data = json.loads(body)
            except ValueError:
                data = {}
            if status < 300 and data.get("status") == "success":
                reporter(LogLine(f"/launch: {body.strip()[:300]}", "launch"))
                return data
            last = f"HTTP {status}: {body.strip()[:800]}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"no answer ({exc})"
        reporter(LogLine(f"/launch attempt {attempt} failed: {last}", "launch"))
        if attempt < attempts:
            time.sleep(delay)
            delay *= 2
    raise LabdeployError(f"POST /launch did not succeed after {attempts} attempts; last answer: {last}",
                         "The experiment's launch code failed: read the web log below for its traceback.",
                         code="app.launch_failed")
