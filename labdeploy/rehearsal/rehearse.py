"""A capacity rehearsal: simulated participants against a side-by-side copy of an experiment,
the server measured meanwhile, and the answer (how many participants it holds, how to size it).

The copy: the experiment folder deployed under a name of its own (`<app>-rh`), Dallinger's
recruiter forced to hotair with auto-recruitment off, so the copy never reaches a real person;
every simulated participant's worker id starts with `lbot-` (a PsyNet participant's unique id
too: it is the worker id and the assignment id). The copy starts with the app's
own data (its latest backup restored into the copy's database, see copydata.py), so it is
measured at its real table sizes; `data="empty"` starts it empty. After the rehearsal -
finished, stopped or failed - the copy is destroyed with its database, so no simulated
participant's data (and no copy of the app's) stays anywhere; the app itself is never touched. The rehearsal is refused while real
participants are taking part in any app of the server (the load would slow them down), or when
the app's configuration recruits real people live, unless forced.

The server is measured by the monitoring pieces: the PostgreSQL connection sampler
(watch.sampler) and, every few seconds, the server's CPU and memory and the copy's containers
(docker stats). Load goes only to the registered server's address (load.Target).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd

from .. import names
from ..app import appdata, apps as app_apps, deploy as app_deploy
from ..commands import hostfacts
from ..errors import LabdeployError, ValidationError
from ..experiment import dallinger
from ..progress import LogLine, Progress, Reporter, null_reporter, step
from ..ssh import pool
from ..watch import containers, participants
from ..watch.sampler import Sampler
from . import analysis, copydata, flows, load

COPY_SUFFIX = "-rh"
SAFE_RECRUITERS = {"hotair", "bots"}  # Dallinger recruiters that reach no real person
COPY_CONFIG = {"recruiter": "hotair", "auto_recruit": "false", "mode": "sandbox"}
DEFAULT_INTERVAL = 3.0


class RehearsalRefused(LabdeployError):
    """A rehearsal that could disturb real participants, not started."""

    code = "rehearsal.refused"


class FlowNotWalked(LabdeployError):
    """The simulated participants could not get through the experiment's pages."""

    code = "rehearsal.flow_not_walked"


class Stop(threading.Event):
    """Stops a rehearsal: `set()` ends all of its load at once, from any thread (a Stop button);
    the copy is still removed afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self._runs: list = []

    def attach(self, run: load.LoadRun) -> None:
        self._runs.append(run)
        if self.is_set():
            run.stop()

    def set(self) -> None:
        super().set()
        for run in list(self._runs):
            run.stop()

    @property
    def run(self) -> Optional[load.LoadRun]:
        """The load it stops, once started (what a live view reads)."""
        return self._runs[-1] if self._runs else None


def plan_levels(participants: int, ramp: Union[int, Sequence[int]]) -> list[int]:
    """The ramp's steps: `ramp` evenly spaced counts up to `participants`, or the counts given."""
    if isinstance(ramp, int) and not isinstance(ramp, bool):
        if not 1 <= ramp <= 20:
            raise ValidationError(f"A ramp of {ramp} steps is outside 1-20.", "Use e.g. 3 steps.",
                                  code="invalid.rehearsal.ramp")
        if not isinstance(participants, int) or participants < 1:
            raise ValidationError(f"{participants!r} participants: give a whole number of at least 1.",
                                  "Use e.g. 20.", code="invalid.rehearsal.participants")
        levels = sorted({max(1, math.ceil(participants * k / ramp)) for k in range(1, ramp + 1)})
    else:
        levels = [int(n) for n in ramp]
        if levels != sorted(set(levels)):
            raise ValidationError(f"The ramp {levels} does not rise step by step.", "Give rising counts, e.g. [5, 10, 20].",
                                  code="invalid.rehearsal.ramp")
    return levels


