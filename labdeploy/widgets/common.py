"""Building blocks shared by the panels: background work, step lists, log panes, messages.

Rules kept here so every panel follows them: core calls run in a background thread; from a
thread only widget values are set (never `with out:`); an exception from the core is shown
in the panel with its hint, never swallowed.
"""

from __future__ import annotations

import html
import logging
import threading
from collections import deque
from typing import Callable, Iterable, Optional

import ipywidgets as W

from ..errors import LabdeployError
from ..progress import Event, LogLine, Progress, StepFinished, StepStarted, WarningEvent, human_bytes

log = logging.getLogger("labdeploy.widgets")

STATE_ICONS = {"pending": "○", "running": "◐", "done": "●", "failed": "✖", "skipped": "–"}
STATE_COLORS = {"pending": "#888", "running": "#1a73e8", "done": "#188038", "failed": "#c5221f", "skipped": "#888"}


def run_in_background(fn: Callable[[], object], *, on_done: Optional[Callable[[object], None]] = None,
                      on_error: Optional[Callable[[BaseException], None]] = None,
                      name: str = "labdeploy-panel") -> threading.Thread:
    """Run `fn` in a daemon thread so the notebook stays responsive.

    `on_done(result)` or `on_error(exc)` run in that thread afterwards; they should only set
    widget values. An error in the handlers themselves is logged, not lost silently.
    """

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - shown in the panel, not swallowed
            if on_error is None:
                log.exception("background task failed")
                return
            try:
                on_error(exc)
            except Exception:
                log.exception("error handler failed")
            return
        if on_done is not None:
            try:
                on_done(result)
            except Exception:
                log.exception("completion handler failed")

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def error_html(exc: BaseException) -> str:
    """An exception as a short red message with its hint, for a panel's message area."""
    if isinstance(exc, LabdeployError):
        msg, hint = exc.message, exc.hint
    else:
        msg, hint = f"{type(exc).__name__}: {exc}", "This looks like a bug in labdeploy; please report it."
    body = html.escape(msg).replace("\n", "<br>")
    hint_html = f"<div style='margin-top:4px'><b>What to do:</b> {html.escape(hint)}</div>" if hint else ""
    return (f"<div class='labdeploy-error' style='color:#c5221f;border-left:3px solid #c5221f;"
            f"padding:4px 8px;background:#fce8e6'>{body}{hint_html}</div>")


def ok_html(text: str) -> str:
    return (f"<div class='labdeploy-ok' style='color:#188038;border-left:3px solid #188038;padding:4px 8px;"
            f"background:#e6f4ea'>{html.escape(text)}</div>")


def info_html(text: str) -> str:
    return f"<div class='labdeploy-info' style='color:#444;padding:2px 0'>{html.escape(text)}</div>"


def warning_html(text: str, hint: str = "") -> str:
    extra = f"<div><b>What to do:</b> {html.escape(hint)}</div>" if hint else ""
    return (f"<div class='labdeploy-warning' style='color:#8a4b00;border-left:3px solid #f9ab00;"
            f"padding:4px 8px;background:#fef7e0'>{html.escape(text)}{extra}</div>")


class Message(W.HTML):
    """One line of status: ok / info / warning / error."""

    def show_error(self, exc: BaseException) -> None:
        self.value = error_html(exc)

    def show_ok(self, text: str) -> None:
        self.value = ok_html(text)

    def show_info(self, text: str) -> None:
        self.value = info_html(text)

    def show_warning(self, text: str, hint: str = "") -> None:
        self.value = warning_html(text, hint)

    def clear(self) -> None:
        self.value = ""


