"""The researcher's journey in a real JupyterLab and a real (Debian) Chromium, against the testbed.

Set up the server with the setup panel (type into fields, confirm the host key fingerprint, type
the password, wait for the steps, read the readiness table, prepare), deploy the example
experiment with the deploy panel, open it through the panel's SSH tunnel in a second tab and
answer a trial as a participant, export and see the answer in the DataFrame preview, destroy the
app with its data, then "Restart Kernel and Run All Cells" and check the panels still render and
work, and that no secret is in the saved notebooks.

Screenshots of every stage go to test-artifacts/browser/ (not committed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.jupyterlab_browser import Lab, chromium, jupyterlab, layout_problems, log_tail_shown, show_sidebar

# The journey's panels drive the same core calls that run on both servers in the API tests; to keep
# the suite's time it runs on one (the trixie server runs the PsyNet tests instead).
pytestmark = [pytest.mark.browser, pytest.mark.testbed, pytest.mark.servers("bookworm")]

APP = "t-web-journey"
SERVER_NAME = "journey"
ARTIFACTS = REPO / "test-artifacts" / "browser"
# A laptop (with JupyterLab's file browser open, its default) and a desktop screen.
SIZES = ((1280, 800), (1920, 1080))


def _check_layout(lab: Lab, panel, name: str, sidebar: bool = True) -> None:
    """At each window size: every input at least 240 px wide, no text cut off, nothing
    overlapping or sticking out (from the elements' boxes); a screenshot of each to look at."""
    page = lab.page
    before = page.viewport_size
    if sidebar:
        show_sidebar(page)
    try:
        for width, height in SIZES:
            page.set_viewport_size({"width": width, "height": height})
            time.sleep(0.5)  # Lumino lays the panels out again on resize
            problems = layout_problems(panel)
            lab.shot(panel, f"{name}-{width}x{height}")
            assert not problems, f"{name} at {width}x{height}: {problems}"
    finally:
        page.set_viewport_size(before)
        if sidebar:
            lab.hide_sidebar()


def _fits_across(lab: Lab, box, name: str) -> None:
    """At 1280x800 with the file browser open (a laptop), `box` does not scroll sideways: all of
    its content is in view (scrollWidth within clientWidth)."""
    page = lab.page
    before = page.viewport_size
    show_sidebar(page)
    try:
        page.set_viewport_size({"width": 1280, "height": 800})
        time.sleep(0.5)  # Lumino lays the panels out again on resize
        box.scroll_into_view_if_needed()
        sizes = box.evaluate("(e) => ({scroll: e.scrollWidth, client: e.clientWidth})")
        lab.shot(box, name)
        assert 0 < sizes["client"] and sizes["scroll"] <= sizes["client"], sizes
    finally:
        page.set_viewport_size(before)
        lab.hide_sidebar()


def _near_button(lab: Lab, button, message, most: float = 160) -> None:
    """What a click says shows right under the clicked button, inside the window."""
    message.wait_for(timeout=30_000)
    message.scroll_into_view_if_needed()
    b, m = button.bounding_box(), message.bounding_box()
    view = lab.page.viewport_size
    assert b and m and 0 <= m["y"] - (b["y"] + b["height"]) <= most, (b, m)
    assert 0 <= m["y"] and m["y"] + min(m["height"], 40) <= view["height"], (m, view)


def _secret_values(text: str) -> set[str]:
    """Passwords in a secrets.env: values of *PASSWORD*/*SECRET*/*TOKEN* keys and URL passwords."""
    found = set()
    for line in text.splitlines():
        if "=" not in line or line.lstrip().startswith("#"):
            continue
        key, value = line.split("=", 1)
        value = value.strip().strip("'\"")
        if any(w in key.upper() for w in ("PASSWORD", "SECRET", "TOKEN")) and len(value) >= 6:
            found.add(value)
        for pw in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
            found.add(pw)
    return found


@pytest.fixture
def ssh_agent(tmp_path):
    """A real ssh-agent of our own for the JupyterLab process (so the panel's agent step works)."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not sock.exists() and time.time() < deadline:
        time.sleep(0.05)
    yield str(sock)
    proc.terminate()
    proc.wait(timeout=10)


def _remove_authorized_key(remote, pub: Path) -> None:
    """Take exactly the key line the journey added out of the server's authorized_keys."""
    if not pub.exists():
        return
    body = pub.read_text().split()[1]
    lines = remote.get_bytes(".ssh/authorized_keys").decode().splitlines(keepends=True)
    if any(body in line for line in lines):
        remote.put_bytes(".ssh/authorized_keys", "".join(l for l in lines if body not in l), mode=0o600)


def _destroy_leftovers(remote) -> None:
    """Take away what an earlier or half-finished journey deployed (only our own app)."""
    from labdeploy.app import apps
    from labdeploy import export as export_core
    from labdeploy.errors import LabdeployError

    if not remote.exists("dallinger/docker-compose.yml"):
        return  # a fresh server: the shared stack (and so any app) is not there yet
    if not (remote.exists(f"dallinger/{APP}") or remote.exists(f"dallinger-data/{APP}")
            or export_core.database_exists(APP, remote)):
        return
    try:
        # Our own throw-away test app: its data is explicitly not needed.
        apps.destroy(APP, remote, confirm=True, remove_data=True, export_check=False)
    except LabdeployError:
        pass  # nothing left (the usual case: the panel destroyed it)


def test_researcher_journey_in_jupyterlab(testbed, remote, tmp_path, ssh_agent):
    if shutil.which("chromium") is None:
        reason = "Chromium is not installed (scripts/setup installs Debian's chromium); skipping the browser journey"
        print(reason)
        pytest.skip(reason)

    started = time.time()
    _destroy_leftovers(remote)  # a run killed half-way must not make this one fail
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    root, home = tmp_path / "lab", tmp_path / "home"
    (root / "notebooks").mkdir(parents=True)
    home.mkdir()
    for nb in ("setup_server.ipynb", "deploy.ipynb"):
        shutil.copy(REPO / "notebooks" / nb, root / "notebooks" / nb)
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    # The kernel imports this checkout's labdeploy (not the one the virtual environment points at).
    env = {"LABDEPLOY_TESTBED": testbed["file"], "SSH_AUTH_SOCK": ssh_agent, "PYTHONPATH": str(REPO)}
    ssh = testbed["ssh"]
    secrets = {"testbed ssh password": ssh["password"], "registry password": testbed["registry"]["password"]}

    try:
        with jupyterlab(root, home, env, log_path=ARTIFACTS / "jupyterlab.log") as url, chromium(ARTIFACTS) as page:
            lab = Lab(page, url, ARTIFACTS)
            try:
                _setup_journey(lab, testbed, remote)
                secrets["PostgreSQL superuser password"] = (
                    remote.get_bytes("dallinger/secrets/postgres_password").decode().strip())
                lab.save(root / "notebooks" / "setup_server.ipynb")
                secrets.update(_deploy_journey(lab, remote, root))
                lab.save(root / "notebooks" / "deploy.ipynb")
                _after_restart(lab, root)
            except BaseException:
                lab.screenshot("failure")  # what the page showed when the journey stopped
                raise
    finally:
        _remove_authorized_key(remote, home / ".ssh" / "id_ed25519.pub")
        _destroy_leftovers(remote)

    # The saved notebooks hold what the journey showed (so the check below looks at real outputs)...
    saved = {name: (root / "notebooks" / name).read_text() for name in ("setup_server.ipynb", "deploy.ipynb")}
    assert "Room for about" in saved["setup_server.ipynb"]
    assert "application/vnd.jupyter.widget-view+json" in saved["deploy.ipynb"]
    assert "ExportPanel" in saved["deploy.ipynb"]
    # ...and not one secret: not the passwords typed or known, not the app's database password.
    for name, text in saved.items():
        for what, value in secrets.items():
            assert value not in text, f"the {what} is in the saved {name}"
    print(f"browser journey: {time.time() - started:.0f} s; screenshots in {ARTIFACTS}")


# The shared testbed's free memory and disk depend on what other tests run at the same time.
CAPACITY_CHECKS = ("Memory", "Disk space")


def _check_readiness(lab: Lab, panel, prepared: bool) -> dict:
    """Click "Check readiness" and read the table: every check passes, except that the capacity
    ones may fail while other tests fill the shared server (then the step says so), and on a
    fresh server the shared services are not running before "Prepare server"."""
    panel.locator("button.labdeploy-setup-readiness").click()
    state = lab.wait_step(panel, "Readiness", states=("done", "failed"), timeout=90)
    rows = [r.split("\t") for r in panel.locator("table.labdeploy-readiness tr").all_inner_texts()[1:]]
    table = {r[0].strip(): "✔" in r[1] for r in rows if len(r) > 1}
    for check in ("SSH login", "Docker installed", "Docker usable without sudo", "Docker Compose"):
        assert table.get(check) is True, rows
    failed = [c for c, ok in table.items() if not ok]
    allowed = CAPACITY_CHECKS + (() if prepared else ("Shared services (PostgreSQL, Caddy)",))
    assert all(c in allowed for c in failed), rows
    assert (state == "done") == (not failed), (state, rows)
    short = [c for c in failed if c in CAPACITY_CHECKS]
    if short:
        print(f"note: the shared testbed is short of {', '.join(short)} right now (other tests)")
    return table


def _setup_journey(lab: Lab, testbed: dict, remote) -> None:
    ssh = testbed["ssh"]
    lab.open_notebook("notebooks/setup_server.ipynb")
    # Step through the introduction and the panel's cell as a person would (Shift+Enter).
    lab.run_cells(lab.cell_index("SetupPanel(") + 1)
    panel = lab.panel("Set up a server")
    panel.wait_for(timeout=60_000)
    lab.wait_kernel_idle(60)
    _check_layout(lab, panel, "setup-layout")
    assert lab.step_state(panel, "ssh-agent") == "optional"  # never red for something optional
    assert all(lab.step_state(panel, s) == "pending" for s in
               ("SSH key", "Host key", "Copy key", "Verify login", "Register", "Readiness", "Prepare server"))
    assert lab.field(panel, "Server address").input_value() == ssh["host"]
    assert lab.field(panel, "User name").input_value() == ssh["user"]
    lab.fill(panel, "Server name", SERVER_NAME)
    lab.shot(panel, "setup-panel-fresh")

    # 1. A new key in the (temporary) home, then into the agent.
    panel.locator(".labdeploy-setup-create-key").click()
    lab.wait_step(panel, "SSH key", timeout=30)
    assert "created id_ed25519" in lab.step_text(panel, "SSH key")
    panel.locator(".labdeploy-setup-add-agent").click()
    lab.wait_step(panel, "ssh-agent", timeout=30)

    # A mistyped address: the error shows next to the button; the corrected address is checked again.
    lab.fill(panel, "Server address", "10.250.0.99")
    check = panel.locator(".labdeploy-setup-check-host")
    check.click()
    lab.wait_step(panel, "Host key", states=("failed",), timeout=60)
    _near_button(lab, check, panel.locator(".labdeploy-error"))
    lab.shot(panel, "setup-error-next-to-button")
    lab.fill(panel, "Server address", ssh["host"])
    deadline = time.time() + 30  # the value reaches the kernel as the box is left
    while "10.250.0.99" in lab.step_text(panel, "Host key") and time.time() < deadline:
        time.sleep(0.2)
    assert "10.250.0.99" not in lab.step_text(panel, "Host key")

    assert "address changed" in lab.step_text(panel, "Host key")

    # 2. First contact: the panel shows the fingerprint; compare it with the administrator's, trust it.
    check.click()
    lab.wait_step(panel, "Host key", states=("pending",), timeout=30)
    fingerprint = panel.locator(".labdeploy-setup-fingerprint")
    fingerprint.wait_for(timeout=30_000)
    deadline = time.time() + 30
    while "First contact" not in fingerprint.inner_text() and time.time() < deadline:
        time.sleep(0.2)
    assert ssh["host_key_fingerprint"] in fingerprint.inner_text()
    # The administrator's fingerprint pasted (another case for the prefix, spaces around): compared.
    lab.fill(panel, "Admin's fingerprint", "  sha256:" + ssh["host_key_fingerprint"].split(":", 1)[1] + " ")
    panel.locator(".labdeploy-setup-compare", has_text="The same as the key").wait_for(timeout=10_000)
    trust = panel.locator(".labdeploy-setup-trust-host")
    trust.wait_for(state="visible", timeout=10_000)
    lab.shot(panel, "setup-fingerprint")
    trust.click()
    lab.wait_step(panel, "Host key", timeout=30)
    assert ssh["host_key_fingerprint"] in lab.step_text(panel, "Host key")
    assert not trust.is_visible()

    # 3. The account password, typed once; the box is empty again afterwards.
    lab.fill(panel, "Account password", ssh["password"])
    panel.locator(".labdeploy-setup-copy-key").click()
    lab.wait_step(panel, "Copy key", timeout=60)
    assert lab.field(panel, "Account password").input_value() == ""
    panel.locator(".labdeploy-setup-verify").click()
    lab.wait_step(panel, "Verify login", timeout=60)
    assert "with the key alone" in lab.step_text(panel, "Verify login")

    # 4. Register and read the readiness table.
    panel.locator(".labdeploy-setup-register").click()
    lab.wait_step(panel, "Register", timeout=30)
    assert SERVER_NAME in lab.step_text(panel, "Register")
    table = _check_readiness(lab, panel, prepared=False)
    if not table.get("Shared services (PostgreSQL, Caddy)"):
        print("note: a fresh server; its shared services start with 'Prepare server'")
    lab.shot(panel, "setup-readiness")

    # 5. Prepare the shared services (idempotent: other tests share the server).
    panel.locator(".labdeploy-setup-prepare").click()
    lab.wait_step(panel, "Prepare server", timeout=240)
    assert remote.exists("dallinger/docker-compose.yml")
    lab.shot(panel, "setup-prepared")


def _deploy_journey(lab: Lab, remote, root: Path) -> dict:
    """Deploy, answer a trial through the tunnel, export, destroy. Returns the app's secrets."""
    page = lab.page
    lab.open_notebook("notebooks/deploy.ipynb")
    panel = lab.panel("Deploy an experiment")
    # The introduction, the settings cell (with LABDEPLOY_TESTBED it also registers "testbed") and
    # the panel's cell, one Shift+Enter each; the API cells after it are not for a panel user.
    lab.run_cells(lab.cell_index("DeployPanel(") + 1)
    panel.wait_for(timeout=60_000)
    lab.wait_kernel_idle(60)
    lab.fill(panel, "Experiment folder", "../examples/stroop")
    lab.fill(panel, "App name", APP)
    server = panel.locator(".widget-dropdown", has=page.locator("label.widget-label", has_text="Server")).locator("select")
    server.select_option(label=SERVER_NAME)
    _check_layout(lab, panel, "deploy-layout")

    t0 = time.time()
    panel.locator(".labdeploy-deploy-deploy").click()
    log = panel.locator(".labdeploy-log")
    followed = []
    for step in ("preflight", "lock", "image", "database", "start", "route", "launch", "record"):
        lab.wait_step(panel, step, timeout=420)
        shown = log_tail_shown(log) if log.is_visible() else None
        if shown and shown["overflows"]:
            followed.append(shown["tail_in_view"])
    assert followed and all(followed), followed  # the log showed its newest line while the deploy ran
    print(f"deploy took {time.time() - t0:.0f} s in the panel")
    result = panel.locator(".labdeploy-deploy-result")
    url = result.locator("a").first.get_attribute("href")
    assert url and APP in url, result.inner_text()
    assert "••••" in result.inner_text()  # the dashboard password stays masked
    lab.shot(panel, "deploy-done")
    _registry_and_monitor(lab)

    env_text = remote.get_bytes(f"dallinger/{APP}/secrets.env").decode()
    app_secrets = _secret_values(env_text)
    db_password = re.search(r"DATABASE_URL=\S+?://[^:/@\s]+:([^@\s]+)@", env_text)
    assert db_password and db_password.group(1) in app_secrets, "the app's database password is among those checked"

    # The server has no DNS name for the app: open it through the panel's SSH tunnel.
    panel.locator(".labdeploy-deploy-tunnel").click()
    link = panel.locator("a.labdeploy-deploy-tunnel-link")
    reveal = panel.locator(".labdeploy-deploy-reveal")
    reveal.click()
    panel.locator(".labdeploy-deploy-reveal", has_text="Hide password").wait_for(timeout=10_000)
    assert "••••" not in result.inner_text()
    reveal.click()
    panel.locator(".labdeploy-deploy-reveal", has_text="Show password").wait_for(timeout=10_000)
    assert "••••" in result.inner_text()  # the label says what a click does, matching what is shown
    link.wait_for(timeout=60_000)
    tunnel_url = link.get_attribute("href")
    assert tunnel_url.startswith(f"http://{APP}.localhost:"), tunnel_url
    lab.shot(panel, "deploy-tunnel")

    participant = page.context.new_page()
    try:
        participant.goto(tunnel_url)
        participant.get_by_role("heading", name="Colour naming study").wait_for(timeout=30_000)
        lab.screenshot_of(participant, "participant-intro")
        participant.locator("#start").click()
        stimulus = participant.locator("#stimulus")
        stimulus.wait_for(state="visible", timeout=30_000)
        # The word as sent to the server (the page shows it upper-case via CSS), and its ink colour.
        word, ink = (stimulus.text_content() or "").strip(), stimulus.get_attribute("data-ink")
        assert word and ink
        lab.screenshot_of(participant, "participant-trial")
        participant.locator(f".choice[data-color='{ink}']").click()
        participant.locator("#trial-no", has_text="2").wait_for(timeout=30_000)  # the answer was saved
        assert not participant.locator("#error").is_visible()
        lab.screenshot_of(participant, "participant-answered")
    finally:
        participant.close()
    page.bring_to_front()

    # The deploy panel's Destroy… asks first; Cancel leaves everything as it was.
    panel.locator(".labdeploy-deploy-destroy").click()
    panel.locator(".labdeploy-deploy-confirm-destroy").wait_for(state="visible", timeout=10_000)
    assert f"Destroy {APP}?" in panel.inner_text()
    lab.shot(panel, "deploy-destroy-asks")
    panel.locator(".labdeploy-deploy-cancel-destroy").click()
    panel.locator(".labdeploy-deploy-confirm-destroy").wait_for(state="hidden", timeout=10_000)
    assert remote.exists(f"dallinger/{APP}/docker-compose.yml")

    # Export with the export panel (a cell typed at the end of the notebook), see the answer.
    exporter = _export_panel(lab, word, ink)

    # Destroy, data included: "Export, then destroy" stops the app, takes a final export (destroy
    # refuses to drop a database that has no fresh export) and removes everything. Its
    # confirmation step first: without the tick nothing happens.
    destroy = exporter.locator(".labdeploy-export-destroy")
    destroy.click()
    _near_button(lab, destroy, exporter.locator(".labdeploy-error", has_text="needs your confirmation"))
    assert remote.exists(f"dallinger/{APP}")
    lab.shot(exporter, "destroy-needs-confirmation")
    exporter.locator(".labdeploy-export-confirm input").check()
    destroy.click()
    for step in ("stop", "Read the tables", "Check row counts", "Write the archive", "data", "files"):
        lab.wait_step(exporter, step, timeout=180)
    exporter.locator(".labdeploy-ok", has_text="was destroyed").wait_for(timeout=30_000)
    assert "exporter.data[" in exporter.locator(".labdeploy-ok").inner_text()  # the notebook's own variable
    states = [lab.step_state(exporter, s) for s in ("check", "lock", "stop", "route", "data", "files")]
    assert states == ["done"] * 6, states  # none left pending after it succeeded
    assert "Stop the app" in exporter.locator(".labdeploy-steps").inner_text()  # words, not step keys
    lab.shot(exporter, "destroyed")
    # The export panel forgets the destroyed app too: not in its app picker, no summary or preview of it.
    assert exporter.locator("tr.labdeploy-export-row").count() == 0
    assert exporter.locator(".widget-tab table.dataframe").count() == 0
    assert APP not in exporter.locator(".widget-dropdown select").nth(1).inner_text()
    # The deploy panel (another panel of this notebook) no longer shows the destroyed app.
    deadline = time.time() + 30
    while APP in panel.locator(".labdeploy-deploy-result").inner_text() and time.time() < deadline:
        time.sleep(0.25)
    assert APP not in panel.locator(".labdeploy-deploy-result").inner_text()
    assert panel.locator("a.labdeploy-deploy-tunnel-link").count() == 0
    assert "Tunnel open" not in panel.inner_text() and "was destroyed" in panel.inner_text()
    assert lab.step_state(panel, "record") == "pending"  # the last deploy's steps are history now
    assert not panel.locator(".labdeploy-deploy-reveal").is_visible()
    lab.shot(panel, "deploy-after-destroy")
    assert not remote.exists(f"dallinger/{APP}")
    assert not remote.exists(f"dallinger-data/{APP}")
    from labdeploy import export as export_core
    assert not export_core.database_exists(APP, remote)

    # The deploy panel's app list no longer has it.
    panel.locator("button.labdeploy-deploy-apps").click()
    panel.locator(".labdeploy-ok", has_text=re.compile(r"\d+ apps? on this server")).wait_for(timeout=60_000)
    listed = panel.locator("table.labdeploy-apps").inner_text() if panel.locator("table.labdeploy-apps").count() else ""
    assert APP not in listed
    return {f"{APP} secret #{i}": v for i, v in enumerate(sorted(app_secrets))}


def _registry_and_monitor(lab: Lab) -> None:
    """The registry panel (the deploy notebook's optional cell) and the monitor panel (a cell typed
    at the end, about the journey's app) pass the same layout checks at both window sizes; an
    error shows under the clicked button."""
    lab.run_cells(1, first=lab.cell_index("RegistryPanel("))
    registry = lab.panel("Images and registry")
    registry.wait_for(timeout=60_000)
    lab.wait_kernel_idle(60)
    assert registry.locator(".widget-radio-box").count() == 0  # the transfer mode is the deploy panel's
    registry.locator(".labdeploy-registry-check").click()
    registry.locator(".labdeploy-registry-state", has_text="Server").wait_for(timeout=60_000)
    assert "This computer: not logged in." in registry.locator(".labdeploy-registry-state").inner_text()
    _check_layout(lab, registry, "registry-layout")
    login = registry.locator(".labdeploy-registry-login-server")
    login.click()  # the password box is empty: said under the button
    _near_button(lab, login, registry.locator(".labdeploy-error", has_text="box is empty"))
    lab.shot(registry, "registry-error-next-to-button")

    lab.add_cell_at_end(f'from labdeploy.widgets.monitor import MonitorPanel\n\n'
                        f'monitor = MonitorPanel("{SERVER_NAME}", app="{APP}")\nmonitor')
    lab.page.keyboard.press("Shift+Enter")
    monitor = lab.panel("Monitor")
    monitor.wait_for(timeout=60_000)
    status = monitor.locator("table.labdeploy-monitor-status")
    status.wait_for(timeout=90_000)
    assert APP in status.inner_text()
    _check_layout(lab, monitor, "monitor-layout")
    _fits_across(lab, monitor.locator(".labdeploy-monitor-status-box"), "monitor-status-1280x800")
    monitor.locator(".labdeploy-monitor-stop").click()  # its sampling ends here, not with the kernel


def _export_panel(lab: Lab, word: str, ink: str):
    """Type a cell that shows the export panel, export, and read the responses preview."""
    lab.add_cell_at_end(f'from labdeploy.widgets.export import ExportPanel\n\n'
                        f'exporter = ExportPanel("{SERVER_NAME}", app="{APP}")\nexporter')
    lab.page.keyboard.press("Shift+Enter")
    panel = lab.panel("Export data")
    panel.wait_for(timeout=60_000)
    lab.wait_kernel_idle(60)
    options = panel.locator(".widget-select-multiple select option")

    def listed():
        return [t.replace("\xa0", " ") for t in options.all_inner_texts()]

    deadline = time.time() + 60
    while not any(t.startswith("responses") for t in listed()) and time.time() < deadline:
        time.sleep(0.25)
    assert "responses (1 row)" in listed(), listed()
    panel.locator(".labdeploy-export-export").click()
    for step in ("Read the tables", "Check row counts", "Write the archive"):
        lab.wait_step(panel, step, timeout=120)
    panel.locator(".labdeploy-ok", has_text="Exported").wait_for(timeout=30_000)
    assert [lab.step_state(panel, s) for s in ("Anonymise", "Download files", "Download logs")] == ["skipped"] * 3
    summary = panel.locator("tr.labdeploy-export-row[data-table='responses']")
    summary.wait_for(timeout=30_000)
    assert summary.get_attribute("data-rows") == "1"
    panel.locator(".lm-TabBar-tab", has_text=re.compile("^responses$")).click()
    table = panel.locator(".widget-tab table.dataframe:visible").first
    table.wait_for(timeout=30_000)
    rows = table.locator("tbody tr")
    assert rows.count() == 1, rows.all_inner_texts()  # a new app: only our participant's one answer
    header = [h.strip() for h in table.locator("thead tr").first.locator("th").all_inner_texts()]
    values = [v.strip() for v in rows.first.locator("th, td").all_inner_texts()]
    shown = dict(zip(header[1:], values[1:]))  # the first column is the DataFrame's index
    assert (shown.get("word"), shown.get("ink"), shown.get("answer")) == (word, ink, ink), shown
    lab.shot(panel, "export-preview")
    return panel


def _after_restart(lab: Lab, root: Path) -> None:
    """"Restart Kernel and Run All Cells": the setup notebook (panel and code cells) runs again on
    the prepared server, and its panel works; the deploy notebook is restarted and run up to its
    panel (the cells after it deploy a second app by API, which this journey leaves out)."""
    lab.switch_to("setup_server.ipynb")
    lab.restart_and_run_all(timeout=300)
    assert not lab.cell_errors(), lab.cell_errors()
    panel = lab.panel("Set up a server")
    panel.wait_for(timeout=30_000)
    assert all(lab.step_state(panel, s) == "pending" for s in ("SSH key", "Host key", "Readiness"))
    assert lab.notebook.get_by_text("Room for about").count() >= 1
    panel.locator(".labdeploy-setup-check-host").click()
    lab.wait_step(panel, "Host key", timeout=30)
    assert "known" in lab.step_text(panel, "Host key")  # trusted once, remembered
    assert _check_readiness(lab, panel, prepared=True)["Shared services (PostgreSQL, Caddy)"]
    lab.shot(panel, "setup-panel-after-restart")
    lab.save(root / "notebooks" / "setup_server.ipynb")

    lab.switch_to("deploy.ipynb")
    lab.select_cell(lab.cell_index("DeployPanel("))  # the panel's cell
    lab.restart_and_run("Restart Kernel and Run up to Selected Cell", timeout=300)
    assert not lab.cell_errors(), lab.cell_errors()
    panel = lab.panel("Deploy an experiment")
    panel.wait_for(timeout=30_000)
    assert all(lab.step_state(panel, s) == "pending" for s in ("preflight", "image", "record"))
    panel.locator("button.labdeploy-deploy-apps").click()
    panel.locator(".labdeploy-ok", has_text=re.compile(r"\d+ apps? on this server")).wait_for(timeout=60_000)
    assert APP not in panel.locator(".labdeploy-deploy-apps").last.inner_text()
    lab.shot(panel, "deploy-panel-after-restart")
    lab.save(root / "notebooks" / "deploy.ipynb")