@dataclass
class Rehearsal:
    """What a rehearsal measured, and the answer. Times are UTC; CPU in cores busy (1.0 = one
    core), memory in bytes, latency in seconds.

    Measured:
      hits         one row per request: time, seconds, status (0: no answer), ok, route,
                   error, participants (simultaneous at the time), bot
      schedule     one row per ramp step that ran: participants, start, end
      usage        the server every few seconds: time, server_cpu_cores, server_mem_bytes
      containers   the copy's containers: time, service, cpu_cores, mem_bytes
      connections  the copy's PostgreSQL connections: time, connections

    The answer (index `participants`, simultaneous; 0 is the idle baseline before the load):
      latency      requests, rps, p50, p95, p99, errors, error_rate (analysis.LATENCY_COLUMNS)
      resources    samples, server_cpu_cores, server_mem_bytes, app_cpu_cores, app_mem_bytes,
                   web_cpu_cores, worker_cpu_cores, connections (means; analysis.RESOURCE_COLUMNS)
      costs        index `resource`: base (at 0), per_participant (fitted slope), r2, points, unit
      recommendation  analysis.Recommendation (participants, web_workers, worker_processes,
                   connection_limit, memory_gb, ...); `sentence` says it in words
      data         copydata.CopyData: what the copy started with (tables: table, rows)
      outcomes     one row per simulated participant's round that ended: time, bot, worker_id,
                   outcome (completed, ended early, failed), reason, participants;
                   `completion` counts them
    """

    app: str
    copy: str
    flow: str
    hits: pd.DataFrame
    schedule: pd.DataFrame
    usage: pd.DataFrame
    containers: pd.DataFrame
    connections: pd.DataFrame
    facts: analysis.ServerFacts
    stopped: bool = False
    removed: bool = False         # the copy (and every simulated participant's row) is gone
    data: copydata.CopyData = field(default_factory=copydata.CopyData)  # what the copy started with
    outcomes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=load.OUTCOME_COLUMNS))
    latency: pd.DataFrame = field(default=None)
    resources: pd.DataFrame = field(default=None)
    costs: pd.DataFrame = field(default=None)
    recommendation: analysis.Recommendation = field(default=None)

    def __post_init__(self) -> None:
        self.latency = analysis.latency(self.hits, self.schedule)
        self.resources = analysis.resources(self.usage, self.containers, self.connections, self.schedule)
        self.costs = analysis.costs(self.resources)
        self.recommendation = analysis.recommend(self.latency, self.resources, self.costs, self.facts)

    @property
    def sentence(self) -> str:
        return self.recommendation.sentence

    @property
    def completion(self) -> pd.Series:
        """How many simulated participants' rounds completed, ended early or failed."""
        counts = self.outcomes["outcome"].value_counts()
        return pd.Series({o: int(counts.get(o, 0)) for o in load.OUTCOMES}, name="rounds")

    def summary(self) -> str:
        lat = self.latency
        lines = [f"Rehearsal of {self.app} on a copy ({self.copy}, data: {self.data.source}, "
                 f"{self.data.rows} rows), flow {self.flow}" + (" - stopped early" if self.stopped else "") + ":",
                 lat.to_string(float_format=lambda v: f"{v:.3f}") if len(lat) else "(no requests)",
                 self.costs[["base", "per_participant", "unit"]].to_string(float_format=lambda v: f"{v:.4g}"),
                 "Simulated participants' rounds: " + ", ".join(f"{n} {o}" for o, n in self.completion.items()),
                 self.sentence]
        return "\n".join(lines)

    def plot(self, fig=None):
        """Latency and errors against participants, and resources against participants."""
        from . import plots

        return plots.plot(self, fig)


# ------------------------------------------------------------------ measuring the server

