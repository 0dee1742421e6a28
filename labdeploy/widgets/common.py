"""Building blocks shared by the panels: background work, step lists, log panes, messages.

Rules kept here so every panel follows them: core calls run in a background thread; from a
thread only widget values are set (never `with out:`); an exception from the core is shown
in the panel with its hint, never swallowed.
"""

from __future__ import annotations

import enum
import html
import logging
import threading
from collections import deque
from typing import Callable, Iterable, Optional

import ipywidgets as W
import traitlets

from ..errors import LabdeployError
from ..progress import Event, LogLine, Progress, StepFinished, StepStarted, WarningEvent, human_bytes
from .remedies import hint as panel_hint

log = logging.getLogger("labdeploy.widgets")



class State(str, enum.Enum):
    """Where a step or a panel stands. As in AiiDAlab's wizard, the state is held in a traitlet
    and the view is drawn from it by one function, never edited beside it, so it cannot go stale.
    Its value is what the page carries (`data-state`) and what a plain string compares equal to.

    A step: PENDING (not run yet), RUNNING, DONE, FAILED, SKIPPED (not needed this time),
    OPTIONAL (the journey goes on without it). A panel: PENDING (nothing done yet), RUNNING (an
    action runs; another is refused), DONE or FAILED (how its last action ended).
    """

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    OPTIONAL = "optional"

    def __str__(self) -> str:
        return self.value


STATE_ICONS = {State.PENDING: "○", State.RUNNING: "◐", State.DONE: "●", State.FAILED: "✖", State.SKIPPED: "–",
               State.OPTIONAL: "◌"}
STATE_COLORS = {State.PENDING: "#5f6368", State.RUNNING: "#1a73e8", State.DONE: "#188038", State.FAILED: "#c5221f",
                State.SKIPPED: "#5f6368", State.OPTIONAL: "#8a4b00"}

# One responsive layout for every panel. A field is its label plus an input of at least
# MIN_INPUT_PX; the form keeps that width and the step list moves below it when the notebook is
# narrow (a laptop with JupyterLab's file browser open), instead of squeezing the inputs.
LABEL_PX = 140
MIN_INPUT_PX = 240
FIELD_MIN_PX = LABEL_PX + 8 + MIN_INPUT_PX + 8  # label, its margin, the input, the widget's margins
FIELD_STYLE = {"description_width": f"{LABEL_PX}px"}


def field_layout(wide: bool = False) -> W.Layout:
    """Full width of the form, never narrower than a readable input, not endless on a wide screen."""
    # "auto" (not 100%): a stretched flex item, so the widget's own margins stay inside the panel.
    return W.Layout(width="auto", min_width=f"{FIELD_MIN_PX}px", max_width="860px" if wide else "640px")


def text_field(description: str, value: str = "", placeholder: str = "", *, wide: bool = False,
               password: bool = False, address: bool = False) -> W.Text:
    """A labelled text (or password) field in the shared layout; the placeholder is also its
    tooltip, so help text cut by a narrow box can still be read. `address`: the value is sent
    when typing ends (Enter or leaving the box), not at every keystroke."""
    kind = W.Password if password else W.Text
    box = kind(value=value, description=description, placeholder=placeholder, style=dict(FIELD_STYLE),
               layout=field_layout(wide), continuous_update=not address)
    if placeholder:
        box.tooltip = placeholder
    return box


def choice_field(box: W.Widget, wide: bool = False) -> W.Widget:
    """A dropdown or number box in the shared layout (the same label width, the same minimum)."""
    box.style.description_width = f"{LABEL_PX}px"
    box.layout = field_layout(wide)
    return box


def form_beside_steps(form: Iterable[W.Widget], steps: W.Widget) -> W.Box:
    """The form on the left and the step list on its right, or below it when the panel is narrower
    than both need (flex wrap): the form never shrinks below a readable field."""
    left = W.VBox(list(form), layout=W.Layout(flex="3 1 460px", min_width=f"{FIELD_MIN_PX}px",
                                              overflow="visible"))
    steps.layout.flex = "2 1 260px"
    steps.layout.min_width = "0"  # long step messages wrap instead of widening the column
    steps.layout.margin = "0 0 6px 12px"
    box = W.Box([left, steps], layout=W.Layout(display="flex", flex_flow="row wrap", align_items="flex-start",
                                               width="100%", overflow="visible"))
    box.add_class("labdeploy-form")
    return box


