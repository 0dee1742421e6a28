"""Drive the rehearsal panel against the testbed: a small rehearsal of examples/stroop (a described
flow) shows its steps and a live plot once a step has finished; Stop ends every simulated
participant at once; the panel then shows the recommendation sentence, the plot and the tables,
and the copy is gone. Small on purpose (a few participants, seconds per step): 2 cores, shared."""

from __future__ import annotations

import time

import pytest

from deploy_support import EXAMPLE, deploy_kwargs, destroy_if_deployed, prepare_local_stack
from labdeploy.app import apps
from test_rehearsal import STROOP_FLOW

# The panel drives the same core calls that run on both servers in the API tests (test_rehearsal).
pytestmark = pytest.mark.servers("bookworm")

APP = "t-rhp-stroop"


def wait_for(cond, timeout=240, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def panel(home, testbed, session_remote):
    from labdeploy.widgets.rehearsal import RehearsalPanel

    prepare_local_stack(session_remote, testbed)
    destroy_if_deployed(session_remote, APP + "-rh")
    p = RehearsalPanel(APP, server=session_remote, experiment=str(EXAMPLE), participants=6, ramp=3, duration=60,
                       flow=STROOP_FLOW, deploy_settings=deploy_kwargs(testbed))
    p.force_box.value = True  # other tests' apps may have participants working meanwhile
    yield p
    p.close()
    if p.last_task is not None:
        p.last_task.join(180)
    destroy_if_deployed(session_remote, APP + "-rh")


def test_panel_rehearses_with_a_live_plot_stops_at_once_and_shows_the_answer(panel, session_remote):
    panel.start_button.click()
    wait_for(lambda: panel.steps.state("Simulated participants") == "running", what="the load to start")
    assert panel.steps.state("Deploy the copy") == "done" and not panel.stop_button.disabled
    # A live plot once the first step is over (drawn when the second begins).
    wait_for(lambda: len(panel.chart.value) > 1000 and panel.running.live().shape[0] >= 1, what="the live plot")
    assert list(panel.running.live().index)[:1] == [2]  # a slow machine may be into the next step

    panel.stop_button.click()
    run = panel.running.stop_event.run
    wait_for(lambda: not run.running, timeout=10, what="every simulated participant to stop")
    count = run.count
    time.sleep(1.5)
    assert run.count == count, "no request after Stop"

    panel.last_task.join(240)
    assert not panel.last_task.is_alive()
    r = panel.result
    assert r is not None, panel.message.value
    assert r.stopped and r.removed and 2 in r.latency.index
    assert "holds about" in panel.sentence_html.value and "stopped early" in panel.sentence_html.value
    for table in ("latency", "resources", "costs"):
        assert f"labdeploy-rehearsal-{table}" in panel.tables_html.value
    assert panel.steps.state("Remove the copy") == "done" and panel.stop_button.disabled
    assert r.copy not in set(apps.apps(session_remote)["app"])


def test_requests_that_are_not_json_are_refused_before_anything_starts(panel, session_remote):
    panel.flow_box.value = "[{method: GET"
    panel.start_button.click()
    panel.last_task.join(30)
    assert "labdeploy-error" in panel.message.value and "What to do" in panel.message.value
    assert panel.running is None and APP + "-rh" not in set(apps.apps(session_remote)["app"])
