"""What keeps the panels honest without a server: fingerprints compared as people paste them,
the app a monitor is about, app changes heard by the notebook's other panels, messages shown
next to the clicked button, step lists that wrap and skip, and a log pane that keeps its text."""

from __future__ import annotations

import ipywidgets
import pytest

from labdeploy.app import changes
from labdeploy.errors import ChangedHostKey, ValidationError
from labdeploy.ssh import hostkeys, keys
from labdeploy.widgets.common import LogPane, Message, Panel, StepList, plural

FP = "SHA256:" + "abcDEF0123456789+/" * 2 + "abcdefg"  # 43 characters of base64


def test_a_pasted_fingerprint_is_compared_as_people_paste_it():
    assert len(FP) == 7 + 43
    assert hostkeys.compare_fingerprint(FP, FP) == "match"
    assert hostkeys.compare_fingerprint("  sha256:" + FP[7:20] + "\n " + FP[20:] + "=", FP) == "match"
    assert hostkeys.compare_fingerprint(FP[7:], FP) == "match"  # without its prefix
    assert hostkeys.compare_fingerprint(FP.replace("abc", "ABC", 1), FP) == "case"  # base64 case matters
    assert hostkeys.compare_fingerprint(FP[:-1] + "h", FP) == "different"
    assert hostkeys.compare_fingerprint("SHA256:oops", FP) == "malformed"


def test_a_mistyped_fingerprint_is_refused_before_connecting_for_what_it_is():
    with pytest.raises(ValidationError) as bad:
        keys.trust_host_key("192.0.2.1", 22, "SHA256:oops")  # a TEST-NET address: nothing is asked
    assert "not a SHA256 host key fingerprint" in bad.value.message and "presents" not in bad.value.message
    assert not issubclass(ValidationError, ChangedHostKey)


def test_the_monitor_is_about_the_app_chosen_asked_for_or_deployed_never_the_first_one():
    apps = ["alice-study", "zed-study"]
    assert changes.focus(None, None, None, apps) is None  # the view of all apps, not alice's
    assert changes.focus(None, "zed-study", None, apps) == "zed-study"
    assert changes.focus(None, None, "zed-study", apps) == "zed-study"
    assert changes.focus("alice-study", "zed-study", None, apps) == "alice-study"  # the researcher's choice stays
    assert changes.focus(None, "gone", None, apps) is None


class Listener:
    def __init__(self) -> None:
        self.heard: list = []

    def on_change(self, operation, app, host):
        self.heard.append((operation, app, host))


def test_deploys_and_destroys_are_heard_by_the_notebooks_panels():
    listener = Listener()
    changes.subscribe(listener.on_change)
    changes.announce("deploy", "t-unit-app", "host-a")
    assert changes.latest_deployed("host-a") == "t-unit-app"
    changes.announce("destroy", "t-unit-app", "host-a")
    assert changes.latest_deployed("host-a") is None
    assert listener.heard == [("deploy", "t-unit-app", "host-a"), ("destroy", "t-unit-app", "host-a")]
    del listener  # held weakly: a forgotten panel drops out
    changes.announce("deploy", "t-unit-app2", "host-a")


class Two(Panel):
    def __init__(self) -> None:
        self.message = Message()
        self.first, self.second = ipywidgets.Button(), ipywidgets.Button()
        self.top, self.bottom = self.actions(self.first), self.actions(self.second)
        self.widget = ipywidgets.VBox([self.top, self.message_slot(), self.bottom])


def test_what_a_click_says_shows_under_the_clicked_buttons_row():
    panel = Two()
    home = panel.widget.children[1]
    assert panel.message in home.children
    panel.second.click()
    assert panel.message in panel.bottom.children and panel.message not in home.children
    panel.first.click()
    assert panel.message in panel.top.children and panel.message not in panel.bottom.children
    panel.first.click()  # one place at a time, never twice
    assert list(panel.top.children).count(panel.message) == 1


def test_steps_wrap_use_words_and_unused_ones_are_skipped():
    steps = StepList(["check", "stop", "data"], titles={"stop": "Stop the app"})
    steps.set("check", "done", "x" * 300)
    steps.skip_pending()
    assert steps.states == {"check": "done", "stop": "skipped", "data": "skipped"}
    assert "Stop the app" in steps.value and "data-step='stop'" in steps.value
    assert "overflow-wrap:anywhere" in steps.value