class _Usage:
    """The server's CPU and memory and the copy's containers, every `interval` seconds, in a
    thread; a failed sample is skipped (a gap), never an error of the rehearsal."""

    def __init__(self, remote, app: str, interval: float) -> None:
        self.remote, self.app, self.interval = remote, app, interval
        self.usage: list = []
        self.containers: list = []
        self.cores: Optional[int] = None
        self.mem_total: Optional[float] = None
        self._last: Optional[tuple] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="labdeploy-rehearsal-usage")

    def start(self) -> "_Usage":
        self.sample_host()  # the first CPU reading: its counters are the baseline
        try:
            self.sample_containers()  # the idle baseline, taken before any participant arrives
        except Exception:  # noqa: BLE001 - a gap, as in the loop
            pass
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def sample_host(self) -> None:
        res = self.remote.run(hostfacts.usage(), check=False, timeout=30)
        facts = hostfacts.read_usage(res.stdout)
        now = pd.Timestamp.now(tz="UTC")
        self.cores = facts["cores"] or self.cores
        self.mem_total = facts["mem_total"] or self.mem_total
        if facts["busy"] is None:
            return
        if self._last is not None and facts["total"] > self._last[1]:
            share = (facts["busy"] - self._last[0]) / (facts["total"] - self._last[1])
            used = (facts["mem_total"] - facts["mem_available"]) if facts["mem_available"] is not None else float("nan")
            self.usage.append({"time": now, "server_cpu_cores": share * (self.cores or 1), "server_mem_bytes": used})
        self._last = (facts["busy"], facts["total"])

    def sample_containers(self) -> None:
        df = containers.stats(self.remote)
        now = pd.Timestamp.now(tz="UTC")
        for row in df[df["app"] == self.app].itertuples():
            self.containers.append({"time": now, "service": row.service, "cpu_cores": row.cpu_percent / 100.0,
                                    "mem_bytes": row.mem_bytes})

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for sample in (self.sample_host, self.sample_containers):
                try:
                    sample()
                except Exception:  # noqa: BLE001 - a gap in the samples, the rehearsal goes on
                    pass

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        usage = pd.DataFrame(self.usage, columns=["time", "server_cpu_cores", "server_mem_bytes"])
        ctr = pd.DataFrame(self.containers, columns=["time", "service", "cpu_cores", "mem_bytes"])
        return usage, ctr


def _connections(sampler: Sampler, app: str) -> tuple[pd.DataFrame, Optional[int], Optional[int]]:
    frame = sampler.frame
    mine = frame[frame["database"] == names.db_identifier(app)]
    samples = sampler.samples
    # A sample without a row for the database saw no connection of it: 0, not missing.
    ok = samples[samples["ok"].astype(bool)][["time"]]
    counts = ok.merge(mine.groupby("time", as_index=False)["connections"].sum(), on="time", how="left").fillna(0)
    maxc = pd.to_numeric(samples["max_connections"], errors="coerce").dropna()
    limit = pd.to_numeric(mine["role_limit"], errors="coerce").dropna()
    limit = limit[limit > 0]
    return (counts[["time", "connections"]].reset_index(drop=True),
            int(maxc.iloc[-1]) if len(maxc) else None, int(limit.iloc[-1]) if len(limit) else None)


# ------------------------------------------------------------------ safety

def _is_dallinger(experiment: Path) -> bool:
    return dallinger.is_experiment_folder(experiment) and not (experiment / "Procfile").is_file()


def refuse_live_recruiter(app: str, experiment: Path, config: dict, force: bool) -> None:
    """Refused (unless forced) when the app's own configuration recruits real people live
    (read here, before anything connects)."""
    if not force and _is_dallinger(experiment):
        settings = {**dallinger.read_config_file(experiment / "config.txt"), **{k: str(v) for k, v in config.items()}}
        recruiter, mode = settings.get("recruiter", "hotair").strip(), settings.get("mode", "").strip()
        if mode == "live" and recruiter not in SAFE_RECRUITERS:
            raise RehearsalRefused(
                f"{app} recruits real participants ({recruiter}, live). Its copy would not (its recruiter is "
                "switched to hotair), but the load shares the server with the live study; nothing was started.",
                "Rehearse before recruitment opens or after it closes, or force it.")


