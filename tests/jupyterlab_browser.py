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

    @property
    def notebook(self):
        """The notebook in the current (visible) tab."""
        return self.page.locator(".jp-NotebookPanel:visible .jp-Notebook")

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
        deadline = time.time() + 10  # the run shows as a busy kernel or waiting cells first
        while self.kernel_status() == "idle" and time.time() < deadline and \
                self.notebook.locator(".jp-InputPrompt", has_text="[*]").count() == 0:
            time.sleep(0.1)
        self.wait_cells_done(timeout)

    def restart_and_run_all(self, timeout: float = 600) -> None:
        self.restart_and_run("Restart Kernel and Run All Cells", timeout)

    def restart_and_run(self, item: str, timeout: float = 600) -> None:
        """A Kernel menu "Restart Kernel and Run ..." item, confirmed in its dialog."""
        self.menu("Kernel", item)
        self.page.wait_for_selector(".jp-Dialog", timeout=10_000)
        self.page.locator(".jp-Dialog button.jp-mod-accept").click()
        self.page.locator(".jp-Dialog").wait_for(state="detached", timeout=10_000)
        deadline = time.time() + 15  # the restart shows as a non-idle kernel first
        while self.kernel_status() == "idle" and time.time() < deadline:
            time.sleep(0.1)
        self.wait_cells_done(timeout)

    def wait_cells_done(self, timeout: float = 600) -> None:
        """The kernel idle and no cell waiting or running ([*])."""
        deadline = time.time() + timeout
        while True:
            self.wait_kernel_idle(max(5.0, deadline - time.time()))
            if self.notebook.locator(".jp-InputPrompt", has_text="[*]").count() == 0:
                return
            if time.time() > deadline:
                raise AssertionError(f"cells still running after {timeout:.0f} s")

    def cell_index(self, text: str) -> int:
        """The index of the first cell whose source contains `text` (e.g. the panel's cell)."""
        cells = self.notebook.locator(".jp-Cell")
        for i in range(cells.count()):
            if text in cells.nth(i).locator(".jp-InputArea").inner_text():
                return i
        raise AssertionError(f"no cell contains {text!r}")

    def select_cell(self, index: int) -> None:
        """Click a cell's prompt (command mode, that cell selected)."""
        self.notebook.locator(".jp-Cell").nth(index).locator(".jp-InputPrompt").first.click()

    def switch_to(self, name: str) -> None:
        """Bring an open notebook's tab to the front."""
        self.page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=name).first.click()
        self.page.locator(".jp-NotebookPanel:visible").wait_for(timeout=10_000)

    def save(self, path: Optional[Path] = None, timeout: float = 20) -> None:
        """File > Save Notebook; with `path`, wait until that file on disk changed."""
        before = path.stat().st_mtime_ns if path is not None and path.exists() else None
        self.menu("File", "Save Notebook")
        if path is None:
            time.sleep(1.5)
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            if path.exists() and path.stat().st_mtime_ns != before:
                return
            time.sleep(0.2)
        raise AssertionError(f"{path} was not saved within {timeout:.0f} s")

    def run_cells(self, count: int, first: int = 0) -> None:
        """Click cell `first` and press Shift+Enter `count` times, as a person steps through cells."""
        cell = self.notebook.locator(".jp-Cell").nth(first)
        cell.locator(".jp-InputPrompt").first.click()
        for _ in range(count):
            self.page.keyboard.press("Shift+Enter")
            time.sleep(0.2)

    def hide_sidebar(self) -> None:
        """Close the file browser so the notebook gets the width (click its active sidebar tab)."""
        current = self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
        if current.count():
            current.first.click()
            self.page.locator("#jp-left-stack").wait_for(state="hidden", timeout=10_000)

    # --- ipywidgets panels (labdeploy's conventions: CSS classes on buttons, descriptions on fields)

    def panel(self, title: str):
        """The `.labdeploy-panel` whose heading is `title`."""
        return self.notebook.locator(".labdeploy-panel", has=self.page.locator("h3", has_text=title)).first

    def field(self, panel, description: str):
        """The input of the text/password field whose label is `description`."""
        row = panel.locator(".widget-inline-hbox", has=self.page.locator(
            "label.widget-label", has_text=re.compile(f"^{re.escape(description)}$")))
        return row.locator("input, textarea").first

    def fill(self, panel, description: str, value: str) -> None:
        box = self.field(panel, description)
        box.click()
        box.fill("")
        box.press_sequentially(value, delay=5)
        box.blur()  # done typing (ipywidgets also syncs on change/blur)

    def step_state(self, panel, step: str) -> str:
        el = panel.locator(f".labdeploy-step[data-step='{step}']").first
        return el.get_attribute("data-state") or ""

    def step_text(self, panel, step: str) -> str:
        return panel.locator(f".labdeploy-step[data-step='{step}']").first.inner_text()

    def wait_step(self, panel, step: str, states=("done",), timeout: float = 120) -> str:
        """Poll the step's data-state until it is one of `states`; a 'failed' step (unless
        expected) fails at once with the panel's message."""
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            state = self.step_state(panel, step)
            if state in states:
                return state
            if state == "failed":
                msg = panel.locator(".labdeploy-error, .labdeploy-warning").all_inner_texts()
                raise AssertionError(f"step {step!r} failed: {self.step_text(panel, step)}\n" + "\n".join(msg))
            time.sleep(0.25)
        raise AssertionError(f"step {step!r} stayed {state!r} for {timeout:.0f} s: {self.step_text(panel, step)}")

    def shot(self, locator, name: str) -> Path:
        """A screenshot of one element (a panel), whole: the viewport grows to fit it, then returns."""
        self.shots += 1
        path = self.artifacts / f"{self.shots:02d}-{name}.png"
        size = self.page.viewport_size
        box = locator.bounding_box()
        if box and box["height"] + 240 > size["height"]:
            self.page.set_viewport_size({"width": size["width"], "height": int(box["height"]) + 240})
            time.sleep(0.3)
        try:
            locator.scroll_into_view_if_needed()
            locator.screenshot(path=str(path))
        finally:
            if self.page.viewport_size != size:
                self.page.set_viewport_size(size)
        return path

    def screenshot_of(self, page, name: str) -> Path:
        """A screenshot of another page (a second tab)."""
        self.shots += 1
        path = self.artifacts / f"{self.shots:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def add_cell_at_end(self, code: str) -> None:
        """Select the last cell, add a code cell below it (b) and type `code` into it."""
        last = self.notebook.locator(".jp-Cell").last
        last.locator(".jp-InputPrompt").first.click()
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("b")
        cell = self.notebook.locator(".jp-Cell").last
        cell.locator(".cm-content").click()
        for i, line in enumerate(code.split("\n")):
            if i:
                self.page.keyboard.press("Enter")
                self.page.keyboard.press("Home")  # no auto-indent carried over
            self.page.keyboard.insert_text(line)

    def screenshot(self, name: str) -> Path:
        self.shots += 1
        path = self.artifacts / f"{self.shots:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path

    def cell_errors(self) -> list[str]:
        """Tracebacks and stderr shown in the current notebook's outputs."""
        return self.notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'], "
                                     ".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").all_inner_texts()


