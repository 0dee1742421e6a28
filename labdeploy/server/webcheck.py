"""One HTTP request to an app's web process through a port forwarded over the SSH connection,
and the wait until its health path answers. Used by deploy's checks and by the web switch."""

from __future__ import annotations

import http.client
import time
from typing import Callable

from ..errors import LabdeployError
from .layout import WEB_PORT


def request(port: int, method: str, path: str, host: str, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of one request to the forwarded `port`, sent with `Host: host`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None,
                     headers={"Host": host, "Content-Type": "application/json", "User-Agent": "labdeploy"})
        resp = conn.getresponse()
        return resp.status, resp.read(20000).decode("utf-8", "replace")
    finally:
        conn.close()


def wait_answering(port: int, host: str, path: str, timeout: float, alive: Callable[[], None]) -> int:
    """Until the web process answers HTTP at all (any status): it is up; returns the status
    `path` answered. `alive()`, asked every 2 s, raises when the process has stopped, so that
    fails at once instead of after the timeout."""
    deadline = time.monotonic() + timeout
    checked = time.monotonic()  # the caller has just read the containers' state
    while True:
        try:
            return request(port, "GET", path, host, timeout=10)[0]
        except (OSError, http.client.HTTPException):
            pass
        now = time.monotonic()
        if now - checked > 2:
            checked = now
            alive()
        if now > deadline:
            raise LabdeployError(f"The web process did not answer on port {WEB_PORT} within {timeout:.0f} s.",
                                 "Check that the app listens on $HOST:$PORT (0.0.0.0:5000); see the logs below.",
                                 code="app.web_not_answering")
        time.sleep(0.1)  # a refused attempt costs one channel open: poll often


def healthy(port: int, host: str, path: str, timeout: float) -> None:
    """Until `path` answers below 500; raises with the last answer after `timeout` seconds."""
    deadline, last = time.monotonic() + timeout, ""
    while True:
        try:
            status, body = request(port, "GET", path, host, timeout=10)
            if status < 500:
                return
            last = f"HTTP {status}: {body.strip()[:300]}"
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise LabdeployError(f"The app is not healthy: GET {path} answered {last}.", "Read the web log below.",
                                 code="app.unhealthy")
        time.sleep(0.5)
