"""An app's share of one server: its memory and CPU limits, and how many worker processes it runs.

The seed's rule gives each simultaneous experiment about 5 GB of memory, so by default an app's
memory budget is 5 GB and its CPU budget the server's CPUs in the same proportion (a 4-CPU,
16 GB server: 5/16 of 4 = 1.25 CPUs), never below one CPU (or the server's, if fewer). Both are
deploy options, kept across updates. An app first deployed before labdeploy set limits keeps
running without them when updated (a study in progress must not meet an out-of-memory kill it
never had), until limits are given; the deploy log says so.

How a budget becomes Docker limits on one server (`cpus` and `mem_limit` in the compose file,
which Compose v1 and v2 both honour):

* memory is shared out evenly over the app's process containers (web, each worker, the clock),
  so together they stay within the budget: memory can't be taken back from a process, and one
  container over its share is stopped by the kernel instead of the whole server swapping;
* CPU is not shared out: each process container may use up to the app's CPUs. CPU time is
  given back the moment a process waits, so a split would leave the web process slow while the
  workers idle; the cap keeps a runaway process from starving the other experiments.
* Redis and the pooler get no limit: they are small, and Redis holds the app's queue, which an
  out-of-memory kill would lose.

Workers: Dallinger's `num_dynos_worker` (Heroku's worker dynos; Dallinger's own docker-ssh
deploy starts that many worker services) becomes `scale` of the one `worker` service, so
`docker compose restart worker` still reaches them all. `num_dynos_web` is left to Heroku (and
to a Swarm's replicas): on one server the web process already runs as many gunicorn processes
as Dallinger's `threads` key asks, and one web container is what the no-drop web switch and
Caddy's route assume.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from ..errors import ValidationError
from ..server import readiness

GB = readiness.GB
DEFAULT_MEMORY = readiness.RAM_PER_EXPERIMENT_GB * GB
MIN_SHARE = 256 * 1024 ** 2  # below this a Dallinger process can't even import its code
MIN_CPUS, MAX_CPUS = 0.1, 256.0
MAX_WORKERS = 32
WORKERS_KEY = "num_dynos_worker"
LIMITED = ("web", "worker", "clock")

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.I)
_FACTOR = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def memory(value) -> int:
    """Bytes from 5368709120, "5g", "512m", "2.5GB" (units of 1024, as Docker reads them)."""
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif m:
        size = int(float(m.group(1)) * _FACTOR[m.group(2).lower()])
    else:
        size = -1
    if size < MIN_SHARE:
        raise ValidationError(f"The memory limit {value!r} is not a size of at least 256 MB.",
                              "Give a size such as '4g' or '2500m' (at least '256m'), or leave it out for "
                              "the default of 5 GB per experiment.", code="invalid.memory_limit")
    return size


def cpus(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not MIN_CPUS <= number <= MAX_CPUS:
        raise ValidationError(f"The CPU limit {value!r} is not a number of CPUs from {MIN_CPUS} to {MAX_CPUS:.0f}.",
                              "Give e.g. 1.5 (one and a half CPUs), or leave it out for the app's share of "
                              "the server.", code="invalid.cpu_limit")
    return round(number, 2)


def workers(config: Optional[Mapping[str, str]]) -> int:
    """How many worker processes the app runs: Dallinger's num_dynos_worker (default 1)."""
    raw = (config or {}).get(WORKERS_KEY, "1")
    try:
        count = int(str(raw).strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise ValidationError(f"{WORKERS_KEY} = {raw!r} is not a number of worker processes from 1 to "
                              f"{MAX_WORKERS}.", f"Set {WORKERS_KEY} to a whole number such as 1 or 3.",
                              code="invalid.config.num_dynos_worker")
    return count


def default_cpus(nproc: int, memory_total: int, budget: int = DEFAULT_MEMORY) -> float:
    """The CPUs that go with `budget` of the server's memory (pure): at least one, at most all."""
    nproc = max(int(nproc), 1)
    share = nproc * budget / memory_total if memory_total > 0 else nproc
    return round(min(max(share, 1.0), float(nproc)), 2)


@dataclass(frozen=True)
class Limits:
    memory: Optional[int]     # the app's memory budget, bytes (None: no limit)
    cpus: Optional[float]     # CPUs each process container may use (None: no limit)
    workers: int = 1

    def containers(self, processes: Sequence[str]) -> int:
        return sum(self.workers if p == "worker" else 1 for p in processes if p in LIMITED)

    def share(self, processes: Sequence[str]) -> int:
        """Each process container's memory limit (bytes)."""
        return self.memory // max(self.containers(processes), 1)

    def check(self, processes: Sequence[str]) -> "Limits":
        if self.memory is not None and self.share(processes) < MIN_SHARE:
            n = self.containers(processes)
            raise ValidationError(f"A memory limit of {self.memory / GB:.2f} GB shared by {n} processes leaves "
                                  f"each less than 256 MB.",
                                  f"Raise the memory limit to at least {math.ceil(n * MIN_SHARE / 1024 ** 2)}m, "
                                  f"or run fewer workers ({WORKERS_KEY}).", code="invalid.memory_limit")
        return self


def apply(document: dict, limits: Limits) -> dict:
    """The compose document with the limits and the worker count set (in place; returned)."""
    services = document["services"]
    processes = [name for name in LIMITED if name in services]
    limits.check(processes)
    for name in processes:
        if limits.memory is not None:
            services[name]["mem_limit"] = limits.share(processes)
        if limits.cpus is not None:
            services[name]["cpus"] = limits.cpus
    if limits.workers > 1:
        services["worker"]["scale"] = limits.workers
    return document


def chosen(given_memory, given_cpus, state: Optional[dict], server_cpus: Optional[tuple[int, int]],
           workers_: int) -> tuple[Limits, dict]:
    """The limits of this deploy and where each came from (given, the app's last deploy, the
    default, or none for an app that has run without them); `server_cpus` is (nproc, MemTotal
    bytes), needed only for the CPU default."""
    state = state or {}
    if given_memory is not None:
        mem, mem_from = memory(given_memory), "given"
    elif state:  # an update keeps the app's limit, or its running without one
        mem, mem_from = (int(state["memory_limit"]) if state.get("memory_limit") else None), "app"
    else:
        mem, mem_from = DEFAULT_MEMORY, "default"
    if given_cpus is not None:
        cpu, cpu_from = cpus(given_cpus), "given"
    elif state:
        cpu, cpu_from = (float(state["cpu_limit"]) if state.get("cpu_limit") else None), "app"
    else:
        nproc, total = server_cpus or (1, 0)
        cpu, cpu_from = default_cpus(nproc, total, mem or DEFAULT_MEMORY), "default"
    return Limits(mem, cpu, workers_), {"memory_limit": {"value": mem, "from": mem_from},
                                         "cpu_limit": {"value": cpu, "from": cpu_from}}


def needs_server_size(given_cpus, state: Optional[dict]) -> bool:
    return given_cpus is None and not state  # a first deploy's default CPUs follow the server's size