def name_in_notebook(obj: object, fallback: str) -> str:
    """The notebook variable that holds `obj` (so a message can name it as the researcher wrote
    it), else `fallback`."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        names = [k for k, v in (shell.user_ns.items() if shell is not None else ()) if v is obj and not k.startswith("_")]
    except Exception:  # noqa: BLE001 - outside IPython: the fallback is as good
        names = []
    return names[0] if names else fallback


def server_choices(server=None) -> tuple[list, dict]:
    """A server picker's options: the server handed in (a registered name, a `Server` or a
    connected `Remote`) first, then every registered server; and each option's label -> what
    to connect to (a name is looked up in the notebook's connection pool when used)."""
    options, chosen = [], {}
    if server is not None and not isinstance(server, str):
        label = getattr(server, "label", None) or getattr(server, "name", None) or str(server)
        chosen[label] = server
        options.append(label)
    if isinstance(server, str):
        chosen[server] = server
        options.append(server)
    try:
        from ..ssh import servers as _servers

        registered = [s.name for s in _servers.list_servers()]
    except LabdeployError:  # an unreadable registry: the server handed in is enough
        registered = []
    for name in registered:
        if name not in chosen:
            chosen[name] = name
            options.append(name)
    return options, chosen


def plural(n: int, word: str, words: str = "") -> str:
    """'1 row', '2 rows'."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def button_row(*children: W.Widget) -> W.HBox:
    """Buttons side by side, wrapping onto a second line rather than being cut off."""
    return W.HBox(list(children), layout=W.Layout(flex_flow="row wrap", align_items="center", overflow="visible"))


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


def error_html(exc: BaseException, **context) -> str:
    """An exception as a short red message with what to do in the panels' words (its remedy,
    worded with the panel's `context` where the error does not say), for a message area."""
    if isinstance(exc, LabdeployError):
        msg, hint = exc.message, panel_hint(exc, **context)
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

    def show_error(self, exc: BaseException, **context) -> None:
        self.value = error_html(exc, **context)

    def show_ok(self, text: str) -> None:
        self.value = ok_html(text)

    def show_info(self, text: str) -> None:
        self.value = info_html(text)

    def show_warning(self, text: str, hint: str = "") -> None:
        self.value = warning_html(text, hint)

    def clear(self) -> None:
        self.value = ""


class Step(traitlets.HasTraits):
    """One step: its state and a detail; a StepList draws itself again when either changes."""

    name = traitlets.Unicode()
    state = traitlets.UseEnum(State, default_value=State.PENDING)
    detail = traitlets.Unicode("")


def step_html(step: Step, title: str) -> str:
    """The one view of a step: icon, colour, words and detail follow from its state alone."""
    state = step.state
    icon, color = STATE_ICONS[state], STATE_COLORS[state]
    det = f" <span style='color:#444'>— {html.escape(step.detail)}</span>" if step.detail else ""
    return (f"<div class='labdeploy-step' data-step='{html.escape(step.name)}' data-state='{state.value}' "
            "style='overflow-wrap:anywhere;line-height:1.45;margin:1px 0'>"
            f"<span style='color:{color}'>{icon}</span> {html.escape(title)} "
            f"<span style='color:{color};font-size:90%'>({state.value})</span>{det}</div>")


class StepList(W.HTML):
    """Named steps, each a `Step` with a `State` and a detail; the list is drawn from them."""

    def __init__(self, steps: Iterable[str] = (), titles: Optional[dict] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.titles = dict(titles or {})  # a step's words for the researcher; its name stays the key
        self._lock = threading.Lock()
        self._steps: dict[str, Step] = {}
        self.reset(steps)

    def _new(self, name: str) -> Step:
        step = Step(name=name)
        step.observe(lambda _change: self._render(), names=["state", "detail"])
        return step

    def reset(self, steps: Optional[Iterable[str]] = None) -> None:
        with self._lock:
            names = list(steps) if steps is not None else list(self._steps)
            self._steps = {s: self._new(s) for s in names}
        self._render()

    def step(self, name: str) -> Step:
        """The step called `name` (added at the end if the list does not have it)."""
        with self._lock:
            if name not in self._steps:
                self._steps[name] = self._new(name)
            return self._steps[name]

    def set(self, step: str, state, detail: str = "") -> None:
        """`state` is a `State` or its value ("done")."""
        s = self.step(step)
        with s.hold_trait_notifications():
            s.state, s.detail = State(state), detail
        self._render()  # a step added by this call is drawn even when its state did not change

    def skip_pending(self, detail: str = "not needed this time") -> None:
        """After an operation ended: the steps it did not need say so, instead of waiting forever."""
        for name, state in self.states.items():
            if state is State.PENDING:
                self.set(name, State.SKIPPED, detail)

    def state(self, step: str) -> State:
        with self._lock:
            s = self._steps.get(step)
        return s.state if s is not None else State.PENDING

    @property
    def states(self) -> dict[str, State]:
        with self._lock:
            return {k: s.state for k, s in self._steps.items()}

    def _render(self) -> None:
        with self._lock:
            rows = [step_html(s, self.titles.get(name, name)) for name, s in self._steps.items()]
        self.value = "<div class='labdeploy-steps'>" + "".join(rows) + "</div>"


class LogPane(W.HTML):
    """A read-only log that keeps the last `max_lines` lines and shows the newest. Safe to append
    from threads.

    The pane is a column-reverse flex box: its scroll origin is the bottom, so it stays on the
    newest line as lines arrive, and where the researcher scrolled up to read stays put (no
    JavaScript needed in JupyterLab). Dark text on a light ground, not a disabled box's grey.
    `text` is the plain text.
    """

    def __init__(self, max_lines: int = 400, height: str = "160px", **kwargs) -> None:
        given = kwargs.pop("layout", None)
        height = getattr(given, "height", None) or height
        super().__init__(layout=W.Layout(width="100%", height=height, overflow="hidden auto", flex_flow="column-reverse",
                                         align_items="stretch", border="1px solid #c8c8c8", padding="2px 6px"),
                         **kwargs)
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._lock = threading.Lock()
        self.add_class("labdeploy-log")
        self.layout.display = "none"  # an empty box is clutter: shown with its first line

    @property
    def text(self) -> str:
        with self._lock:
            return "\n".join(self._lines)

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            text = "\n".join(self._lines)
        self.value = ("<pre class='labdeploy-log-text' style='margin:0;white-space:pre-wrap;overflow-wrap:anywhere;"
                      "line-height:1.4;font-size:12px;color:#1f1f1f;font-family:var(--jp-code-font-family,monospace)'>"
                      f"{html.escape(text)}</pre>")
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


class Panel(traitlets.HasTraits):
    """What every panel shares: it shows its `.widget` when it is a cell's value, and runs its
    actions in the background with `in_background` (the thread of the latest one is
    `.last_task`; tests join it).

    Its `state` (a `State` in a traitlet) says whether an action runs and how the last one ended.
    The view follows it: entering a state says so in the message (RUNNING: the action's status,
    FAILED: the error), and `render()` draws the rest — the buttons an action holds, then
    `draw()`, the panel's own view of the truth it last read (what is deployed, what is trusted).
    An action ends by re-reading that truth, then sets the state; nothing else writes the view,
    so it cannot outlive what it shows.

    Panels that have them name their parts `message` (every panel), `steps`, `progress` and `log`.
    """

    state = traitlets.UseEnum(State, default_value=State.PENDING)
    widget: W.Widget
    message: Message
    error: Optional[BaseException] = None  # what FAILED shows
    steps: Optional[StepList] = None
    progress: Optional[ProgressRow] = None
    log: Optional[LogPane] = None
    last_task: Optional[threading.Thread] = None
    _running: bool = False
    _started: int = 0  # actions started so far: an ending action sets the state only if it was the last
    _status: str = ""
    _held: tuple = ()  # the widgets the running action holds (disabled while it runs)
    _holdable: tuple = ()  # every widget an action ever held: render() sets each one
    _message_at: Optional[W.Box] = None

    @traitlets.observe("state")
    def _state_changed(self, change) -> None:
        self._entered(change["new"])

    def _entered(self, state: State) -> None:
        if state is State.RUNNING:
            self.message.show_info(self._status) if self._status else self.message.clear()
        elif state is State.FAILED and self.error is not None:
            self.message.show_error(self.error)
        self.render()

    def _enter(self, state: State) -> None:
        """Set the state; entered again when it is the same (an action started by the one ending)."""
        if self.state is state:
            self._entered(state)
        else:
            self.state = state

    def render(self) -> None:
        """Draw the panel from its state and the truth it last read."""
        running = self.state is State.RUNNING
        for w in self._holdable:
            w.disabled = running and any(w is h for h in self._held)
        self.draw()

    def draw(self) -> None:
        """The panel's view of the truth it last read (panels that show some override this)."""

    def message_slot(self) -> W.VBox:
        """Where the message shows until a button of an `actions` row is clicked."""
        holder = W.VBox([self.message], layout=W.Layout(overflow="visible"))
        self._message_at = holder
        return holder

    def actions(self, *children: W.Widget) -> W.VBox:
        """A row of buttons (and their fields); clicking one moves the panel's message right under
        the row, so what an action says (an error above all) shows next to the button that started it."""
        holder = W.VBox([button_row(*children)], layout=W.Layout(overflow="visible"))
        holder.add_class("labdeploy-actions")
        for w in children:
            if isinstance(w, W.Button):
                w.on_click(lambda _b, h=holder: self.message_under(h))
            elif isinstance(w, W.ToggleButton):
                w.observe(lambda _c, h=holder: self.message_under(h), names="value")
        return holder

    def message_under(self, holder: W.Box) -> None:
        """Show the message at the end of `holder` (it leaves where it was: one place at a time)."""
        old = self._message_at
        if old is holder or old is None:  # None: a panel without a message slot keeps it where it is
            return
        old.children = tuple(c for c in old.children if c is not self.message)
        holder.children = (*holder.children, self.message)
        self._message_at = holder

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    @property
    def busy(self) -> bool:
        """An action (an `exclusive` background task) is running."""
        return self._running

    def in_background(self, work: Callable[[], object], on_done: Optional[Callable[[object], object]] = None, *,
                      step: Optional[str] = None, on_error: Optional[Callable[[BaseException], None]] = None,
                      exclusive: bool = True, status: str = "", reset: Optional[Iterable[str]] = None,
                      disable: Iterable[W.Widget] = (), name: str = "action") -> Optional[threading.Thread]:
        """Run `work()` in a background thread (the notebook stays responsive); returns the thread.

        * `exclusive` (actions): refused with a warning while another action of the panel runs;
          the panel is RUNNING (its message cleared, or `status` shown as info), then DONE, or
          FAILED with the error. Background refreshes pass False: no state, the message left alone.
        * `reset`: a new run of a multi-step operation: the step list shows these steps, the log is cleared.
        * `step`: that row of the step list is running, then done (with the detail `on_done`
          returns, or its (state, detail); a "failed" one makes the panel FAILED), or failed with the error.
        * `disable`: these widgets are disabled while it runs.
        * `on_done(result)` runs in the thread and only sets widget values (and the truth the
          panel draws). An exception, in `work` or in `on_done`, is always shown in the panel's
          message with its hint, never swallowed; `on_error(exc)` adds what else the panel shows then.
        """
        if exclusive:
            with _ACTIONS:
                if self._running:
                    self.message.show_warning("Another action is still running.", "Wait for it to finish.")
                    return None
                self._running, self._started = True, self._started + 1
                number = self._started
            self.error, self._status, self._held = None, status, tuple(disable)
            self._holdable += tuple(w for w in self._held if not any(w is h for h in self._holdable))
        if reset is not None:
            self.steps.reset(reset)
            if self.log is not None:
                self.log.clear()
        if step is not None:
            self.steps.set(step, State.RUNNING)
        if exclusive:
            self._enter(State.RUNNING)
        else:
            for w in disable:
                w.disabled = True

        def ended(state: State) -> None:
            if not exclusive:
                for w in disable:
                    w.disabled = False
            elif self._started == number:  # not when what it started runs on
                self._enter(state)

        def free() -> None:
            if exclusive:
                self._running = False  # before on_done: what it starts is not refused

        def done(result) -> None:
            free()
            try:
                outcome = on_done(result) if on_done is not None else None
            except Exception as exc:  # noqa: BLE001 - shown like an error of the work itself
                failed(exc)
                return
            failing = False
            if step is not None and (outcome is not None or self.steps.state(step) is State.RUNNING):
                state, detail = outcome if isinstance(outcome, tuple) else (State.DONE, outcome or "")
                self.steps.set(step, state, detail)
                failing = State(state) is State.FAILED
            ended(State.FAILED if failing else State.DONE)

        def failed(exc: BaseException) -> None:
            free()
            if self.progress is not None:
                self.progress.hide()
            if step is not None:
                self.steps.set(step, State.FAILED, exc.message if isinstance(exc, LabdeployError) else str(exc))
            if exclusive and self._started == number:
                self.error = exc
            else:
                self.message.show_error(exc)
            ended(State.FAILED)
            if on_error is not None:
                on_error(exc)

        self.last_task = run_in_background(work, on_done=done, on_error=failed, name=f"labdeploy-{name}")
        return self.last_task


_ACTIONS = threading.Lock()  # orders the check-and-set of a panel's running action


def titled(title: str, *children: W.Widget, subtitle: str = "") -> W.VBox:
    """A panel frame with a heading."""
    head = W.HTML(f"<h3 style='margin:4px 0'>{html.escape(title)}</h3>" +
                  (f"<div style='color:#555;margin-bottom:6px'>{html.escape(subtitle)}</div>" if subtitle else ""))
    box = W.VBox([head, *children], layout=W.Layout(border="1px solid #ddd", padding="8px", width="100%",
                                                    min_width=f"{FIELD_MIN_PX + 20}px", overflow="visible"))
    box.add_class("labdeploy-panel")
    return box


def server_host(choice) -> Optional[str]:
    """The host a panel's server choice (a registered name, a `Server` or a `Remote`) points at,
    or None when it cannot be told (no choice, an unknown name): an announced change is then
    taken to be about it, since re-reading what is true costs less than showing what is not."""
    if choice is None:
        return None
    if isinstance(choice, str):
        try:
            from ..ssh import servers as _servers

            return _servers.get(choice).host
        except LabdeployError:
            return None
    return getattr(choice, "host", None)


def about_this_server(host: str, choice) -> bool:
    """An app change announced for `host` concerns the panel whose server is `choice`."""
    mine = server_host(choice)
    return mine is None or not host or mine == host


def same_children(tab: W.Tab, pages: list[tuple[str, str]]) -> bool:
    """`tab` already shows these (title, html) pages: a redraw that changes nothing builds nothing."""
    shown = [(tab.get_title(i), getattr(c, "value", None)) for i, c in enumerate(tab.children)]
    return shown == list(pages)


def draw_tabs(tab: W.Tab, pages: list[tuple[str, str]]) -> None:
    """Show `pages` ((title, html) each) in `tab`, and nothing else (no pages: no empty box)."""
    tab.layout.display = "" if pages else "none"
    if same_children(tab, pages):
        return
    tab.children = [W.HTML(body) for _title, body in pages]
    for i, (title, _body) in enumerate(pages):
        tab.set_title(i, title)


def draw_options(picker: W.Widget, options: list) -> None:
    """Give a picker these options, keeping the choice when it is still one of them (else none).
    Equal options change nothing, so a redraw does not reset what was chosen. (A panel that loads
    something when its picker changes ignores the changes made here while it draws.)"""
    def norm(o):
        return tuple(o) if isinstance(o, (tuple, list)) else o

    if [norm(o) for o in picker.options] == [norm(o) for o in options]:
        return
    values = [o[1] if isinstance(o, (tuple, list)) else o for o in options]
    kept = picker.value
    if isinstance(picker, W.SelectMultiple):
        picker.options = options
        picker.value = tuple(v for v in (kept or ()) if v in values)
        return
    picker.index = None  # unchosen first: new options then pick nothing by themselves
    picker.options = options
    picker.value = kept if kept in values else None