def refuse_if_working(remote, force: bool) -> None:
    """Refused (unless forced) while real people take part in any app of the server."""
    if force:
        return
    working = {a: n for a, n in participants.working_all(remote).items() if n}
    if working:
        listed = ", ".join(f"{a} ({n})" for a, n in sorted(working.items()))
        raise RehearsalRefused(
            f"Participants are taking part on {remote.host} right now: {listed}. A rehearsal's load would slow "
            "them down; nothing was started.",
            "Rehearse when nobody is taking part, on another server, or force it if those participants are "
            "yours and you accept the slowdown.")


def _copy_name(app: str, copy_name: Optional[str]) -> str:
    if copy_name is not None:
        return names.app_name(copy_name)
    return names.app_name(app[:names.APP_MAX - len(COPY_SUFFIX)] + COPY_SUFFIX)


def _refuse_existing(remote, copy: str) -> None:
    listing = app_apps.apps(remote)
    if copy in set(listing["app"]) or appdata.kept(remote, copy).any:
        raise RehearsalRefused(f"An app or data named {copy!r} exists on {remote.host}; a rehearsal's copy needs a "
                               "name of its own and nothing was started.",
                               "Remove that app (with its data) if it is a rehearsal's leftover, or name the copy "
                               "otherwise.")


def _remove_copy(remote, copy: str, report: Reporter) -> bool:
    with step(report, "Remove the copy", f"{copy}, its database and every simulated participant"):
        try:
            app_apps.destroy(copy, remote, confirm=True, remove_data=True, export_check=False, remove_backups=True,
                             force=True, reporter=report)
        except app_deploy.UnknownApp:
            pass
    # Gone means gone with its data: the copy's database holds a copy of the app's rows.
    return copy not in set(app_apps.apps(remote)["app"]) and not appdata.kept(remote, copy).any


# ------------------------------------------------------------------ the rehearsal

@dataclass
class _Plan:
    app: str
    experiment: Path
    levels: list
    step_seconds: float
    flow: object
    flow_name: str
    settings: dict
    interval: float
    data: str = "latest"
    think: float = 1.0


def plan(app: str, experiment, participants: int, ramp, duration: float, flow, think: float, interval: float,
         deploy_settings: Optional[dict], data: str = "latest") -> _Plan:
    """Every input checked, before anything connects."""
    app = names.app_name(app)
    experiment = Path(experiment)
    if not experiment.is_dir():
        raise ValidationError(f"{experiment} is not an experiment folder.",
                              "Give the folder the app was deployed from: its copy is deployed from it.",
                              code="invalid.rehearsal.experiment")
    levels = plan_levels(participants, ramp)
    copydata.check_choice(data)
    if not isinstance(duration, (int, float)) or not duration > 0:
        raise ValidationError(f"A duration of {duration!r} seconds is not a positive number.", "Use e.g. 60 seconds.",
                              code="invalid.rehearsal.duration")
    step_seconds = float(duration) / len(levels)
    load.check_bounds(levels, step_seconds)
    if not interval > 0:
        raise ValidationError(f"A sampling interval of {interval!r} s is not positive.", "Use e.g. 3 seconds.",
                              code="invalid.rehearsal.interval")
    load.check_think(think)  # a flow function's think time too (a described flow checks its own)
    settings = dict(deploy_settings or {})
    if _is_dallinger(experiment):
        settings["config"] = {**dict(settings.get("config") or {}), **COPY_CONFIG}
        if flow is None:
            flow = flows.psynet if dallinger.recognise(experiment).kind == "psynet" else flows.dallinger(think)
    elif flow is None:
        raise ValidationError("This experiment is not a Dallinger or PsyNet one, so the rehearsal does not know what "
                              "its participants do.", "Describe the flow: the requests a participant makes, in "
                              "order, with placeholders.", code="invalid.rehearsal.flow")
    flow = load.as_flow(flow, think if not isinstance(flow, load.Flow) else None)
    name = flow.name if isinstance(flow, load.Flow) else getattr(flow, "__name__", "custom")
    return _Plan(app, experiment, levels, step_seconds, flow, name, settings, float(interval), data, float(think))


