"""The deploy panel's way out of a stale deploy lock: when a deploy, update or destroy is refused
because the app's lock is held, "Break the lock…" is offered; a confirmation says when that is
safe, and only "Yes, break the lock" removes it (labdeploy.server.locks.break_lock).

`LockBreaker` holds its own state (`refused`: the app whose lock refused the action and who held
it; `asking`: the confirmation is open) and draws its rows from it in `draw()`, which the panel's
own `draw()` calls.
"""

from __future__ import annotations

import html
from typing import Optional

import ipywidgets as W

from ..server import locks


def _button(label: str, action: str, style: str = "") -> W.Button:
    b = W.Button(description=label, button_style=style, layout=W.Layout(width="auto"))
    b.add_class(f"labdeploy-deploy-{action}")
    return b


class LockBreaker:
    """Part of a panel (`panel.in_background`, `panel.message`, `panel.remote()`, `panel.actions`)."""

    def __init__(self, panel) -> None:
        self.panel = panel
        self.refused: Optional[tuple[str, Optional[locks.LockInfo]]] = None  # (app, who held its lock)
        self.asking = False
        self.html = W.HTML("")
        self.html.add_class("labdeploy-deploy-lock")
        self.break_button = _button("Break the lock…", "break-lock", "warning")
        self.confirm_button = _button("Yes, break the lock", "confirm-break-lock", "danger")
        self.cancel_button = _button("Cancel", "cancel-break-lock")
        self.break_button.on_click(lambda _: self.ask())
        self.confirm_button.on_click(lambda _: self.confirm())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.widget = panel.actions(self.html, self.break_button, self.confirm_button, self.cancel_button)
        self.draw()

    def offer(self, exc: BaseException, app: str) -> None:
        """After a failed action: a refusal by the deploy lock offers the way out; anything else
        takes the offer back (it no longer describes the last word)."""
        if isinstance(exc, locks.DeployInProgress):
            self.refused, self.asking = (app, exc.info), False
        else:
            self.refused, self.asking = None, False
        self.panel.render()

    def ask(self) -> None:
        self.asking = self.refused is not None
        self.panel.render()

    def cancel(self) -> None:
        self.asking = False
        self.panel.render()

    def confirm(self) -> None:
        if self.refused is None or not self.asking:
            self.panel.message.show_warning("Nothing to confirm.", "Click “Break the lock…” first.")
            return
        app = self.refused[0]
        self.asking = False
        self.panel.render()

        def done(info) -> None:
            self.refused = None
            self.panel.render()
            what = f" ({info.describe()})" if info is not None else " (it was gone already)"
            self.panel.message.show_ok(f"The deploy lock of {app} was broken{what}. Deploy or update again.")

        self.panel.in_background(lambda: locks.break_lock(self.panel.remote(), app, confirm=True), done,
                                 disable=[self.confirm_button, self.cancel_button, self.break_button],
                                 name="deploy-break-lock")

    def draw(self) -> None:
        """The offer, or the confirmation, or nothing: from `refused` and `asking` alone."""
        offered = self.refused is not None
        self.html.value = _lock_html(*self.refused, self.asking) if offered else ""
        self.break_button.layout.display = "" if offered and not self.asking else "none"
        for b in (self.confirm_button, self.cancel_button):
            b.layout.display = "" if offered and self.asking else "none"
        self.widget.children[0].layout.display = "" if offered else "none"


def _lock_html(app: str, info: Optional[locks.LockInfo], asking: bool) -> str:
    holder = html.escape(info.describe()) if info is not None else "an operation labdeploy cannot name"
    if not asking:
        return (f"<div>The deploy lock of <b>{html.escape(app)}</b> is held: {holder}. If nothing of this app is "
                "being deployed (e.g. a laptop was closed mid-deploy), it can be broken:</div>")
    return (f"<div><b style='color:#c5221f'>Break the deploy lock of {html.escape(app)}?</b> Only safe when no "
            "deploy, update or destroy of this app is running anywhere — on this computer or anyone else's. "
            f"It was taken by: {holder}.</div>")
