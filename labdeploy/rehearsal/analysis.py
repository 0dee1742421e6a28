"""A rehearsal's measurements turned into the answer (pure: no server, unit-tested).

Inputs are what a rehearsal recorded: every request (load.LoadRun.hits), the ramp's steps
(schedule), and the server's samples over time (server CPU and memory, the app's containers,
its PostgreSQL connections). Each sample and request belongs to the step it fell in (samples
before the first step are the idle baseline, 0 participants). From those, per number of
simultaneous participants: latency quantiles and error rate, resource use; a straight-line fit
of each resource against participants (its slope is the cost of one participant); and a
recommendation in plain words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

P95_LIMIT = 1.0          # seconds: "held" means p95 under this
ERROR_LIMIT = 0.01       # and fewer errors than this share of requests
HEADROOM = 0.8           # a server is "full" at 80% of its CPU, memory or connections
RULE_GB = 5.0            # PsyNet's rule of thumb: 5 GB per simultaneous experiment
SETTLE = 0.2             # the first 20% of a step (at most 3 s) is the ramp settling, not the level

LATENCY_COLUMNS = ["requests", "rps", "p50", "p95", "p99", "errors", "error_rate"]
RESOURCE_COLUMNS = ["samples", "server_cpu_cores", "server_mem_bytes", "app_cpu_cores", "app_mem_bytes",
                    "web_cpu_cores", "worker_cpu_cores", "connections"]
COST_UNITS = {"app_cpu_cores": "CPU cores", "server_cpu_cores": "CPU cores", "app_mem_bytes": "bytes",
              "server_mem_bytes": "bytes", "connections": "connections", "web_cpu_cores": "CPU cores",
              "worker_cpu_cores": "CPU cores"}


def _level_at(times: pd.Series, schedule: pd.DataFrame, settle: bool) -> pd.Series:
    """The participants of the step each time fell in (0 before the first; NaN between steps,
    after the last, or while a step settles)."""
    out = pd.Series(np.nan, index=times.index, dtype=float)
    if schedule.empty:
        return out
    out[times < schedule["start"].iloc[0]] = 0.0
    for row in schedule.itertuples():
        start = row.start
        if settle:
            start = start + min(pd.Timedelta(seconds=3), (row.end - row.start) * SETTLE)
        out[(times >= start) & (times <= row.end)] = float(row.participants)
    return out


def latency(hits: pd.DataFrame, schedule: pd.DataFrame) -> pd.DataFrame:
    """Per simultaneous participants: requests, rps, p50/p95/p99 (seconds), errors, error_rate."""
    if hits.empty or schedule.empty:
        return pd.DataFrame(columns=LATENCY_COLUMNS, index=pd.Index([], name="participants"))
    durations = schedule.assign(seconds=(schedule["end"] - schedule["start"]).dt.total_seconds()) \
        .groupby("participants")["seconds"].sum()
    df = hits[hits["participants"] > 0]
    rows = {}
    for n, group in df.groupby("participants"):
        seconds = group["seconds"]
        errors = int((~group["ok"].astype(bool)).sum())
        rows[int(n)] = {"requests": len(group), "rps": len(group) / max(float(durations.get(n, 0.0)), 1e-9),
                        "p50": seconds.quantile(0.5), "p95": seconds.quantile(0.95), "p99": seconds.quantile(0.99),
                        "errors": errors, "error_rate": errors / len(group)}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=LATENCY_COLUMNS).sort_index()
    out.index.name = "participants"
    return out


def resources(usage: pd.DataFrame, containers: pd.DataFrame, connections: pd.DataFrame,
              schedule: pd.DataFrame) -> pd.DataFrame:
    """Per simultaneous participants (0: idle, before the load), the mean of each resource:
    the server's CPU (cores busy) and memory in use, the app's containers' CPU and memory (all,
    web, worker), the app's PostgreSQL connections."""
    parts = []
    if not usage.empty:
        u = usage.assign(participants=_level_at(usage["time"], schedule, True)).dropna(subset=["participants"])
        parts.append(u.groupby("participants")[["server_cpu_cores", "server_mem_bytes"]].mean())
        parts.append(u.groupby("participants").size().rename("samples"))
    if not containers.empty:
        c = containers.assign(participants=_level_at(containers["time"], schedule, True)) \
            .dropna(subset=["participants"])
        per_sample = c.groupby(["participants", "time"]).agg(app_cpu_cores=("cpu_cores", "sum"),
                                                             app_mem_bytes=("mem_bytes", "sum"))
        parts.append(per_sample.groupby("participants").mean())
        for service in ("web", "worker"):
            s = c[c["service"] == service].groupby(["participants", "time"])["cpu_cores"].sum()
            parts.append(s.groupby("participants").mean().rename(f"{service}_cpu_cores"))
    if not connections.empty:
        k = connections.assign(participants=_level_at(connections["time"], schedule, True)) \
            .dropna(subset=["participants"])
        parts.append(k.groupby("participants")["connections"].mean())
    out = pd.concat(parts, axis=1) if parts else pd.DataFrame()
    out = out.reindex(columns=RESOURCE_COLUMNS)
    out.index = out.index.astype(int)
    out.index.name = "participants"
    return out.sort_index()