class StepList(W.HTML):
    """A list of named steps, each pending / running / done / failed, with a detail."""

    def __init__(self, steps: Iterable[str] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self._steps: dict[str, tuple[str, str]] = {s: ("pending", "") for s in steps}
        self._render()

    def reset(self, steps: Optional[Iterable[str]] = None) -> None:
        with self._lock:
            names = list(steps) if steps is not None else list(self._steps)
            self._steps = {s: ("pending", "") for s in names}
        self._render()

    def set(self, step: str, state: str, detail: str = "") -> None:
        with self._lock:
            self._steps[step] = (state, detail)
        self._render()

    def state(self, step: str) -> str:
        return self._steps.get(step, ("pending", ""))[0]

    @property
    def states(self) -> dict[str, str]:
        return {k: v[0] for k, v in self._steps.items()}

    def _render(self) -> None:
        rows = []
        for name, (state, detail) in list(self._steps.items()):
            icon, color = STATE_ICONS.get(state, "?"), STATE_COLORS.get(state, "#000")
            det = f" <span style='color:#666'>— {html.escape(detail)}</span>" if detail else ""
            rows.append(f"<div class='labdeploy-step' data-step='{html.escape(name)}' data-state='{state}'>"
                        f"<span style='color:{color}'>{icon}</span> {html.escape(name)} "
                        f"<span style='color:{color};font-size:90%'>({state})</span>{det}</div>")
        self.value = "<div class='labdeploy-steps'>" + "".join(rows) + "</div>"


class LogPane(W.Textarea):
    """A read-only log that keeps the last `max_lines` lines. Safe to append from threads."""

    def __init__(self, max_lines: int = 400, **kwargs) -> None:
        kwargs.setdefault("layout", W.Layout(width="100%", height="160px"))
        super().__init__(disabled=True, **kwargs)
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._lock = threading.Lock()
        self.add_class("labdeploy-log")
        self.layout.display = "none"  # an empty box is clutter: shown with its first line

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            text = "\n".join(self._lines)
        self.value = text
        self.layout.display = ""

    def clear(self) -> None:
        with self._lock:
            self._lines.clear()
        self.value = ""
        self.layout.display = "none"


class ProgressRow(W.HBox):
    """A progress bar with a label: 'pushing layer abc… 12.3 / 40.0 MB'."""

    def __init__(self, **kwargs) -> None:
        self.bar = W.FloatProgress(value=0, min=0, max=1, layout=W.Layout(width="50%"))
        self.label = W.Label("")
        super().__init__([self.bar, self.label], **kwargs)
        self.layout.display = "none"  # takes no room while idle

    def update(self, done: float, total: Optional[float], text: str) -> None:
        self.layout.display = ""
        if total:
            self.bar.bar_style = ""
            self.bar.max = float(total)
            self.bar.value = float(min(done, total))
        else:
            self.bar.bar_style = "info"
            self.bar.max = 1.0
            self.bar.value = 1.0
        self.label.value = text

    def hide(self) -> None:
        self.layout.display = "none"  # takes no room while idle


def widget_reporter(steps: Optional[StepList] = None, logpane: Optional[LogPane] = None,
                    progress: Optional[ProgressRow] = None, message: Optional[Message] = None):
    """A core `Reporter` that renders events into the given widgets."""

    def report(event: Event) -> None:
        try:
            if isinstance(event, StepStarted):
                if steps is not None:
                    steps.set(event.step, "running", event.detail)
            elif isinstance(event, StepFinished):
                if steps is not None:
                    steps.set(event.step, "done" if event.ok else "failed", event.detail.splitlines()[0]
                              if event.detail else "")
                if progress is not None:
                    progress.hide()
            elif isinstance(event, Progress):
                if progress is not None:
                    if event.unit == "bytes":
                        text = f"{event.step} {event.item} {human_bytes(event.done)}" + (
                            f" / {human_bytes(event.total)}" if event.total else "")
                    else:
                        text = f"{event.step} {event.item} {event.done}" + (
                            f" / {event.total}" if event.total else "") + f" {event.unit}"
                    progress.update(event.done, event.total, text.replace("  ", " "))
            elif isinstance(event, LogLine):
                if logpane is not None:
                    logpane.append(f"[{event.source}] {event.line}" if event.source else event.line)
            elif isinstance(event, WarningEvent):
                if message is not None:
                    message.show_warning(event.message, event.hint)
                if logpane is not None:
                    logpane.append(f"WARNING: {event.message}")
        except Exception:  # a reporter must never break the operation it reports on
            log.exception("could not render a progress event")

    return report


class Panel:
    """What every panel shares: it shows its `.widget` when it is a cell's value, and keeps
    the thread of its latest background action in `.last_task` (tests join it)."""

    widget: W.Widget
    last_task: Optional[threading.Thread] = None

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    @property
    def busy(self) -> bool:
        return self.last_task is not None and self.last_task.is_alive()


def titled(title: str, *children: W.Widget, subtitle: str = "") -> W.VBox:
    """A panel frame with a heading."""
    head = W.HTML(f"<h3 style='margin:4px 0'>{html.escape(title)}</h3>" +
                  (f"<div style='color:#555;margin-bottom:6px'>{html.escape(subtitle)}</div>" if subtitle else ""))
    box = W.VBox([head, *children], layout=W.Layout(border="1px solid #ddd", padding="8px", width="100%"))
    box.add_class("labdeploy-panel")
    return box