def refuse_unwalked(run: load.LoadRun, app: str) -> None:
    """A clear error when the simulated participants could not walk the experiment's pages at
    all (every round stopped at a page they cannot answer, none answered one): the
    measurements would be of an entry page, not of the experiment. A server failing under
    load is no such case: that is the error-rate curve."""
    out = run.outcomes
    if run.stopped or out.empty or (out["outcome"] == "completed").any():
        return
    hits = run.hits
    if ((hits["route"] == "POST /response") & hits["ok"]).any():
        return
    pages_ = out[out["reason"].str.startswith(flows.PAGE_REASONS)]
    if len(pages_) < len(out):
        return
    reasons = "; ".join(f"{r} ({n}x)" for r, n in pages_["reason"].value_counts().head(3).items())
    raise FlowNotWalked(
        f"The simulated participants could not walk {app}'s pages: {reasons}. Nothing they measured is the "
        "experiment's own work, so there is no answer; the copy was removed.",
        "Describe the flow: the requests a participant makes, in order, with placeholders (a flow description), "
        "or give a function that plays one participant and answers those pages.")


def _drive(remote, copy: str, url: str, p: _Plan, stop: Stop, report: Reporter, timeout: float,
           on_level: Optional[Callable], verify) -> tuple:
    """The load against the copy while the server is sampled; returns what was measured."""
    target = load.Target.for_app(remote.host, url)
    sampler = Sampler(remote, interval=p.interval).start()
    usage = _Usage(remote, copy, p.interval).start()

    def level(k: int, n: int) -> None:
        report(Progress("Simulated participants", k + 1, len(p.levels), unit="steps", item=f"{n} at once"))
        if on_level is not None:
            on_level(k, n)

    think = None if isinstance(p.flow, load.Flow) else p.think  # a described flow carries its own
    run = load.LoadRun(target, p.flow, p.levels, p.step_seconds, think=think, timeout=timeout, on_level=level,
                       verify=verify)
    try:
        stop.wait(2 * p.interval)  # the idle baseline: samples before any participant
        stop.attach(run)
        if not stop.is_set():
            run.start()
        while run.running:
            run.join(1.0)
    finally:
        run.stop()
        run.join(60)
        sampler.stop()
        usage.stop()
    conns, max_conn, role_limit = _connections(sampler, copy)
    usage_df, containers_df = usage.frames()
    facts = analysis.ServerFacts(usage.cores or 1, usage.mem_total or float("nan"), max_conn, role_limit)
    return run, usage_df, containers_df, conns, facts


