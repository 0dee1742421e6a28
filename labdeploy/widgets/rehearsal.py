"""The rehearsal panel: simulated participants against a side-by-side copy of an experiment,
with progress, a live plot updated at every step, a Stop button that ends all load at once, and
at the end the recommendation sentence, the plots and the tables.

Thin over `labdeploy.rehearsal`: `rehearsal.start(...)` runs it in the background and hands back
a handle (`stop()`, `result()`, `live()`); the panel only shows what it reports.
"""

from __future__ import annotations

import html
import io
import json
from typing import Optional

import ipywidgets as W

from .. import rehearsal
from ..app import changes
from ..errors import ValidationError
from ..progress import Event, Progress, StepFinished, StepStarted
from ..ssh import pool as ssh_pool
from .common import (LogPane, Message, Panel, ProgressRow, State, StepList, choice_field, form_beside_steps, ok_html, server_choices,
                     text_field, titled, warning_html, widget_reporter)
from .parts import frame_html

STEPS = ("Deploy the copy", "Simulated participants", "Remove the copy")
LOAD_STEP = "Simulated participants"


def _button(label: str, action: str, style: str = "", icon: str = "") -> W.Button:
    b = W.Button(description=label, button_style=style, icon=icon, layout=W.Layout(width="auto"))
    b.add_class(f"labdeploy-rehearsal-{action}")
    return b


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def live_png(lat) -> bytes:
    """Latency (p50/p95) and errors of the steps finished so far, as PNG bytes (object API: no
    pyplot state shared across threads)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 2.6), dpi=80)
    ax = fig.subplots()
    if len(lat):
        ax.plot(lat.index, lat["p50"], marker="o", label="p50")
        ax.plot(lat.index, lat["p95"], marker="o", label="p95")
        errors = ax.twinx()
        errors.bar(lat.index, lat["error_rate"] * 100, alpha=0.25, color="#c5221f", width=0.4)
        errors.set_ylabel("errors (%)")
        ax.legend(loc="upper left", fontsize="small")
    ax.axhline(1.0, color="#f9ab00", linestyle="--", linewidth=1)
    ax.set_xlabel("simultaneous participants")
    ax.set_ylabel("latency, seconds")
    ax.set_title("So far" if len(lat) else "Waiting for the first step to finish")
    return _png(fig)


def _sentence_html(r: "rehearsal.Rehearsal", destroyed: bool = False) -> str:
    stopped = " (stopped early: measured up to where it was stopped)" if r.stopped else ""
    since = f" Measured before {r.app} was destroyed." if destroyed else ""
    out = ok_html(r.sentence + stopped + since)
    if not r.removed:
        out += warning_html(f"The copy {r.copy} could not be removed.",
                            "Destroy it with its data, as any app you no longer need.")
    return out


def _tables_html(r: "rehearsal.Rehearsal") -> str:
    section = lambda t: f"<div style='margin-top:6px'><b>{html.escape(t)}</b></div>"  # noqa: E731
    return (section("Latency and errors per number of simultaneous participants")
            + frame_html(r.latency, "labdeploy-rehearsal-latency", index=True)
            + section("Resources per number of simultaneous participants")
            + frame_html(r.resources, "labdeploy-rehearsal-resources", index=True)
            + section("Cost of one participant (straight-line fit)")
            + frame_html(r.costs, "labdeploy-rehearsal-costs", index=True))


class RehearsalPanel(Panel):
    """`RehearsalPanel("my-study", server="lab", experiment="my-experiment/")`. `flow`: for apps other
    than Dallinger/PsyNet, the requests one participant makes (also editable as JSON in the panel);
    `deploy_settings`: what the copy's deploy needs (images, build arguments), as for deploy()."""

    def __init__(self, app: str = "", *, server=None, experiment: str = "", participants: int = 10, ramp: int = 3,
                 duration: float = 60.0, flow=None, deploy_settings: Optional[dict] = None) -> None:
        self._connections = ssh_pool.kernel().lease()  # the notebook's, shared by its panels
        self._servers: dict = {}
        self.deploy_settings = dict(deploy_settings or {})
        # The truth last read; draw() turns it into the view.
        self.running: Optional[rehearsal.Running] = None
        self.result: Optional[rehearsal.Rehearsal] = None
        self.app_destroyed = False  # the rehearsed app was destroyed after the rehearsal
        self.live_chart = b""  # the live plot of the steps finished so far (PNG)
        self.stopping = False
        self._result_png: tuple = (None, b"")  # (the result, its plot): drawn once per result
        options, chosen = server_choices(server)
        self._servers.update(chosen)
        chosen = server if isinstance(server, str) else (options[0] if options else None)
        self.server_picker = choice_field(W.Dropdown(options=options, value=chosen, description="Server"))
        self.app_box = text_field("App", app, "the app to rehearse (a copy of it is deployed)")
        self.folder_box = text_field("Experiment folder", str(experiment), "the folder the app was deployed from")
        self.participants_box = choice_field(W.BoundedIntText(value=participants, min=1, max=2000,
                                                              description="Participants"))
        self.ramp_box = choice_field(W.BoundedIntText(value=ramp, min=1, max=20, description="Ramp steps"))
        self.duration_box = choice_field(W.BoundedFloatText(value=duration, min=1, max=7200,
                                                            description="Duration, seconds"))
        self.flow_box = W.Textarea(value=json.dumps(flow, indent=1) if isinstance(flow, list) else "",
                                   description="Requests (JSON)", style={"description_width": "140px"},
                                   placeholder="empty for Dallinger/PsyNet experiments; else the requests one "
                                               "participant makes, e.g. [{\"method\": \"GET\", \"path\": \"/\"}]",
                                   layout=W.Layout(width="auto", max_width="860px", height="80px"))
        self._flow_callable = flow if callable(flow) else None
        self.force_box = W.Checkbox(value=False, indent=False,
                                    description="rehearse even while participants are taking part on this server")
        self.start_button = _button("Start", "start", "success", "play")
        self.stop_button = _button("Stop", "stop", "danger", "stop")
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.message, self.steps, self.progress = Message(), StepList(STEPS), ProgressRow()
        self.log = LogPane(max_lines=300)
        self.chart = W.Image(format="png", layout=W.Layout(width="100%", max_width="860px", display="none"))
        self.chart.add_class("labdeploy-rehearsal-chart")
        self.sentence_html, self.tables_html = W.HTML(), W.HTML()
        self.sentence_html.add_class("labdeploy-rehearsal-sentence")
        self.tables_html.add_class("labdeploy-rehearsal-tables")
        self.widget = titled(
            "Capacity rehearsal",
            form_beside_steps([self.server_picker, self.app_box, self.folder_box, self.participants_box, self.ramp_box,
                               self.duration_box, self.flow_box, self.force_box], self.steps),
            self.actions(self.start_button, self.stop_button), self.progress, self.message_slot(), self.chart,
            self.sentence_html, self.tables_html, self.log,
            subtitle="Simulated participants walk a copy of your experiment, more at each step, while the server is "
                     "measured; the copy and every simulated participant are removed afterwards.")
        changes.subscribe(self._on_app_change)
        self.render()

    # ------------------------------------------------------------------ plumbing

    def remote(self):
        target = self._servers.get(self.server_picker.value, self.server_picker.value)
        return self._connections.pool.get(target)

    def _flow(self):
        text = self.flow_box.value.strip()
        if not text:
            return self._flow_callable
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValidationError(f"The requests are not valid JSON: {exc}.",
                                  "Write a list of requests, each with a method and a path, or leave it empty for a "
                                  "Dallinger or PsyNet experiment.", code="invalid.rehearsal.flow") from None

    def _reporter(self):
        """Our three steps into the step list; the copy's deploy and removal steps into the log."""
        ours = widget_reporter(steps=self.steps, progress=self.progress, message=self.message)
        detail = widget_reporter(logpane=self.log, message=self.message)

        def report(event: Event) -> None:
            if isinstance(event, (StepStarted, StepFinished)) and event.step in STEPS:
                ours(event)
            elif isinstance(event, Progress) and event.step == LOAD_STEP:
                self.steps.set(LOAD_STEP, "running", f"step {event.done} of {event.total}: {event.item}")
                self.progress.update(event.done, event.total, f"step {event.done} of {event.total}: {event.item}")
            elif isinstance(event, (StepStarted, StepFinished)):
                self.log.append(f"{event.step}: {'done' if isinstance(event, StepFinished) else 'started'}")
            else:
                detail(event)

        return report

    def _on_level(self, k: int, n: int) -> None:
        """A new step began: the steps before it are in the live plot."""
        if self.running is not None:
            self.live_chart = live_png(self.running.live())
            self.render()

    def draw(self) -> None:
        """The view from the running rehearsal or the finished one's result, nothing else."""
        self.stop_button.disabled = not (self.state is State.RUNNING and self.running is not None and not self.stopping)
        r = self.result
        if r is not None and self._result_png[0] is not r:
            from matplotlib.figure import Figure

            self._result_png = (r, _png(r.plot(fig=Figure(figsize=(10, 3.6), dpi=80))))
        png = self._result_png[1] if r is not None else self.live_chart
        self.chart.value = png
        self.chart.layout.display = "" if png else "none"
        self.sentence_html.value = _sentence_html(r, self.app_destroyed) if r is not None else ""
        self.tables_html.value = _tables_html(r) if r is not None else ""

    def _on_app_change(self, operation: str, app: str, host: str) -> None:
        """The rehearsed app destroyed: what was measured stays (a measurement, kept in `result` for
        the notebook), said to be of an app that is gone; deployed again, it is not gone."""
        if self.state is not State.RUNNING and self.result is not None and app == self.result.app:
            self.app_destroyed = operation == "destroy"
            self.render()

    # ------------------------------------------------------------------ actions

    def start(self) -> None:
        """Start the rehearsal in the background (bad input is refused before anything starts)."""
        kwargs = dict(experiment=self.folder_box.value.strip(), participants=int(self.participants_box.value),
                      ramp=int(self.ramp_box.value), duration=float(self.duration_box.value),
                      force=bool(self.force_box.value), reporter=self._reporter(), on_level=self._on_level,
                      deploy_settings=self.deploy_settings or None)
        app = self.app_box.value.strip()
        self.result, self.running, self.live_chart, self.stopping = None, None, b"", False
        self.app_destroyed = False

        def work():
            kwargs["flow"] = self._flow()
            self.running = rehearsal.start(app, self.remote(), **kwargs)
            self.render()  # Stop can be clicked now
            return self.running.result()

        def done(result: rehearsal.Rehearsal) -> None:
            self.progress.hide()
            self.result = result
            self.message.clear()

        self.in_background(work, done, reset=STEPS, status="Starting the rehearsal…", disable=[self.start_button],
                           name="rehearsal")

    def stop(self) -> None:
        """End all simulated participants now; the copy is still removed, and what was measured is shown."""
        if self.running is not None and self.state is State.RUNNING:
            self.running.stop()
            self.stopping = True
            self.render()
            self.message.show_info("Stopping: every simulated participant ends now, then the copy is removed…")

    def close(self) -> None:
        self.stop()
        self._connections.release()


__all__ = ["RehearsalPanel", "live_png"]
