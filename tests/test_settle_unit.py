"""The wait after `compose up`: parsing the server's readings and the decision rule.

Readings come from a scripted sequence here (the rule is pure); the real readings are
exercised by every deploy test against the testbed (tests/test_deploy*.py)."""

from __future__ import annotations

import pytest

from labdeploy.app import settle


def reading(worker_cpu, clock_cpu, *, worker_state="running", restarts=0, image="new", worker_active=0):
    return {
        "web": {"state": "running", "restarts": 0, "ip": "10.0.0.5", "image": image, "cpu": 9.0, "active": 1},
        "worker": {"state": worker_state, "restarts": restarts, "ip": "", "image": image, "cpu": worker_cpu,
                   "active": worker_active},
        "clock": {"state": "running", "restarts": 0, "ip": "", "image": image, "cpu": clock_cpu, "active": 0},
    }


class Clock:
    """A fake monotonic clock that sleep() advances; each reading costs `cost` seconds."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def run(readings, clock, *, started_at=None, seen=()):
    it = iter(readings)
    calls = []

    def read():
        calls.append(clock.now)
        clock.now += 0.04
        return next(it)

    result = settle.wait_started(read, "new", clock.now if started_at is None else started_at, seen=seen,
                                 on_crash=lambda bad: RuntimeError("; ".join(bad)),
                                 clock=clock, sleep=clock.sleep)
    return result, calls


def test_snapshot_lines_parse_with_both_cgroup_versions_and_missing_values():
    out = ("web running 0 10.213.1.7 labdeploy/x:1 n2500000000 1\n"
           "worker restarting 3 - labdeploy/x:1 u1500000 0\n"
           "clock running 0 - labdeploy/x:1 - -\n"
           "garbage line\n")
    snap = settle.parse_snapshot(out)
    assert snap["web"] == {"state": "running", "restarts": 0, "ip": "10.213.1.7", "image": "labdeploy/x:1",
                           "cpu": 2.5, "active": 1}
    assert snap["worker"]["active"] == 0 and snap["clock"]["active"] is None
    assert snap["worker"]["cpu"] == 1.5 and snap["worker"]["ip"] == "" and snap["worker"]["restarts"] == 3
    assert snap["clock"]["cpu"] is None and "garbage" not in snap
    assert settle.parse_cpu("nxyz") is None and settle.parse_cpu("") is None


def test_quiet_processes_end_the_wait_after_one_interval():
    clock = Clock()
    snap, calls = run([reading(1.0, 2.0), reading(1.001, 2.0)], clock)
    assert len(calls) == 2
    assert clock.now - 100.0 < 0.5  # far below the old fixed 2 s


def test_earlier_readings_count_so_no_new_one_is_needed():
    clock = Clock()
    start = clock.now
    seen = [(reading(1.0, 2.0), start + 0.05), (reading(1.0, 2.0), start + 0.4)]
    clock.now = start + 0.45
    snap, calls = run([], clock, started_at=start, seen=seen)
    assert calls == [] and clock.slept == 0


def test_a_busy_worker_is_waited_for_then_its_crash_is_reported():
    clock = Clock()
    busy = [reading(0.25 * i, 2.0) for i in range(6)]  # a core's worth of CPU: still importing
    crashed = reading(0.0, 2.0, worker_state="restarting", restarts=1)
    notes = []
    it = iter(busy + [crashed])

    def read():
        clock.now += 0.04
        return next(it)

    with pytest.raises(RuntimeError, match=r"worker \(restarting, restarted 1x\)"):
        settle.wait_started(read, "new", clock.now, on_crash=lambda bad: RuntimeError("; ".join(bad)),
                            note=notes.append, clock=clock, sleep=clock.sleep)
    assert notes and "worker still busy" in notes[0]


def test_without_cpu_readings_the_fixed_window_decides():
    clock = Clock()
    start = clock.now
    snap, calls = run([reading(None, None), reading(None, None)], clock)
    assert clock.now - start >= settle.FIXED_WINDOW
    assert len(calls) == 2


def test_processes_busy_for_ever_are_accepted_at_the_cap():
    clock = Clock()
    start = clock.now
    readings = [reading(0.3 * i, 0.3 * i) for i in range(100)]
    run(readings, clock)
    assert settle.MAX_WAIT <= clock.now - start < settle.MAX_WAIT + 0.5


def test_a_restarted_container_counts_as_busy_not_quiet():
    before, after = reading(5.0, 2.0), reading(0.01, 2.0)
    assert settle.busy(before, after, 0.25) == ["worker"]
    assert settle.busy(reading(1.0, None), reading(1.0, 2.0), 0.25) is None


def test_only_the_new_image_counts_as_crashed():
    ctrs = {"web": {"state": "restarting", "restarts": 2, "ip": "", "image": "new"},
            "worker": {"state": "running", "restarts": 0, "ip": "", "image": "new"},
            "clock": {"state": "exited", "restarts": 0, "ip": "", "image": "old"}}
    assert settle.crashed(ctrs, "new") == ["web (restarting, restarted 2x)"]
    assert settle.crashed({}, "new") == ["web (no container)", "worker (no container)", "clock (no container)"]


def test_an_app_without_a_clock_is_judged_on_web_and_worker():
    snap = reading(1.0, 2.0)
    del snap["clock"]
    assert settle.crashed(snap, "new", ("web", "worker")) == []
    assert settle.crashed(snap, "new") == ["clock (no container)"]
    assert settle.busy(snap, snap, 0.25, ("web", "worker")) == []


def test_a_reading_too_close_to_the_last_is_not_taken_for_quiet():
    clock = Clock()
    start = clock.now
    # Two readings 0.05 s apart with no CPU used: too short to call the worker quiet.
    seen = [(reading(1.0, 2.0), start + 0.30), (reading(1.0, 2.0), start + 0.35)]
    clock.now = start + 0.36
    snap, calls = run([reading(1.0, 2.0)], clock, started_at=start, seen=seen)
    assert len(calls) == 1 and calls[0] >= start + 0.30 + settle.SAMPLE_INTERVAL


def test_a_worker_starved_of_cpu_is_not_taken_for_quiet():
    # No CPU time used, but a thread is runnable: it waits for a CPU, not for work.
    assert settle.busy(reading(1.0, 2.0), reading(1.0, 2.0, worker_active=1), 0.25) == ["worker"]
    assert settle.busy(reading(1.0, 2.0), reading(1.0, 2.0), 0.25) == []


def test_a_worker_that_exits_while_it_is_read_is_read_again_not_taken_for_started():
    # Inspected as running, gone before its cgroup was read: no CPU figure for a process that
    # had one a moment ago. That is no reason for the fixed window to call it started.
    clock = Clock()
    busy = [reading(0.25 * i, 2.0) for i in range(1, 12)]  # busy for ~2.5 s
    vanishing = reading(None, 2.0)
    crashed = reading(0.0, 2.0, worker_state="restarting", restarts=1)
    it = iter(busy + [vanishing, crashed])

    def read():
        clock.now += 0.04
        return next(it)

    with pytest.raises(RuntimeError, match="worker"):
        settle.wait_started(read, "new", clock.now, on_crash=lambda bad: RuntimeError("; ".join(bad)),
                            clock=clock, sleep=clock.sleep)