@pool.closes_what_it_opens
def rehearse(app: str, server, *, experiment, participants: int = 10, ramp: Union[int, Sequence[int]] = 3,
             duration: float = 60.0, flow=None, think: float = 1.0, timeout: float = 30.0,
             copy_name: Optional[str] = None, force: bool = False, stop: Optional[Stop] = None,
             interval: float = DEFAULT_INTERVAL, deploy_settings: Optional[dict] = None,
             reporter: Optional[Reporter] = None, on_level: Optional[Callable[[int, int], None]] = None,
             verify=True, data: str = "latest") -> Rehearsal:
    """Rehearse `app` with simulated participants on a side-by-side copy deployed from
    `experiment`: `ramp` steps (or the counts given) up to `participants` at once, `duration`
    seconds in all; returns the measurements, DataFrames and a recommendation (`.sentence`,
    `.plot()`). `flow`: for apps other than Dallinger and PsyNet, the requests one participant
    makes (a list of steps with placeholders) or an async function of one simulated participant;
    without one, a Dallinger experiment's participants walk Dallinger's participant routes and a
    PsyNet experiment's walk its timeline (flows.psynet; FlowNotWalked when its pages cannot be
    answered). `think`: seconds on each page or between requests, on average. `stop` (a Stop)
    ends the load at once from another thread. `deploy_settings`
    go to the copy's deploy (images, build arguments, config). `data`: what the copy starts
    with - "latest" (default) the app's latest backup on the server, or a fresh one when it has
    none (empty when the server holds no rows of the app), "fresh" a backup taken now, "empty"
    no rows. The copy is removed afterwards, with its database."""
    p = plan(app, experiment, participants, ramp, duration, flow, think, interval, deploy_settings, data)
    report, stop = reporter or null_reporter, stop or Stop()
    refuse_live_recruiter(p.app, p.experiment, dict((deploy_settings or {}).get("config") or {}), force)
    remote = pool.connect(server)
    refuse_if_working(remote, force)
    copy = _copy_name(p.app, copy_name)
    _refuse_existing(remote, copy)
    removed = False
    try:
        with step(report, "The copy's data", {"empty": "none: it starts empty"}.get(p.data, f"{p.app}'s, restored")):
            copied = copydata.fill(remote, p.app, copy, p.data, report)
        settings = {**p.settings, "existing_data": "reuse"} if copied.restored else p.settings
        with step(report, "Deploy the copy", f"{p.experiment.name} as {copy}"):
            deployed = app_deploy.deploy(p.experiment, copy, remote, reporter=report, **settings)
        report(LogLine(f"{len(p.levels)} steps of {p.step_seconds:g} s: {p.levels} simultaneous participants",
                       "rehearsal"))
        run, usage_df, containers_df, conns, facts = _drive(remote, copy, deployed.url, p, stop, report, timeout,
                                                            on_level, verify)
    finally:
        removed = _remove_copy(remote, copy, report)
    refuse_unwalked(run, p.app)
    result = Rehearsal(p.app, copy, p.flow_name, run.hits, run.schedule, usage_df, containers_df, conns, facts,
                       stopped=run.stopped and not run.full, removed=removed, data=copied, outcomes=run.outcomes)
    report(LogLine(result.sentence, "rehearsal"))
    return result


class Running:
    """A rehearsal in a background thread: `stop()` ends its load at once, `result()` waits for
    the answer (or raises what the rehearsal raised)."""

    def __init__(self, app: str, server, **kwargs) -> None:
        self.stop_event = kwargs.pop("stop", None) or Stop()
        self._result: Optional[Rehearsal] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._main, args=(app, server, kwargs), daemon=True,
                                        name="labdeploy-rehearsal")

    def _main(self, app, server, kwargs) -> None:
        try:
            self._result = rehearse(app, server, stop=self.stop_event, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the result
            self._error = exc

    def start(self) -> "Running":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def live(self) -> pd.DataFrame:
        """Latency and errors of the steps finished so far (as Rehearsal.latency; empty before
        the load starts): what a live plot shows while the rehearsal runs."""
        run = self.stop_event.run
        if run is None:
            return analysis.latency(pd.DataFrame(), pd.DataFrame())
        return analysis.latency(run.hits, run.schedule)

    def result(self, timeout: Optional[float] = None) -> Rehearsal:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the rehearsal is still running")
        if self._error is not None:
            raise self._error
        return self._result


def check(app: str, **kwargs) -> None:
    """Refuse bad input for `rehearse` (same keyword arguments) without connecting anywhere."""
    plan(app, kwargs.get("experiment"), kwargs.get("participants", 10), kwargs.get("ramp", 3),
         kwargs.get("duration", 60.0), kwargs.get("flow"), kwargs.get("think", 1.0),
         kwargs.get("interval", DEFAULT_INTERVAL), kwargs.get("deploy_settings"), kwargs.get("data", "latest"))


def start(app: str, server, **kwargs) -> Running:
    """`rehearse` in the background (same arguments); returns a handle with stop() and result()."""
    check(app, **kwargs)  # bad input refused now, in the caller's thread
    return Running(app, server, **kwargs).start()
