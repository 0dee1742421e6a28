"""The alerts panel: where the server's alert watcher sends (a webhook, e-mail), its thresholds,
a test alert through every channel, the past incidents, and the doctor's report.

Thin over `labdeploy.server.alerts` and `labdeploy.watch.doctor`. Secrets (the webhook URL, the
SMTP password) are typed into password fields, sent once on Save and cleared at once; the panel
only ever shows whether they are set.
"""

from __future__ import annotations

import html
from typing import Optional

import ipywidgets as W
import pandas as pd

from ..app import changes
from ..server import alerts
from ..ssh import pool as ssh_pool
from ..watch import doctor
from .common import Message, Panel, choice_field, info_html, plural, server_choices, text_field, titled
from .parts import BAD, GOOD, frame_html

# The thresholds the panel shows: the setting's name, its label, and its bounds (as the core checks them).
THRESHOLDS = (("disk_free_min_pct", "Disk free under (%)", 0, 100),
              ("memory_max_pct", "Memory over (%)", 1, 100),
              ("connections_max_pct", "Connections over (%)", 1, 100),
              ("web_error_max_pct", "Web errors over (%)", 0, 100),
              ("quiet_minutes", "Quiet period (min)", 0, 10080))
SECURITY = (("STARTTLS (usually port 587)", "starttls"), ("SSL (usually port 465)", "ssl"), ("none", "none"))
HISTORY_ROWS = 50


def _button(label: str, action: str, style: str = "", icon: str = "") -> W.Button:
    b = W.Button(description=label, button_style=style, icon=icon, layout=W.Layout(width="auto"))
    b.add_class(f"labdeploy-alerts-{action}")
    return b


def _not_ok_first(df: pd.DataFrame) -> pd.DataFrame:
    """The doctor's report with the lines that need something done on top (stable otherwise)."""
    return df.assign(_ok=df["ok"].astype(bool)).sort_values("_ok", kind="stable").drop(columns="_ok")


def _state_html(table: pd.DataFrame) -> str:
    """Secrets only as set / not set; the channels in one line."""
    values = dict(zip(table["setting"], table["value"]))

    def state(key: str) -> str:
        on = values.get(key) == "set"
        return f"<b style='{GOOD if on else BAD}' class='labdeploy-alerts-{key}-state'>{'set' if on else 'not set'}</b>"

    return (f"<div style='margin:4px 0'>Webhook: {state('webhook')} · E-mail to: "
            f"<b>{html.escape(str(values.get('email_to', 'not set')))}</b> · SMTP password: "
            f"{state('smtp_password')}</div>")


def _doctor_html(report: pd.DataFrame) -> str:
    bad = int((~report["ok"].astype(bool)).sum())
    head = (f"<div style='{BAD};font-weight:bold'>{plural(bad, 'thing needs', 'things need')} attention.</div>" if bad else
            f"<div style='{GOOD};font-weight:bold'>All {len(report)} checks are fine.</div>")
    return head + frame_html(report, "labdeploy-alerts-doctor", ["area", "subject", "ok", "detail", "what_to_do"],
                             row_style=lambda r: "" if r["ok"] else BAD)


