"""Progress events as values: Collector and step()."""

from __future__ import annotations

import threading

import pytest

from labdeploy.progress import Collector, LogLine, Progress, StepFinished, StepStarted, WarningEvent, null_reporter, step


def test_collector_keeps_events_in_order_and_filters_by_kind():
    c = Collector()
    c(StepStarted("build"))
    c(LogLine("hello", "build"))
    c(Progress("upload", 10, 100))
    c(LogLine("world"))
    c(StepFinished("build"))
    c(WarningEvent("careful", "do this"))
    assert [type(e) for e in c.events] == [StepStarted, LogLine, Progress, LogLine, StepFinished, WarningEvent]
    assert c.lines() == ["hello", "world"]
    assert c.steps() == ["build"]
    assert c.of(Progress) == [Progress("upload", 10, 100)]
    assert c.of(Progress)[0].unit == "bytes" and c.of(Progress)[0].item == ""


def test_collectors_do_not_share_events():
    a, b = Collector(), Collector()
    a(LogLine("x"))
    assert b.events == []


def test_collector_is_thread_safe():
    c = Collector()

    def work(n):
        for i in range(500):
            c(LogLine(f"{n}-{i}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c.lines()) == 4000
    assert len(set(c.lines())) == 4000


def test_step_reports_start_and_success():
    c = Collector()
    with step(c, "upload", "app.tar") as s:
        assert s.name == "upload"
        c(Progress("upload", 1, 2))
    assert c.events == [StepStarted("upload", "app.tar"), Progress("upload", 1, 2), StepFinished("upload", True)]


def test_step_reports_failure_with_error_text_and_reraises():
    c = Collector()
    with pytest.raises(RuntimeError, match="disk full"):
        with step(c, "upload"):
            raise RuntimeError("disk full")
    assert c.events[-1] == StepFinished("upload", False, "disk full")
    assert c.steps() == ["upload"]


def test_step_without_reporter_is_fine():
    with step(None, "quiet"):
        pass
    assert null_reporter(LogLine("x")) is None


def test_events_are_immutable_values():
    e = Progress("s", 1, None)
    with pytest.raises(Exception):
        e.done = 2  # frozen dataclass
    assert Progress("s", 1) == Progress("s", 1, None)