def costs(res: pd.DataFrame) -> pd.DataFrame:
    """Per resource: base (at 0 participants), per_participant (the fitted slope), r2, points,
    unit. A resource measured at fewer than two participant counts gets no slope (NaN)."""
    rows = []
    for column, unit in COST_UNITS.items():
        if column not in res:
            continue
        s = res[column].dropna()
        base = slope = r2 = float("nan")
        if s.index.nunique() >= 2:
            x, y = s.index.to_numpy(dtype=float), s.to_numpy(dtype=float)
            slope, base = np.polyfit(x, y, 1)
            fitted = base + slope * x
            total = float(((y - y.mean()) ** 2).sum())
            r2 = 1 - float(((y - fitted) ** 2).sum()) / total if total > 0 else 1.0
        elif len(s):
            base = float(s.iloc[0])
        rows.append({"resource": column, "base": float(base), "per_participant": float(slope), "r2": float(r2),
                     "points": int(s.index.nunique()), "unit": unit})
    return pd.DataFrame(rows, columns=["resource", "base", "per_participant", "r2", "points", "unit"]) \
        .set_index("resource")


@dataclass
class ServerFacts:
    cores: int
    mem_total_bytes: float
    max_connections: Optional[int] = None
    role_limit: Optional[int] = None


@dataclass
class Recommendation:
    participants: int                # held at p95 < 1 s with < 1% errors (measured, or projected)
    measured_max: int                # the most simultaneous participants tried
    held_measured: int               # the most that held, among those tried
    projected: Optional[int]         # where the fitted costs run into the server's limits
    limited_by: str                  # what runs out first ("latency", "CPU", "memory", "connections")
    web_workers: int
    worker_processes: int
    connection_limit: int
    memory_gb: float                 # the app's memory at `participants`
    rule_gb: float = RULE_GB
    sentence: str = field(default="")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def held(lat: pd.DataFrame, p95_limit: float = P95_LIMIT, error_limit: float = ERROR_LIMIT) -> int:
    """The most participants for which this and every smaller count held (0: none did)."""
    best = 0
    for n, row in lat.sort_index().iterrows():
        if not (row["p95"] < p95_limit and row["error_rate"] < error_limit):
            break
        best = int(n)
    return best


def _at(cost: pd.DataFrame, resource: str, n: float) -> float:
    if resource not in cost.index:
        return float("nan")
    row = cost.loc[resource]
    slope = row["per_participant"] if not math.isnan(row["per_participant"]) else 0.0
    return float(row["base"] + slope * n)


def _projected(cost: pd.DataFrame, facts: ServerFacts) -> tuple[Optional[int], str]:
    """The participants at which CPU, memory or connections reach HEADROOM of the server's:
    the server's use at rest plus what the app adds per participant (the app's own slope: the
    server's also moves with whatever else runs there)."""
    limits = [("CPU", "server_cpu_cores", "app_cpu_cores", facts.cores),
              ("memory", "server_mem_bytes", "app_mem_bytes", facts.mem_total_bytes),
              ("connections", "connections", "connections", facts.role_limit or facts.max_connections)]
    found = []
    for label, base_of, slope_of, capacity in limits:
        if not capacity or capacity != capacity or base_of not in cost.index or slope_of not in cost.index:
            continue
        base, slope = cost.loc[base_of, "base"], cost.loc[slope_of, "per_participant"]
        if not (slope > 0) or base != base:
            continue
        found.append((max(0, int((HEADROOM * capacity - base) / slope)), label))
    return min(found) if found else (None, "")