# --- layout checks from the elements' boxes (what a researcher sees, measured in the browser)

_LAYOUT_JS = """(panel) => {
  const shown = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0 &&
                          getComputedStyle(el).visibility !== 'hidden'; };
  const name = (el) => { const row = el.closest('.widget-inline-hbox');
                         const label = row && row.querySelector('label.widget-label');
                         return (label && label.textContent.trim()) || el.tagName + '.' + (el.className || ''); };
  const problems = [];
  for (const el of panel.querySelectorAll("input[type=text], input[type=password], input[type=number], select, textarea")) {
    if (!shown(el)) continue;
    const w = el.getBoundingClientRect().width;
    if (w < MIN - 0.5) problems.push(`input '${name(el)}' is ${w.toFixed(0)} px wide`);
  }
  const texts = [...panel.querySelectorAll("label.widget-label, button, .widget-html-content, .widget-label-basic")]
    .filter(el => shown(el) && el.textContent.trim());
  for (const el of texts) {
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== 'auto' && !el.closest('[style*="overflow-x:auto"]'))
      problems.push(`text cut: '${el.textContent.trim().slice(0, 60)}' (${el.scrollWidth} > ${el.clientWidth} px)`);
  }
  const boxes = [...panel.querySelectorAll("input, select, textarea, button, label.widget-label")]
    .filter(el => shown(el) && el.type !== 'checkbox');
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    if (a.contains(b) || b.contains(a)) continue;
    const p = a.getBoundingClientRect(), q = b.getBoundingClientRect();
    const x = Math.min(p.right, q.right) - Math.max(p.left, q.left), y = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
    if (x > 2 && y > 2) problems.push(`'${name(a)}' overlaps '${name(b)}'`);
  }
  const box = panel.getBoundingClientRect();
  for (const el of boxes) { const r = el.getBoundingClientRect();
    if (r.right > box.right + 1) problems.push(`'${name(el)}' sticks out of the panel (${r.right.toFixed(0)} > ${box.right.toFixed(0)})`); }
  return problems;
}"""


def layout_problems(locator, min_input: int = 240) -> list[str]:
    """Inputs narrower than `min_input` px, labels/buttons/text cut off, controls overlapping or
    sticking out of the panel (from bounding boxes, in the page as rendered)."""
    return locator.evaluate(_LAYOUT_JS.replace("MIN", str(min_input)))


def log_tail_shown(locator) -> dict:
    """For a `.labdeploy-log` pane: whether it overflows and whether its last line is in view
    (the pane follows the tail)."""
    return locator.evaluate("""(pane) => {
      const text = pane.querySelector('pre');
      const p = pane.getBoundingClientRect(), t = text.getBoundingClientRect();
      return {overflows: pane.scrollHeight > pane.clientHeight + 1, lines: text.textContent.split('\\n').length,
              tail_in_view: t.bottom <= p.bottom + 1 && t.bottom >= p.bottom - 24, scrollTop: pane.scrollTop};
    }""")


def show_sidebar(page) -> None:
    """Open the file browser again (JupyterLab's default), e.g. to check a panel at laptop width with it."""
    if page.locator("#jp-left-stack").is_visible():
        return
    page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab").first.click()
    page.locator("#jp-left-stack").wait_for(state="visible", timeout=10_000)
