"""Progress as values. Long operations take a `reporter` callable and send it these events.

Widgets render them as step lists, progress bars and log panes; the CLI prints them;
tests collect them. A reporter must be cheap and must not raise.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from .redaction import redact


def _mask(event, *fields: str) -> None:
    # Every event's text is masked when the event is made, so no reporter (panel, CLI,
    # log file, test) can show a secret that a server or an app printed.
    for name in fields:
        object.__setattr__(event, name, redact(getattr(event, name)))


@dataclass(frozen=True)
class StepStarted:
    step: str
    detail: str = ""

    def __post_init__(self) -> None:
        _mask(self, "detail")


@dataclass(frozen=True)
class StepFinished:
    step: str
    ok: bool = True
    detail: str = ""

    def __post_init__(self) -> None:
        _mask(self, "detail")


@dataclass(frozen=True)
class Progress:
    step: str
    done: int
    total: Optional[int] = None  # None when the total is unknown
    unit: str = "bytes"
    item: str = ""  # e.g. a layer id or a table name


@dataclass(frozen=True)
class LogLine:
    line: str
    source: str = ""  # e.g. "build", "web", "remote"

    def __post_init__(self) -> None:
        _mask(self, "line")


@dataclass(frozen=True)
class WarningEvent:
    message: str
    hint: str = ""

    def __post_init__(self) -> None:
        _mask(self, "message", "hint")


Event = Union[StepStarted, StepFinished, Progress, LogLine, WarningEvent]
Reporter = Callable[[Event], None]


def human_bytes(n: float) -> str:
    """A byte count as people read it (B, KB, MB, GB, TB; powers of 1024), for every front end."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def null_reporter(event: Event) -> None:
    """The default: ignore everything."""


@dataclass
class Collector:
    """A reporter that keeps every event; handy in tests and notebooks."""

    events: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: type) -> list:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]

    def steps(self) -> list[str]:
        return [e.step for e in self.of(StepFinished)]

    def lines(self) -> list[str]:
        return [e.line for e in self.of(LogLine)]


class step:
    """Context manager that reports StepStarted / StepFinished around a block.

    On an exception the step is reported failed (with the error text) and the exception
    goes on.
    """

    def __init__(self, reporter: Optional[Reporter], name: str, detail: str = "") -> None:
        self.reporter = reporter or null_reporter
        self.name = name
        self.detail = detail

    def __enter__(self) -> "step":
        self.reporter(StepStarted(self.name, self.detail))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.reporter(StepFinished(self.name, True))
        else:
            self.reporter(StepFinished(self.name, False, str(exc)))
        return False
