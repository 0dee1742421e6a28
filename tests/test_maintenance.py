"""The maintenance page on the testbed: new arrivals get 503 + Retry-After and the page, a
participant already in finishes; an update keeps it on; off lets everyone in again."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from labdeploy.app import deploy, maintenance
from labdeploy.errors import ValidationError
from labdeploy.server import caddy, layout
from deploy_support import deploy_kwargs, example_deployed

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"
APP = "t-mnt-app"
ENTRY = ["/", "/api/participants"]


def call(testbed, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"http://{testbed['http']['host']}:{testbed['http']['port']}{path}",
                            headers={"Host": f"{APP}.localhost"}, timeout=15, **kw)


@pytest.fixture(scope="module")
def live(testbed, session_remote):
    with example_deployed(session_remote, testbed, APP) as remote:
        yield remote


def test_new_arrivals_get_the_page_while_a_participant_already_in_finishes(live, testbed):
    started = call(testbed, "POST", "/api/participants", json={"worker_id": "in-already"}).json()
    hostile = 'Back at 5 {$HOME} {http.request.uri} "quoted" \\ <b>not bold</b>\nsecond line'
    state = maintenance.maintenance(APP, live, on=True, paths=ENTRY, message=hostile, retry_after=120)
    assert state.on and "/api/participants" in state.summary()
    assert maintenance.is_on(APP, live)

    page = call(testbed, "GET", "/")
    assert page.status_code == 503 and page.headers["Retry-After"] == "120"
    assert page.headers["Content-Type"].startswith("text/html")
    # The text is shown as written: no placeholder, no environment variable, no markup.
    assert "{$HOME}" not in page.text and "&#123;$HOME&#125;" in page.text and "/home/" not in page.text
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page.text and "second line" in page.text
    assert call(testbed, "POST", "/api/participants", json={"worker_id": "late"}).status_code == 503

    pid = started["id"]
    for trial in range(2):  # the participant already in goes on to the end
        r = call(testbed, "POST", f"/api/participants/{pid}/responses",
                 json={"trial": trial, "word": "red", "ink": "red", "answer": "red", "rt_ms": 400})
        assert r.status_code == 200, r.text
    assert call(testbed, "POST", f"/api/participants/{pid}/finish").json()["status"] == "success"


def test_an_update_keeps_the_page_on_and_off_lets_everyone_in(live, testbed):
    deploy.update(EXAMPLE, APP, live, **deploy_kwargs(testbed))
    assert call(testbed, "GET", "/").status_code == 503
    site = live.get_bytes(layout.caddy_site(APP)).decode()
    assert caddy.site_upstream(site) == layout.web_alias(APP) and site.count("labdeploy maintenance: on") == 1
    off = maintenance.maintenance(APP, live, on=False)
    assert not off.on and not maintenance.is_on(APP, live)
    assert call(testbed, "GET", "/").status_code == 200
    assert call(testbed, "POST", "/api/participants", json={"worker_id": "after"}).status_code == 200


@pytest.mark.parametrize("bad", [{"paths": ["/ok", "/a b"]}, {"paths": ["x"]}, {"paths": ['/"}']},
                                 {"paths": ["/{$HOME}"]}, {"message": ""}, {"message": "bell\x07"},
                                 {"message": "x" * 2001}, {"retry_after": 0}, {"retry_after": "60"}])
def test_bad_settings_are_refused_before_connecting(bad):
    with pytest.raises(ValidationError) as info:
        maintenance.maintenance(APP, "nowhere", on=True, **bad)
    assert info.value.hint


def test_an_app_that_is_not_dallinger_must_name_its_entry_paths(live):
    with pytest.raises(ValidationError, match="entry paths"):
        maintenance.maintenance(APP, live, on=True)
    assert not maintenance.is_on(APP, live)


def test_the_command_line_turns_it_on_and_off_and_refuses_bad_paths_before_connecting(live, testbed, tmp_path):
    from test_cli_support import CLI

    (tmp_path / "home").mkdir()
    cli = CLI(tmp_path / "home")
    bad = cli("maintenance", "on", "--app", APP, "--server", "nowhere", "--path", "/a b")
    assert bad.code == 2 and "paths" in bad.err and "Traceback" not in bad.err, str(bad)
    s = testbed["ssh"]
    cli.ok("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"],
           "--trust-host-key", s["host_key_fingerprint"])
    on = cli.ok("maintenance", "on", "--app", APP, "--path", "/", "--path", "/api/participants",
                "--message", "Back soon", "--retry-after", "90")
    assert "maintenance page on" in on.out + on.err
    page = call(testbed, "GET", "/")
    assert page.status_code == 503 and page.headers["Retry-After"] == "90" and "Back soon" in page.text
    cli.ok("maintenance", "off", "--app", APP)
    assert call(testbed, "GET", "/").status_code == 200
    no_paths = cli("maintenance", "on", "--app", APP)  # stroop is no Dallinger app: which routes?
    assert no_paths.code != 0 and "entry paths" in (no_paths.err + no_paths.out), str(no_paths)


def test_the_monitor_panel_turns_the_page_on_and_off_for_the_app_in_focus(live, testbed, home):
    import time

    from labdeploy.widgets.monitor import MonitorPanel

    panel = MonitorPanel(live, refresh=0.5, interval=0.5)
    try:
        deadline = time.monotonic() + 30
        while APP not in panel.app_picker.options:
            assert time.monotonic() < deadline, "the app never reached the picker"
            time.sleep(0.1)
        panel.app_picker.value = APP
        box = panel.maintenance
        box.paths.value = "/a b"  # a typo: refused with its hint, nothing changes
        box.on_button.click()
        panel.last_task.join(30)
        assert "labdeploy-error" in panel.message.value and call(testbed, "GET", "/").status_code == 200
        box.paths.value = "/ /api/participants"
        box.text.value = "Back after lunch"
        box.on_button.click()
        panel.last_task.join(60)
        page = call(testbed, "GET", "/")
        assert page.status_code == 503 and "Back after lunch" in page.text
        assert "maintenance page on" in box.state.value
        box.off_button.click()
        panel.last_task.join(60)
        assert call(testbed, "GET", "/").status_code == 200 and "maintenance page off" in box.state.value
    finally:
        panel.stop()