def _workers(lat: pd.DataFrame, cost: pd.DataFrame, n: int, facts: ServerFacts) -> tuple[int, int, int]:
    """Web workers W, worker processes K, database connection limit C for `n` participants.

    W by Little's law: requests in flight = request rate x time to serve one; both measured (the
    rate per participant, the median at the lightest load), doubled for bursts; more than
    2 x cores + 1 processes only compete for the CPU. K: the worker's CPU at `n` with 30% to
    spare. C: the connections fitted at `n`, half again for bursts, at least one per process."""
    light = lat.sort_index().iloc[0] if len(lat) else None
    if light is None:
        return 2, 1, 10
    rate = float((lat["rps"] / lat.index.to_series().clip(lower=1)).median())
    in_flight = rate * n * float(light["p50"])
    web = int(min(max(2, math.ceil(2 * in_flight)), 2 * facts.cores + 1))
    worker_cpu = _at(cost, "worker_cpu_cores", n)
    worker = max(1, math.ceil(worker_cpu / 0.7)) if not math.isnan(worker_cpu) else 1
    conns = _at(cost, "connections", n)
    conn_limit = max(web + worker + 2, math.ceil(1.5 * conns) if not math.isnan(conns) else 0, 10)
    return web, worker, int(conn_limit)


def recommend(lat: pd.DataFrame, res: pd.DataFrame, cost: pd.DataFrame, facts: ServerFacts, *,
              p95_limit: float = P95_LIMIT, error_limit: float = ERROR_LIMIT) -> Recommendation:
    """The answer: how many simultaneous participants this app holds on this server, and how
    to size it. Measured first: when a step tried failed, the last step that held is the answer.
    When every step held, the fitted costs say where the server's CPU, memory or connections
    would run out (80% of each), and that is the answer (said as projected)."""
    tried = int(lat.index.max()) if len(lat) else 0
    ok = held(lat, p95_limit, error_limit)
    projected, limited_by = (None, "")
    if tried and ok == tried:
        projected, limited_by = _projected(cost, facts)
        if projected is not None and projected < ok:
            projected = ok  # measured beats projected: it held there
    else:
        limited_by = "latency" if tried else ""
    n = projected if projected is not None else ok
    web, worker, conn_limit = _workers(lat, cost, max(n, 1), facts)
    mem = _at(cost, "app_mem_bytes", max(n, 1))
    rec = Recommendation(n, tried, ok, projected, limited_by, web, worker, conn_limit,
                         (mem / 1e9) if not math.isnan(mem) else float("nan"))
    rec.sentence = sentence(rec, lat, p95_limit)
    return rec


def _failed_at(rec: Recommendation, lat: pd.DataFrame) -> str:
    above = [int(n) for n in lat.index if n > rec.held_measured]
    if rec.limited_by == "latency" and above:
        return f"; {above[0]} at once did not hold"
    if rec.limited_by:
        return f"; {rec.limited_by} is the first to run short beyond that"
    return ""


def sentence(rec: Recommendation, lat: pd.DataFrame, p95_limit: float = P95_LIMIT) -> str:
    """The answer in the issue's words, first and whole ("This experiment on this server holds
    about N simultaneous participants at p95 under 1 s; set web workers to W, worker processes
    to K, the database connection limit to C."), then the measurement behind it, then the
    memory at that load against PsyNet's rule of thumb (5 GB per simultaneous experiment)."""
    if not rec.measured_max:
        return "The rehearsal measured nothing: no step of simulated participants ran."
    last = lat.loc[rec.measured_max]
    measured = (f"measured up to {rec.measured_max} at once: p95 {last['p95']:.2f} s, "
                f"{last['error_rate']:.1%} errors")
    if rec.participants == 0:
        return (f"This experiment on this server did not hold even {int(lat.index.min())} simultaneous participants "
                f"at p95 under {p95_limit:g} s ({measured}); look at the errors and the server's load before going live.")
    how = (f"Projected from the measured cost per participant, until {rec.limited_by} runs short; {measured}"
           if rec.projected is not None and rec.projected > rec.held_measured
           else measured[0].upper() + measured[1:] + _failed_at(rec, lat))
    text = (f"This experiment on this server holds about {rec.participants} simultaneous participants at p95 under "
            f"{p95_limit:g} s; set web workers to {rec.web_workers}, worker processes to {rec.worker_processes}, "
            f"the database connection limit to {rec.connection_limit}. {how}.")
    if not math.isnan(rec.memory_gb):
        text += (f" Its containers use about {rec.memory_gb:.2f} GB at that load: {rec.memory_gb / rec.rule_gb:.0%} "
                 f"of the {rec.rule_gb:g} GB per simultaneous experiment of PsyNet's rule of thumb.")
    return text