def test_the_log_pane_keeps_plain_text_and_escapes_what_it_shows():
    log = LogPane(max_lines=3)
    for line in ["one", "two <b>", "three", "four"]:
        log.append(line)
    assert log.text == "two <b>\nthree\nfour" and "&lt;b&gt;" in log.value and "one" not in log.value
    assert log.layout.flex_flow == "column-reverse"  # the scroll origin at the newest line
    log.clear()
    assert log.text == "" and log.layout.display == "none"


def test_counts_read_as_words():
    assert plural(1, "row") == "1 row" and plural(2, "row") == "2 rows" and plural(1200, "table") == "1,200 tables"


def test_the_connections_chart_reads_as_clock_times_from_its_first_sample(home):
    """One sample only (a monitor just started): the time axis spans about a minute, ticked in
    distinct HH:MM:SS, not four days ticked '00:00:00'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from labdeploy.ssh import servers
    from labdeploy.watch.sampler import Sampler

    servers.add("lab", "192.0.2.10", "me")  # never connected: the samples are given
    sampler = Sampler("lab")
    t = pd.Timestamp("2026-05-01 14:03:27", tz="UTC")
    sampler._samples.append(({"time": t, "ok": True, "error": "", "total": 3, "max_connections": 100,
                              "warnings": 0}, [{"time": t, "database": "app_mine", "app": "mine", "connections": 3,
                                                "active": 1, "idle": 2, "idle_in_transaction": 0, "role_limit": 20}]))
    ax = sampler.plot(focus="mine")
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    assert 50 / 86400 <= hi - lo <= 120 / 86400, (hi - lo) * 86400
    labels = [x.get_text() for x in ax.get_xticklabels() if x.get_text()]
    assert len(set(labels)) == len(labels) > 1 and all(l.startswith("14:0") for l in labels), labels
    plt.close(ax.figure)
    sampler.stop()


# ---------------------------------------------------------------- the explicit state and its view

from labdeploy.widgets.common import State  # noqa: E402


@pytest.mark.parametrize("before", list(State))
def test_a_step_looks_the_same_in_a_state_whatever_it_was_before(before):
    for after in State:
        fresh, reused = StepList(["a", "b"]), StepList(["a", "b"])
        reused.set("a", before, "an old detail that must go")
        reused.set("a", after, "now")
        fresh.set("a", after, "now")
        assert reused.value == fresh.value and f"data-state='{after.value}'" in fresh.value
        assert reused.state("a") is after and reused.states["a"] == after.value  # compares as its word


def test_a_step_changed_directly_redraws_the_list():
    steps = StepList(["a"])
    steps.step("a").state = State.FAILED
    assert "data-state='failed'" in steps.value
    with pytest.raises(Exception):
        steps.set("a", "half-done")  # a state the view has no drawing for is refused, not drawn as '?'


class Held(Panel):
    """A panel with one action button the action holds."""

    def __init__(self) -> None:
        self.message, self.steps = Message(), StepList(["go"])
        self.button = ipywidgets.Button()
        self.row = self.actions(self.button)
        self.widget = ipywidgets.VBox([self.message_slot(), self.row])
        self.fail = False
        self.button.on_click(lambda _b: self.go())

    def go(self) -> None:
        def work():
            if self.fail:
                raise ValidationError("The name is not allowed.", "Choose another name.")
            return "ok"

        self.in_background(work, lambda r: self.message.show_ok(r), step="go", disable=[self.button])

    def view(self) -> tuple:
        return self.state, self.button.disabled, self.message.value


@pytest.mark.parametrize("before", [State.PENDING, State.DONE, State.FAILED])
def test_a_panel_looks_the_same_in_a_state_whatever_it_was_before(home, before):
    panel, fresh = Held(), Held()
    panel.fail = before is State.FAILED
    if before is not State.PENDING:
        panel.button.click()
        panel.last_task.join(10)
    assert panel.state is before
    fresh.fail = panel.fail = False
    for p in (panel, fresh):
        p.button.click()
        p.last_task.join(10)
    assert panel.view() == fresh.view() == (State.DONE, False, fresh.message.value) and "ok" in fresh.message.value


def test_a_failed_action_shows_its_error_under_its_button_and_frees_it(home):
    panel = Held()
    panel.fail = True
    panel.button.click()
    panel.last_task.join(10)
    assert panel.state is State.FAILED and not panel.button.disabled and not panel.busy
    assert panel.message in panel.row.children  # next to the button that failed
    assert "The name is not allowed." in panel.message.value and "Choose another name." in panel.message.value
    assert panel.steps.state("go") is State.FAILED


def test_an_error_in_what_an_action_does_when_it_ends_is_shown_not_lost(home):
    panel = Held()

    def broken(_result):
        raise RuntimeError("drawing failed")

    panel.in_background(lambda: 1, broken, step="go")
    panel.last_task.join(10)
    assert panel.state is State.FAILED and "drawing failed" in panel.message.value and not panel.busy


class Tunnel:
    """A stand-in for an SSH tunnel (a real one needs a server; the testbed tests open real ones)."""

    def __init__(self, app: str) -> None:
        self.app, self.url, self.closed = app, f"http://{app}.localhost:8123/", False

    def close(self) -> None:
        self.closed = True


def _deployed(app: str):
    from labdeploy.app.configuration import Secret
    from labdeploy.app.deploy import DeployResult

    return DeployResult(app, f"https://{app}.example.org/", "v3", "img:v3", "sha256:1", f"https://{app}.example.org/dashboard",
                        "admin", Secret("pw-" + app))


def _apps(*names):
    import pandas as pd

    return pd.DataFrame({"app": list(names), "state": ["running"] * len(names), "version": ["v3"] * len(names),
                         "running": ["3/3"] * len(names), "url": [f"https://{n}.example.org/" for n in names],
                         "deployed_at": [pd.NaT] * len(names), "who": ["me"] * len(names)})


def _deploy_panel():
    from labdeploy.widgets.deploy import DeployPanel

    panel = DeployPanel("", app="t-state-app")  # no server registered: nothing here connects
    panel.result, panel.tunnel, panel._list_shown = _deployed("t-state-app"), Tunnel("t-state-app"), True
    panel._show_apps(_apps("t-state-app", "other-study"))
    return panel


def _everything_shown(panel) -> str:
    return " ".join([panel.result_html.value, panel.tunnel_html.value, panel.apps_html.value, panel.message.value,
                     panel.steps.value])


def test_a_destroy_announced_by_another_panel_leaves_no_trace_of_the_app(home):
    panel = _deploy_panel()
    assert "t-state-app.example.org" in panel.result_html.value and "8123" in panel.tunnel_html.value
    tunnel = panel.tunnel
    changes.announce("destroy", "t-state-app", "host-a")
    shown = panel.result_html.value + panel.tunnel_html.value
    assert "t-state-app.example.org" not in shown and "8123" not in shown and tunnel.closed
    assert panel.reveal_button.layout.display == "none" and panel.close_tunnel_button.layout.display == "none"
    assert "was destroyed" in panel.message.value
    if panel.last_task is not None:
        panel.last_task.join(10)  # the apps read again (no server here: that read fails, in the message)
    panel.close()


def test_the_apps_read_again_replace_what_the_deploy_panel_said(home):
    panel = _deploy_panel()
    panel.steps.set("preflight", "failed", "t-state-app is already deployed")
    panel._show_apps(_apps("other-study"))  # the truth read again: the app is gone
    shown = _everything_shown(panel)
    assert "t-state-app.example.org" not in shown and "8123" not in shown and "already deployed" not in shown
    assert panel.steps.state("preflight") is State.PENDING and "other-study" in panel.apps_html.value
    panel._show_apps(None)  # not readable now: no table is shown rather than an old one
    assert panel.apps_html.value == ""
    panel.close()


def test_the_setup_panels_host_key_question_follows_what_it_last_read(home):
    from labdeploy.ssh.hostkeys import HostKeyStatus
    from labdeploy.widgets.setup import SetupPanel

    panel = SetupPanel(host="192.0.2.10", user="me")  # a TEST-NET address: nothing is asked
    assert panel.fingerprint_html.value == "" and panel.trust_host_button.layout.display == "none"
    panel.steps.set("Host key", *panel._ask_about(HostKeyStatus("unknown", "ssh-ed25519", FP), "192.0.2.10"))
    panel.given_fingerprint_box.value = FP
    assert FP in panel.fingerprint_html.value and panel.trust_host_button.layout.display == ""
    assert "The same" in panel.compare_html.value
    panel.host_box.value = "192.0.2.11"  # another server: the question about the old one goes
    assert panel.fingerprint_html.value == panel.compare_html.value == ""
    assert panel.trust_host_button.layout.display == "none" and panel.pending_fingerprint is None
    assert panel.steps.state("Host key") is State.PENDING and "again" in panel.steps.value
    panel.close()
