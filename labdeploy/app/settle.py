"""Did the app's processes start? One snapshot of its containers, and the wait after `compose up`.

A worker or clock that dies on import shows it only after a moment (Docker restarts it and
counts). Waiting a fixed time is both slow (a quick app waits for nothing) and wrong (a heavy
import, like Dallinger's, can take longer than any fixed wait). So the wait watches each
container's CPU time in its cgroup: a process that has finished starting waits for work and
uses (almost) none and none of its threads is running. The worker and clock count as started
once they are running, never restarted, and quiet for a whole sampling interval (the web
process proves itself by answering HTTP). Where the cgroup can't be read, a fixed window is
the fallback.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

from ..commands import appstate
from ..server import layout

SAMPLE_INTERVAL = 0.25  # seconds between two CPU readings
QUIET_SHARE = 0.05      # below 5 % of one core over an interval a process is waiting, not starting
MIN_UP = 0.3            # a process that exits at once has shown it by then (Docker counts the restart)
FIXED_WINDOW = 2.0      # without CPU readings: up this long after `compose up` counts as started
MAX_WAIT = 8.0          # processes busy for longer (serving traffic, a job backlog) count as started

def parse_cpu(text: str) -> Optional[float]:
    """Seconds of CPU time from the script's "n<ns>" / "u<us>", or None when unknown."""
    try:
        if text.startswith("n"):
            return int(text[1:]) / 1e9
        if text.startswith("u"):
            return int(text[1:]) / 1e6
    except ValueError:
        pass
    return None


def parse_snapshot(stdout: str) -> dict[str, dict]:
    """service -> {state, restarts, ip, image, cpu, active} from the script's output."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split(" ")
        if len(parts) != 7:
            continue
        svc, state, restarts, ip, image, cpu, active = parts
        out[svc] = {"state": state, "restarts": int(restarts) if restarts.isdigit() else 0,
                    "ip": "" if ip == "-" else ip, "image": image, "cpu": parse_cpu(cpu),
                    "active": int(active) if active.isdigit() else None}
    return out


def snapshot(remote, app: str) -> dict[str, dict]:
    """The app's containers now (one round trip)."""
    res = remote.run(appstate.containers_now(app), check=False, timeout=60)
    return parse_snapshot(res.stdout)


def crashed(containers: dict[str, dict], image: str, services: Sequence[str] = layout.PROCESS_SERVICES) -> list[str]:
    """The processes of `image` that are missing, stopped or have been restarted."""
    bad = []
    for svc in services:
        c = containers.get(svc)
        if c is None:
            bad.append(f"{svc} (no container)")
        elif c["image"] == image and (c["state"] in ("exited", "dead", "restarting") or c["restarts"] > 0):
            bad.append(f"{svc} ({c['state']}, restarted {c['restarts']}x)")
    return bad


def quiet_services(services: Sequence[str]) -> tuple[str, ...]:
    """The web process proves it has started by answering HTTP; the others can only go quiet."""
    return tuple(svc for svc in services if svc != "web")


def busy(before: dict[str, dict], after: dict[str, dict], seconds: float,
         services: Sequence[str] = layout.PROCESS_SERVICES) -> Optional[list[str]]:
    """The processes that used more than QUIET_SHARE of a core between two snapshots, or had
    a thread running (or waiting for the disk) at either; None when a CPU reading is missing
    (the caller then falls back to the fixed window)."""
    out = []
    for svc in quiet_services(services):
        a, b = before.get(svc), after.get(svc)
        if not a or not b or a["cpu"] is None or b["cpu"] is None:
            return None
        if b["cpu"] < a["cpu"]:  # a new container (restarted): its count began again
            out.append(svc)
        elif (b["cpu"] - a["cpu"]) > QUIET_SHARE * max(seconds, 1e-3):
            out.append(svc)
        elif (a.get("active") or 0) + (b.get("active") or 0) > 0:  # e.g. starting, but starved of CPU
            out.append(svc)
    return out


def wait_started(read: Callable[[], dict], image: str, started_at: float, *, seen: Sequence[tuple] = (),
                 on_crash: Callable[[list[str]], Exception], note: Callable[[str], None] = lambda _text: None,
                 services: Sequence[str] = layout.PROCESS_SERVICES,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Wait until the app's processes have started (see the module's text; call it once the web
    process has answered HTTP, which is its own proof). `read()` takes a snapshot (`snapshot`
    bound to the server and app); `started_at` is the
    monotonic time `compose up` returned; `seen` the (snapshot, time) readings taken since, oldest
    first, which count as samples. Raises on_crash(list) for a process that stopped or
    restarted; `note(text)` hears once that the wait goes on. `services`: the app's processes.
    Returns the last snapshot."""
    prev, prev_t, noted = None, 0.0, False
    read_cpu: set = set()  # processes whose CPU time has been read at least once
    earlier = list(seen)
    while True:
        if earlier:
            snap, now = earlier.pop(0)
        else:
            snap, now = read(), clock()
        bad = crashed(snap, image, services)
        if bad:
            raise on_crash(bad)
        up = now - started_at
        if up >= MAX_WAIT:
            return snap
        read_cpu |= {svc for svc, c in snap.items() if c.get("cpu") is not None}
        # A reading too close to the last one can't tell quiet from a pause: measure from that one.
        judge = prev is not None and now - prev_t >= SAMPLE_INTERVAL / 2
        # A process read before that has no reading now may be exiting this very moment
        # (inspected running, gone before its cgroup was read): no judgement, read again.
        lost = _lost_reading(snap, read_cpu, services)
        if judge and not lost:
            still = busy(prev, snap, now - prev_t, services)
            if still is None:
                if up >= FIXED_WINDOW:
                    return snap
            elif not still and up >= MIN_UP:
                return snap
            elif still and up >= 1.0 and not noted:
                noted = True
                note(f"{', '.join(still)} still busy starting; waiting for {'it' if len(still) == 1 else 'them'} "
                     f"to settle (at most {MAX_WAIT:.0f} s after the start)")
        if (prev is None or judge) and not lost:
            prev, prev_t = snap, now
        if earlier:
            continue
        wake = max(prev_t + SAMPLE_INTERVAL, started_at + MIN_UP)  # from the reading's time, not now
        if lost:
            wake = clock() + SAMPLE_INTERVAL / 2
        elif busy_unknown(snap, services):
            wake = max(wake, started_at + FIXED_WINDOW)
        sleep(max(0.0, wake - clock()))


def _lost_reading(snap: dict[str, dict], read_cpu: set, services: Sequence[str]) -> bool:
    return any(snap.get(svc, {}).get("cpu") is None and svc in read_cpu for svc in quiet_services(services))


def busy_unknown(snap: dict[str, dict], services: Sequence[str] = layout.PROCESS_SERVICES) -> bool:
    """True when some process has no CPU reading (only the fixed window can judge then)."""
    return any(snap.get(svc, {}).get("cpu") is None for svc in quiet_services(services))
