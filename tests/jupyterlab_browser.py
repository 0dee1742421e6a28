"""A real JupyterLab driven by a real headless Chromium (Debian's), for the browser tests.

Never lets Playwright download a browser: it uses /usr/bin/chromium.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_lab_settings(home: Path) -> None:
    """No news or update pop-ups over the notebook in a fresh profile; every cell rendered."""
    settings = home / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # Render every cell, not only those on screen, so panels can be found and scrolled to.
    tracker = home / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True, exist_ok=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))


@contextmanager
def jupyterlab(root_dir: Path, home: Path, env: Optional[dict] = None, log_path: Optional[Path] = None) -> Iterator[str]:
    """Start JupyterLab on a free localhost port; yields its base URL with the token."""
    port = free_port()
    token = secrets.token_hex(16)
    quiet_lab_settings(home)
    run_env = dict(os.environ, HOME=str(home), JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
                   JUPYTER_RUNTIME_DIR=str(home / ".jupyter-runtime"), **(env or {}))
    run_env.pop("JUPYTER_PLATFORM_DIRS", None)
    log = open(log_path or (home / "jupyterlab.log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root_dir}", "--ServerApp.password=",
         "--allow-root", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited early; see {log.name}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"JupyterLab did not start within 90 s; see {log.name}")
        yield f"http://127.0.0.1:{port}/lab?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def chromium(artifacts: Path, viewport=(1400, 1000)):
    """A headless Debian Chromium page via Playwright."""
    from playwright.sync_api import sync_playwright

    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        page = context.new_page()
        try:
            yield page
        finally:
            context.close()
            browser.close()


class Lab:
    """Small verbs for driving a notebook in JupyterLab as a person would."""

    def __init__(self, page, base_url: str, artifacts: Path) -> None:
        self.page = page
        self.base_url = base_url
        self.artifacts = artifacts
        self.shots = 0

    def open_notebook(self, path: str) -> None:
        root, query = self.base_url.split("?", 1)
        self.page.goto(f"{root}/tree/{path}?{query}")
        self.page.wait_for_selector(".jp-Notebook", timeout=60_000)
        self.wait_kernel_idle(60)

    def kernel_status(self) -> str:
        """'idle', 'busy', 'connecting', ... from the status bar ('Python 3 (ipykernel) | Idle')."""
        el = self.page.query_selector(".jp-StatusBar-TextItem:has-text('ipykernel')")
        if el is None:
            return "unknown"
        text = el.inner_text()
        return text.rsplit("|", 1)[-1].strip().lower() if "|" in text else "unknown"

    def wait_kernel_idle(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        seen_idle = 0
        while time.time() < deadline:
            if self.kernel_status() == "idle":
                seen_idle += 1
                if seen_idle >= 4:
                    return
            else:
                seen_idle = 0
            time.sleep(0.25)
        raise AssertionError(f"the kernel did not become idle within {timeout:.0f} s "
                             f"(status {self.kernel_status()})")

    def menu(self, top: str, item: str) -> None:
        """Click a menu bar entry, then one of its items, as a person would."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(top)}$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}")).first.click()

    def run_all(self, timeout: float = 600) -> None:
        self.menu("Run", "Run All Cells")
        time.sleep(1)
        self.wait_kernel_idle(timeout)

    def restart_and_run_all(self, timeout: float = 600) -> None:
        self.menu("Kernel", "Restart Kernel and Run All Cells")
        self.page.wait_for_selector(".jp-Dialog", timeout=10_000)
        self.page.locator(".jp-Dialog button.jp-mod-accept").click()
        time.sleep(2)
        self.wait_kernel_idle(timeout)

    def save(self) -> None:
        self.page.keyboard.press("Control+s")
        time.sleep(1.5)

    def screenshot(self, name: str) -> Path:
        self.shots += 1
        path = self.artifacts / f"{self.shots:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path

    def cell_errors(self) -> list[str]:
        return [e.inner_text() for e in self.page.query_selector_all(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] , .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")]
