"""Drive the alerts panel against the testbed: channels and thresholds saved (the webhook URL never
shown back), a test alert through both channels (a local webhook receiver and a local SMTP
server), the incident history, and the doctor's report with the lines to act on first."""

from __future__ import annotations

import json

import pytest

from deploy_support import prepare_local_stack
from labdeploy.server import alerts
from test_alerts import receivers  # noqa: F401 - the webhook receiver and SMTP server, a fixture
from test_deploy_panel import click, strings

# The panels drive the same core calls that run on both servers in the API tests (test_alerts).
pytestmark = pytest.mark.servers("bookworm")


@pytest.fixture
def panel(home, testbed, session_remote):
    prepare_local_stack(session_remote, testbed)
    from labdeploy.widgets.alerts import AlertsPanel

    p = AlertsPanel(session_remote)
    p.last_task.join(60)
    yield p
    p.close()
    alerts.set(session_remote, webhook_url="", email_to=[], smtp_password="", quiet_minutes=30,
               disk_free_min_pct=10, memory_max_pct=90)


def test_panel_saves_channels_sends_a_test_shows_incidents_and_the_doctor(panel, receivers, session_remote):  # noqa: F811
    assert panel.thresholds["memory_max_pct"].value == alerts.read_settings(session_remote).memory_max_pct
    panel.webhook_box.value = receivers["hook"]
    panel.email_to.value = "researcher@lab.example.org"
    panel.email_from.value = "watcher@lab.example.org"
    panel.smtp_host.value = receivers["address"]
    panel.smtp_port.value = receivers["smtp_port"]
    panel.smtp_security.value = "none"
    panel.smtp_password.value = "not-a-real-password"
    panel.thresholds["quiet_minutes"].value = 5
    click(panel, panel.save_button)
    assert "labdeploy-ok" in panel.message.value, panel.message.value
    # The secrets went to the server and are gone from the panel: shown only as set.
    assert panel.webhook_box.value == "" and panel.smtp_password.value == ""
    shown = json.dumps(strings(panel.widget))
    assert receivers["hook"] not in shown and "not-a-real-password" not in shown
    assert ">set</b>" in panel.state_html.value and "researcher@lab.example.org" in panel.state_html.value
    saved = alerts.read_settings(session_remote)
    assert saved.webhook and saved.quiet_minutes == 5 and saved.email["to"] == ["researcher@lab.example.org"]

    before = len(receivers["hooks"].about("test alert"))
    click(panel, panel.test_button)
    assert dict(zip(panel.test_result["channel"], panel.test_result["ok"])) == {"webhook": True, "email": True}
    assert "labdeploy-alerts-test-table" in panel.test_html.value and "labdeploy-ok" in panel.message.value
    assert len(receivers["hooks"].about("test alert")) == before + 1

    click(panel, panel.history_button)
    assert list(panel.history_df.columns) == alerts.HISTORY_COLUMNS
    assert "labdeploy-alerts-history" in panel.history_html.value

    click(panel, panel.doctor_button)
    report = panel.report
    assert {"readiness", "apps", "disk", "memory", "alerts"} <= set(report["area"])
    oks = list(report["ok"].astype(bool))
    assert oks == sorted(oks), "the lines that need something done come first"
    assert "labdeploy-alerts-doctor" in panel.doctor_html.value
    channels = report[(report["area"] == "alerts") & (report["subject"] == "channels")]
    assert channels["ok"].iloc[0] and "webhook" in channels["detail"].iloc[0]


def test_a_bad_webhook_is_refused_in_the_panel_with_what_to_do(panel, session_remote):
    panel.webhook_box.value = "not a url"
    click(panel, panel.save_button)
    assert "labdeploy-error" in panel.message.value and "What to do" in panel.message.value
    assert "not a url" not in panel.message.value  # the refused value is a secret too: not echoed
    assert not alerts.read_settings(session_remote).webhook