class AlertsPanel(Panel):
    """`AlertsPanel("lab-server")` (a registered name, a `Server` or a connected `Remote`)."""

    def __init__(self, server=None, *, autoload: bool = True) -> None:
        self._connections = ssh_pool.kernel().lease()  # the notebook's, shared by its panels
        self._servers: dict = {}
        self.settings: Optional[alerts.AlertSettings] = None
        # The truth last read; draw() turns it into the view.
        self.settings_table = self.test_result = self.history_df = self.report = None
        self.doctor_running = False
        self.gone: set = set()  # apps destroyed since (announced in this notebook): out of the doctor's report
        self._filled: Optional[alerts.AlertSettings] = None  # the settings the fields were last filled from
        options, chosen = server_choices(server)
        self._servers.update(chosen)
        chosen = server if isinstance(server, str) else (options[0] if options else None)
        self.server_picker = choice_field(W.Dropdown(options=options, value=chosen, description="Server"))
        self.server_picker.observe(lambda _: self.load(), names="value")
        self.message = Message()
        self._build_channels()
        self.thresholds = {key: choice_field(W.BoundedFloatText(min=low, max=high, step=1, description=label))
                           for key, label, low, high in THRESHOLDS}
        self.save_button = _button("Save", "save", "success", "save")
        self.test_button = _button("Send test alert", "test", "", "paper-plane")
        self.reload_button = _button("Reload settings", "reload", "", "refresh")
        self.history_button = _button("Show incidents", "history", "", "history")
        self.doctor_button = _button("Doctor", "doctor", "info", "stethoscope")
        self.save_button.on_click(lambda _: self.save())
        self.test_button.on_click(lambda _: self.send_test())
        self.reload_button.on_click(lambda _: self.load())
        self.history_button.on_click(lambda _: self.show_history())
        self.doctor_button.on_click(lambda _: self.run_doctor())
        self.state_html, self.test_html, self.history_html, self.doctor_html = (W.HTML() for _ in range(4))
        for w, name in ((self.state_html, "state"), (self.test_html, "test-result"),
                        (self.history_html, "history-table"), (self.doctor_html, "doctor-report")):
            w.add_class(f"labdeploy-alerts-{name}")
        self.widget = self._lay_out()
        changes.subscribe(self._on_app_change)
        if autoload and chosen is not None:
            self.load()

    def _build_channels(self) -> None:
        self.webhook_box = text_field("Webhook URL", "", "empty: keep as it is (Slack-compatible)", wide=True,
                                      password=True)
        self.remove_webhook = W.Checkbox(value=False, indent=False, description="remove the webhook")
        self.email_to = text_field("E-mail to", "", "addresses, separated by commas; empty: no e-mail", wide=True)
        self.email_from = text_field("E-mail from", "", "empty: the first address above")
        self.smtp_host = text_field("SMTP server", "", "e.g. smtp.university.example", address=True)
        self.smtp_port = choice_field(W.BoundedIntText(value=587, min=1, max=65535, description="SMTP port"))
        self.smtp_security = choice_field(W.Dropdown(options=SECURITY, value="starttls", description="Security"))
        self.smtp_user = text_field("SMTP user", "", "empty: no login")
        self.smtp_password = text_field("SMTP password", "", "empty: keep as it is", password=True)
        self.remove_password = W.Checkbox(value=False, indent=False, description="remove the SMTP password")

    def _lay_out(self) -> W.VBox:
        section = lambda t: W.HTML(f"<b>{html.escape(t)}</b>")  # noqa: E731
        return titled(
            "Alerts", self.server_picker, self.state_html,
            section("Where alerts go"), self.webhook_box, self.remove_webhook, self.email_to, self.email_from,
            self.smtp_host, self.smtp_port, self.smtp_security, self.smtp_user, self.smtp_password,
            self.remove_password,
            section("When to alert"), *self.thresholds.values(),
            self.actions(self.save_button, self.test_button, self.reload_button), self.message_slot(),
            self.test_html,
            section("Past incidents and the server's health"),
            self.actions(self.history_button, self.doctor_button), self.history_html, self.doctor_html,
            subtitle="A watcher on the server checks every minute and tells you once per incident, and again "
                     "when it recovers, even with this notebook closed.")

    # ------------------------------------------------------------------ plumbing

    def remote(self):
        target = self._servers.get(self.server_picker.value, self.server_picker.value)
        return self._connections.pool.get(target)

    def draw(self) -> None:
        """The view from what was last read: the channels' state, the fields (filled again only
        when new settings were read, so what the researcher types stays), the test, the incidents
        and the doctor's report."""
        self.state_html.value = _state_html(self.settings_table) if self.settings_table is not None else ""
        if self.settings is not None and self._filled is not self.settings:
            self._fill(self.settings)
        self.test_html.value = "" if self.test_result is None else frame_html(
            self.test_result, "labdeploy-alerts-test-table", ["channel", "ok", "error"],
            row_style=lambda r: GOOD if r["ok"] else BAD)
        self.history_html.value = "" if self.history_df is None else frame_html(
            self.history_df.iloc[::-1].head(HISTORY_ROWS), "labdeploy-alerts-history",
            ["time", "event", "text", "duration_s", "sent"],
            row_style=lambda r: BAD if r["event"] == "alert" else "", empty="No incident yet.")
        if self.doctor_running:
            self.doctor_html.value = info_html("Looking at the server (takes a few seconds)…")
        elif self.report is None:
            self.doctor_html.value = ""
        else:
            about = self.report["subject"].astype(str).str.split(" ").str[0]  # "<app> <service>"
            self.doctor_html.value = _doctor_html(self.report[~about.isin(list(self.gone))])

    def _fill(self, settings: alerts.AlertSettings) -> None:
        self._filled = settings
        email = settings.email or {}
        self.email_to.value = ", ".join(email.get("to", []))
        self.email_from.value = email.get("from", "") or ""
        self.smtp_host.value = email.get("host", "") or ""
        self.smtp_port.value = int(email.get("port") or 587)
        self.smtp_security.value = email.get("security") or "starttls"
        self.smtp_user.value = email.get("user", "") or ""
        for key, box in self.thresholds.items():
            box.value = float(getattr(settings, key))

    def _on_app_change(self, operation: str, app: str, host: str) -> None:
        """A destroyed app's lines leave the doctor's report (an app deployed again comes back)."""
        (self.gone.add if operation == "destroy" else self.gone.discard)(app)
        self.render()

    # ------------------------------------------------------------------ actions

    def load(self) -> None:
        """Read the settings from the server into the fields."""
        def work():
            remote = self.remote()
            return alerts.read_settings(remote), alerts.list(remote)

        def done(found) -> None:
            self.settings, self.settings_table = found

        self.in_background(work, done, status="Reading the alert settings…", name="alerts-load")

    def _changes(self) -> dict:
        """The fields as alerts.set's arguments; typed secrets are taken and the fields cleared."""
        given: dict = {key: (int(box.value) if key == "quiet_minutes" else float(box.value))
                       for key, box in self.thresholds.items()}
        hook, password = self.webhook_box.value.strip(), self.smtp_password.value
        self.webhook_box.value = self.smtp_password.value = ""  # never kept in the panel
        if hook or self.remove_webhook.value:
            given["webhook_url"] = "" if self.remove_webhook.value else hook
        if password or self.remove_password.value:
            given["smtp_password"] = "" if self.remove_password.value else password
        to = [a.strip() for a in self.email_to.value.split(",") if a.strip()]
        given.update(email_to=to, email_from=self.email_from.value.strip() or None,
                     smtp_host=self.smtp_host.value.strip() or None, smtp_port=int(self.smtp_port.value),
                     smtp_security=self.smtp_security.value, smtp_user=self.smtp_user.value.strip() or None)
        return given

    def save(self) -> None:
        given = self._changes()

        def work():
            remote = self.remote()
            table = alerts.set(remote, **given)
            return alerts.read_settings(remote), table

        def done(found) -> None:
            self.remove_webhook.value = self.remove_password.value = False
            self.settings, self.settings_table = found
            self.message.show_ok("Saved. The watcher uses these settings from its next round (within a minute).")

        self.in_background(work, done, status="Saving…", disable=[self.save_button], name="alerts-save")

    def send_test(self) -> None:
        self.test_result = None
        self.render()

        def done(df: pd.DataFrame) -> None:
            self.test_result = df
            failed = list(df.loc[~df["ok"].astype(bool), "channel"])
            if failed:
                self.message.show_warning(f"The test alert did not go through: {', '.join(failed)}.",
                                          "Check the address and the server's details above, then send again.")
            else:
                self.message.show_ok(f"Test alert sent through {', '.join(df['channel'])}: check that it arrived.")

        self.in_background(lambda: alerts.test(self.remote()), done, status="Sending a test alert from the server…",
                           disable=[self.test_button], name="alerts-test")

    def show_history(self) -> None:
        def done(df: pd.DataFrame) -> None:
            self._set(history_df=df)

        self.in_background(lambda: alerts.history(self.remote()), done, exclusive=False, name="alerts-history")

    def _set(self, **truth) -> None:
        for key, value in truth.items():
            setattr(self, key, value)
        self.render()

    def run_doctor(self) -> None:
        self._set(doctor_running=True, report=None)

        def done(df: pd.DataFrame) -> None:
            self.doctor_running, self.report = False, _not_ok_first(df)

        def failed(_exc) -> None:
            self._set(doctor_running=False)

        self.in_background(lambda: doctor.doctor(self.remote()), done, on_error=failed,
                           disable=[self.doctor_button], name="alerts-doctor")

    def close(self) -> None:
        self._connections.release()


__all__ = ["AlertsPanel"]
