"""Simulated participants over HTTP: the rehearsal's load generator.

Why h11 over asyncio streams, and not httpx or Locust: on this project's 2-core machine,
against a trivial endpoint, httpx 0.28's AsyncClient drove 150-750 requests/s per core and
slowed as concurrency grew (its shared connection pool); Locust brings gevent, whose
monkey-patching does not belong in a researcher's notebook kernel. h11 (the HTTP/1.1 parser
under httpx, kept by python-hyper) driven over asyncio streams drives several thousand
requests/s from one core (`bench/rehearsal.py`), so the generator is never what limits a
rehearsal. Each simulated participant keeps its own connection, as a browser does.

Safety: every connection goes to one `Target` - the registered server's address - with the
app's name in the Host header (and TLS SNI); a flow holds paths only, never an address, so a
flow cannot send load anywhere else. Bounded in participants, time and requests; `stop()`
cancels every participant at once (open connections are closed, nothing waits for them).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import random
import ssl
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence, Union
from urllib.parse import urlencode, urlsplit

import h11
import pandas as pd

from ..errors import ValidationError

log = logging.getLogger("labdeploy.rehearsal.load")

MAX_PARTICIPANTS = 2000
MAX_SECONDS = 3600.0
MAX_REQUESTS = 2_000_000
BOT_PREFIX = "lbot-"  # every simulated participant's worker id starts so
HIT_COLUMNS = ["time", "seconds", "status", "ok", "route", "error", "participants", "bot"]
OUTCOME_COLUMNS = ["time", "bot", "worker_id", "outcome", "reason", "participants"]
# How a simulated participant's round ended: it went through the whole flow; the experiment
# ended it before the end (a full network, a page it cannot answer), which is no server error;
# or a request failed.
OUTCOMES = ("completed", "ended early", "failed")
BUILTINS = {"worker_id", "assignment_id", "hit_id", "bot", "round", "run"}


class FlowError(ValidationError):
    """A flow description that cannot run."""

    code = "invalid.rehearsal.flow"


# ------------------------------------------------------------------ where the load goes

@dataclass(frozen=True)
class Target:
    """The only place load goes: `address`:`port` (the registered server), the app's `host`
    name in the Host header (and SNI with `tls`)."""

    address: str
    port: int
    host: str
    tls: bool = False

    @classmethod
    def for_app(cls, server_address: str, app_url: str) -> "Target":
        """The app's URL (its scheme, name and port) served by the server at `server_address`."""
        parts = urlsplit(app_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(f"{app_url!r} is not the http(s) address of an app.",
                                  "Give the app's URL as its deploy reported it.", code="invalid.rehearsal.url")
        tls = parts.scheme == "https"
        return cls(server_address, parts.port or (443 if tls else 80), parts.hostname, tls)


@dataclass
class Answer:
    status: int        # 0: no answer (refused, reset, timed out)
    body: bytes = b""
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    def json(self) -> Any:
        return jsonlib.loads(self.body.decode("utf-8", "replace"))

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Connection:
    """One participant's HTTP/1.1 connection, opened when needed and again after a close."""

    def __init__(self, target: Target, context: Optional[ssl.SSLContext]) -> None:
        self.target, self.context = target, context
        self.reader = self.writer = self.h11 = None

    async def _open(self) -> None:
        t = self.target
        self.reader, self.writer = await asyncio.open_connection(
            t.address, t.port, ssl=self.context, server_hostname=t.host if self.context else None)
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = self.h11 = None

    async def request(self, method: str, path: str, headers: list, body: bytes) -> tuple[int, bytes]:
        reused = self.writer is not None
        try:
            return await self._exchange(method, path, headers, body)
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError, EOFError):
            self.close()
            if not reused:
                raise
        # A browser retries once on a fresh connection when a kept-alive one was closed by the
        # server before it answered (RFC 9112, 9.3.1); so do the simulated participants.
        return await self._exchange(method, path, headers, body)

    async def _exchange(self, method: str, path: str, headers: list, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self._open()
        conn = self.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        elif conn.our_state is not h11.IDLE:
            self.close()
            await self._open()
            conn = self.h11
        all_headers = [("Host", self.target.host), ("User-Agent", "labdeploy-rehearsal"),
                       ("Content-Length", str(len(body))), *headers]
        self.writer.write(conn.send(h11.Request(method=method, target=path, headers=all_headers)))
        if body:
            self.writer.write(conn.send(h11.Data(data=body)))
        self.writer.write(conn.send(h11.EndOfMessage()))
        await self.writer.drain()
        status, chunks = 0, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                if not data and conn.their_state is not h11.DONE:
                    raise EOFError("the server closed the connection")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            self.close()
        return status, b"".join(chunks)


# ------------------------------------------------------------------ flows

@dataclass(frozen=True)
class Step:
    """One request of a flow. `path`, and the string values of `json`/`data`, may hold
    placeholders: {worker_id}, {assignment_id}, {hit_id}, {bot}, {round}, {run}, and names an
    earlier step saved. `save` maps a name to a dotted path in the JSON answer
    ("participant.id"). `expect`: statuses besides 2xx/3xx that are no error but end this
    round (Dallinger answers 403 to a new node when the networks are full)."""

    method: str
    path: str
    json: Any = None
    data: Optional[Mapping[str, Any]] = None
    save: Mapping[str, str] = field(default_factory=dict)
    name: str = ""
    expect: tuple = ()

    @classmethod
    def of(cls, value: Union["Step", Mapping]) -> "Step":
        if isinstance(value, Step):
            return value
        if not isinstance(value, Mapping) or not {"method", "path"} <= set(value):
            raise FlowError(f"A flow step must say its method and path: {value!r}.",
                            'Write each step like {"method": "POST", "path": "/api/participants"}.')
        unknown = set(value) - {"method", "path", "json", "data", "save", "name", "expect"}
        if unknown:
            raise FlowError(f"A flow step has keys it does not know: {sorted(unknown)}.",
                            "Use method, path, json, data, save, name and expect.")
        return cls(**{**value, "expect": tuple(value.get("expect", ()))})

    @property
    def route(self) -> str:
        return self.name or f"{self.method.upper()} {self.path.split('?')[0]}"


def _fields(text: str) -> set:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _strings(value) -> list:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


@dataclass(frozen=True)
class Flow:
    """What one simulated participant does, in order, again and again (a new identity each
    round), with `think` seconds (on average) between two requests."""

    steps: tuple
    think: float = 1.0
    name: str = "flow"

    def __post_init__(self) -> None:
        steps = tuple(Step.of(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps:
            raise FlowError("The flow has no steps.", "Give at least one request.")
        check_think(self.think)
        known = set(BUILTINS)
        for step in steps:
            if step.method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
                raise FlowError(f"{step.method!r} is not an HTTP method.", "Use GET, POST, PUT, PATCH or DELETE.")
            if not step.path.startswith("/") or step.path.startswith("//"):
                raise FlowError(f"{step.path!r} is not a path on the app.",
                                "Write paths only (starting with one '/'): load only ever goes to the app's server.")
            try:
                missing = set().union(*(_fields(s) for s in [step.path, *_strings(step.json), *_strings(step.data)]))
            except ValueError as exc:
                raise FlowError(f"A placeholder in {step.route!r} is malformed: {exc}.",
                                "Write placeholders as {name}; double braces for a literal one.") from exc
            missing -= known
            if missing:
                raise FlowError(f"{step.route!r} uses {sorted(missing)}, which no earlier step saves.",
                                f"Use {sorted(BUILTINS)} or save the value from an earlier answer.")
            known |= set(step.save)


def check_think(think) -> float:
    """A think time (seconds), refused outside 0-600 s."""
    if isinstance(think, bool) or not isinstance(think, (int, float)) or not (0 <= think <= 600):
        raise FlowError(f"Think time {think!r} s is outside 0-600 s.", "Use e.g. 1 second.")
    return float(think)


FlowLike = Union[Flow, Sequence, Callable[["Bot"], Awaitable[None]]]


def as_flow(flow: FlowLike, think: Optional[float] = None) -> Union[Flow, Callable]:
    if isinstance(flow, Flow):
        return flow if think is None else Flow(flow.steps, think, flow.name)
    if callable(flow):
        return flow
    if isinstance(flow, (list, tuple)):
        return Flow(tuple(flow), 1.0 if think is None else think, name="described")
    raise FlowError(f"A flow is a list of requests or an async function, not {type(flow).__name__}.",
                    "Give a list of steps, a Flow, or an async function of one simulated participant.")


def _fill(value, values: Mapping[str, Any]):
    if isinstance(value, str):
        return value.format_map(values)
    if isinstance(value, Mapping):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_fill(v, values) for v in value]
    return value


def _dig(data, dotted: str):
    for part in dotted.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


# ------------------------------------------------------------------ one simulated participant

class Bot:
    """One simulated participant: its own connection, identity and saved values. A flow given
    as an async function receives it and calls `get`/`post`/`think`."""

    def __init__(self, run: "LoadRun", index: int) -> None:
        self.run, self.index = run, index
        self.rng = random.Random(index)
        self.round = 0
        self.values: dict = {}
        self._conn = _Connection(run.target, run.ssl_context)
        self.new_round()

    def new_round(self) -> None:
        ident = f"{self.run.prefix}{self.run.run_id}-{self.index}-{self.round}"
        self.values = {"worker_id": ident, "assignment_id": f"{ident}-a", "hit_id": f"{self.run.prefix}{self.run.run_id}",
                       "bot": self.index, "round": self.round, "run": self.run.run_id}
        self.round += 1

    @property
    def worker_id(self) -> str:
        return self.values["worker_id"]

    async def request(self, method: str, path: str, *, json=None, data=None, route: str = "",
                      expect: tuple = ()) -> Answer:
        if not path.startswith("/") or path.startswith("//"):
            raise FlowError(f"{path!r} is not a path on the app.", "Load only ever goes to the app's server.")
        if self.run._stopping.is_set():
            raise asyncio.CancelledError  # stopped: nothing more is sent
        headers, body = [], b""
        if json is not None:
            headers, body = [("Content-Type", "application/json")], jsonlib.dumps(json).encode()
        elif data is not None:
            headers, body = [("Content-Type", "application/x-www-form-urlencoded")], urlencode(data).encode()
        started, t0 = time.time(), time.monotonic()
        try:
            status, payload = await asyncio.wait_for(self._conn.request(method.upper(), path, headers, body),
                                                     self.run.timeout)
            answer = Answer(status, payload)
        except asyncio.TimeoutError:
            self._conn.close()
            answer = Answer(0, error="timed out")
        except (OSError, EOFError, h11.ProtocolError, asyncio.IncompleteReadError) as exc:
            self._conn.close()
            answer = Answer(0, error=f"{type(exc).__name__}: {exc}"[:200])
        ok = answer.ok or answer.status in expect
        if not ok and not answer.error:
            answer.error = answer.body[-200:].decode("utf-8", "replace")
        self.run._record((started, time.monotonic() - t0, answer.status, ok,
                          route or f"{method.upper()} {path.split('?')[0]}", answer.error, self.run.level, self.index))
        return answer

    async def get(self, path: str, **kw) -> Answer:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw) -> Answer:
        return await self.request("POST", path, **kw)

    def finish(self, outcome: str, reason: str = "") -> None:
        """Say how this round ended (one of OUTCOMES), for the rehearsal's participant counts."""
        if outcome not in OUTCOMES:
            raise FlowError(f"{outcome!r} is not how a round ends.", f"Use one of {', '.join(OUTCOMES)}.")
        self.run._record_outcome((time.time(), self.index, self.worker_id, outcome, reason[:200], self.run.level))

    async def think(self, scale: float = 1.0) -> None:
        """Wait about the flow's think time (0.5x-1.5x, so participants drift apart)."""
        await asyncio.sleep(self.run.think * scale * (0.5 + self.rng.random()))

    def close(self) -> None:
        self._conn.close()


async def run_steps(flow: Flow, bot: Bot) -> None:
    """One round of a described flow."""
    for i, step in enumerate(flow.steps):
        if i:
            await bot.think()
        answer = await bot.request(step.method, _fill(step.path, bot.values), json=_fill(step.json, bot.values),
                                   data=_fill(step.data, bot.values), route=step.route, expect=step.expect)
        if not answer.ok:
            # An error or an expected refusal (full) ends the round, as it would a browser's.
            if answer.status in step.expect:
                bot.finish("ended early", f"{step.route}: HTTP {answer.status}")
            else:
                bot.finish("failed", f"{step.route}: {answer.error or answer.status}")
            return
        for name, dotted in step.save.items():
            try:
                bot.values[name] = _dig(answer.json(), dotted)
            except (ValueError, KeyError, IndexError, TypeError):
                bot.run._record((time.time(), 0.0, answer.status, False, step.route,
                                 f"no {dotted!r} in the answer", bot.run.level, bot.index))
                bot.finish("failed", f"{step.route}: no {dotted!r} in the answer")
                return
    bot.finish("completed")


# ------------------------------------------------------------------ a run

def check_bounds(levels: Sequence[int], step_seconds: float) -> list[int]:
    """The ramp's participant counts, refused when out of bounds (before anything runs)."""
    levels = [int(n) for n in levels]
    if not levels or any(n < 1 for n in levels) or max(levels) > MAX_PARTICIPANTS:
        raise ValidationError(f"Participant counts {levels} are outside 1-{MAX_PARTICIPANTS}.",
                              f"Ramp between 1 and {MAX_PARTICIPANTS} simultaneous participants.",
                              code="invalid.rehearsal.participants")
    if not (0.5 <= step_seconds) or step_seconds * len(levels) > MAX_SECONDS:
        raise ValidationError(f"{len(levels)} steps of {step_seconds:g} s: each step needs at least 0.5 s and the "
                              f"whole rehearsal at most {MAX_SECONDS:.0f} s.", "Use e.g. 3 steps of 20 seconds.",
                              code="invalid.rehearsal.duration")
    return levels


class LoadRun:
    """Simulated participants against `target`: `levels[k]` of them at once during step k
    (each `step_seconds` long), each walking `flow` round after round. Runs in a thread of its
    own (its own event loop, one core); `stop()` ends all load at once, from any thread."""

    def __init__(self, target: Target, flow: FlowLike, levels: Sequence[int], step_seconds: float, *,
                 think: Optional[float] = None, timeout: float = 30.0, prefix: str = BOT_PREFIX,
                 max_requests: int = MAX_REQUESTS, on_level: Optional[Callable[[int, int], None]] = None,
                 verify: Union[bool, str] = True) -> None:
        self.target = target
        self.flow = as_flow(flow, think)
        self.think = self.flow.think if isinstance(self.flow, Flow) else (1.0 if think is None else float(think))
        self.levels = check_bounds(levels, step_seconds)
        self.step_seconds = float(step_seconds)
        self.timeout, self.prefix, self.max_requests = float(timeout), prefix, int(max_requests)
        self.on_level = on_level
        self.run_id = f"{random.getrandbits(24):06x}"
        self.ssl_context = None
        if target.tls:
            self.ssl_context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                self.ssl_context.check_hostname, self.ssl_context.verify_mode = False, ssl.CERT_NONE
        self.level = 0
        self.steps: list[tuple[int, float, float]] = []   # participants, start, end (wall time)
        self.stopped = False      # stop() was called (not the natural end)
        self.full = False         # max_requests reached
        self.finished = False     # every step ran (or it was stopped) and every participant ended
        self._hits: list = []
        self._outcomes: list = []
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping: Optional[asyncio.Event] = None
        self._ready = threading.Event()

    # -------------------------------------------------------------- control

    def start(self) -> "LoadRun":
        self._thread = threading.Thread(target=self._main, daemon=True, name="labdeploy-rehearsal-load")
        self._thread.start()
        self._ready.wait(30)
        return self

    def stop(self) -> None:
        """Stop every simulated participant now (requests in flight are abandoned)."""
        if not self.finished:
            self.stopped = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:  # the loop ended meanwhile
                pass

    def join(self, timeout: Optional[float] = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "LoadRun":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.join(60)

    # -------------------------------------------------------------- results

    def _record(self, hit: tuple) -> None:
        with self._lock:
            self._hits.append(hit)
            if len(self._hits) >= self.max_requests and not self.full:
                self.full = True
                self.stop()

    def _record_outcome(self, row: tuple) -> None:
        with self._lock:
            self._outcomes.append(row)

    @property
    def outcomes(self) -> pd.DataFrame:
        """One row per round a simulated participant ended: time (UTC), bot, worker_id,
        outcome (completed, ended early, failed), reason, participants (at the time). A round
        cut short by the end of the rehearsal has none."""
        with self._lock:
            rows = list(self._outcomes)
        df = pd.DataFrame(rows, columns=OUTCOME_COLUMNS)
        df["time"] = pd.to_datetime(df["time"], unit="s", utc=True)
        return df

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._hits)

    @property
    def hits(self) -> pd.DataFrame:
        """One row per request: time (UTC), seconds, status (0: no answer), ok, route, error,
        participants (simultaneous at the time), bot."""
        with self._lock:
            rows = list(self._hits)
        df = pd.DataFrame(rows, columns=HIT_COLUMNS)
        df["time"] = pd.to_datetime(df["time"], unit="s", utc=True)
        return df

    @property
    def schedule(self) -> pd.DataFrame:
        """One row per ramp step that ran: participants, start, end (UTC)."""
        df = pd.DataFrame(self.steps, columns=["participants", "start", "end"])
        for col in ("start", "end"):
            df[col] = pd.to_datetime(df[col], unit="s", utc=True)
        return df

    # -------------------------------------------------------------- the loop

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._run())
        finally:
            loop.close()

    async def _bot(self, index: int) -> None:
        bot = Bot(self, index)
        try:
            await asyncio.sleep(self.think * bot.rng.random())  # arrivals spread over a think time
            while not self._stopping.is_set():
                try:
                    if isinstance(self.flow, Flow):
                        await run_steps(self.flow, bot)
                    else:
                        await self.flow(bot)
                except (asyncio.CancelledError, FlowError):
                    raise
                except Exception as exc:  # noqa: BLE001 - a flow's own failure is an error of that round
                    self._record((time.time(), 0.0, 0, False, "flow", f"{type(exc).__name__}: {exc}"[:200],
                                  self.level, index))
                    bot.finish("failed", f"{type(exc).__name__}: {exc}")
                await bot.think()
                bot.new_round()
        finally:
            bot.close()

    async def _run(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        bots: list[asyncio.Task] = []
        try:
            for k, n in enumerate(self.levels):
                if self._stopping.is_set():
                    break
                while len(bots) < n:
                    bots.append(asyncio.create_task(self._bot(len(bots))))
                while len(bots) > n:
                    bots.pop().cancel()
                self.level, started = n, time.time()
                if self.on_level is not None:
                    try:
                        self.on_level(k, n)
                    except Exception:  # noqa: BLE001 - a broken display must not stop the load
                        log.exception("on_level callback failed")
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.step_seconds)
                except asyncio.TimeoutError:
                    pass
                self.steps.append((n, started, time.time()))
        finally:
            # Python 3.11's wait_for can swallow a cancellation that meets a request finishing at
            # the same moment (fixed in 3.12): cancel again until every participant has ended.
            pending = {t for t in bots if not t.done()}
            while pending:
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.2)
            self.level, self.finished = 0, True
