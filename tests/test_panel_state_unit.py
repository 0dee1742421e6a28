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
