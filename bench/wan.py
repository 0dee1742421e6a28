"""A slow network on one machine: TCP relays with a delay each way and a bandwidth cap.

The kernel here has no netem qdisc, so the WAN is made in user space. A `Link` listens on one
address and forwards every connection to a target; each direction is its own wire:

* a chunk read at time t goes on the wire when the wire is free, takes len*8/rate seconds
  to pass (the bandwidth cap, a token bucket of one chunk), and is delivered `delay` after
  that, in order: a request and its answer cost 2 x delay, as over a real link;
* a new connection pays one round trip before its first byte passes (TCP's handshake);
* at most `window` bytes wait in each direction: the sender is held back, as TCP would.

A Link also counts round trips: an exchange in which one side waits for the other. It
counts, per connection, the handshake plus every time the client sends first or after the
server has spoken, both sides having gone quiet for at least half the delay (a window update sent
while a download streams is no round trip; a request after its answer is). The same
measure holds for labdeploy's one connection and for the plain shell's many.

`Network(profile)` puts Links on the three paths that cross a network in reality (the
researcher's SSH and HTTP to the server, both sides' registry traffic) and hands out a
testbed description whose addresses go through them, so a benchmark just uses it. The
profile "lan" uses no relay at all (today's figures).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Profile:
    name: str
    delay: float = 0.0  # seconds, each way
    rate: Optional[float] = None  # bits per second, each way; None: no cap

    @property
    def relayed(self) -> bool:
        return self.delay > 0 or self.rate is not None

    def describe(self) -> str:
        if not self.relayed:
            return f"{self.name} (direct, no relay)"
        rate = f"{self.rate / 1e6:g} Mbit/s" if self.rate else "no cap"
        return f"{self.name} ({self.delay * 2000:g} ms round trip, {rate} each way)"


PROFILES = {"lan": Profile("lan"), "wan": Profile("wan", delay=0.050, rate=20e6)}


def profiles(text: str) -> list[Profile]:
    """'lan,wan' -> the profiles, in that order."""
    out = []
    for name in filter(None, (p.strip() for p in text.split(","))):
        if name not in PROFILES:
            raise SystemExit(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
        out.append(PROFILES[name])
    return out


class _Wire:
    """One direction of one connection: read, hold until due, write, in order."""

    def __init__(self, link: "Link", conn: "_Conn", src: socket.socket, dst: socket.socket, up: bool) -> None:
        self.link, self.conn, self.src, self.dst, self.up = link, conn, src, dst, up
        self.queue: collections.deque = collections.deque()
        self.queued = 0
        self.cond = threading.Condition()
        self.free_at = 0.0  # when the wire has passed everything sent so far

    def start(self, not_before: float) -> None:
        threading.Thread(target=self._read, args=(not_before,), daemon=True, name="wan-read").start()
        threading.Thread(target=self._write, daemon=True, name="wan-write").start()

    def _due(self, n: int, now: float) -> float:
        rate = self.link.profile.rate
        start = max(now, self.free_at)
        self.free_at = start + (n * 8 / rate if rate else 0.0)
        return self.free_at + self.link.profile.delay

    def _read(self, not_before: float) -> None:
        time.sleep(max(0.0, not_before - time.monotonic()))
        try:
            while True:
                with self.cond:
                    while self.queued > self.link.window and not self.conn.closed:
                        self.cond.wait(0.5)
                data = self.src.recv(65536)
                now = time.monotonic()
                self.conn.heard(self.up, now, len(data))
                with self.cond:
                    self.queue.append((self._due(len(data), now), data))
                    self.queued += len(data)
                    self.cond.notify_all()
                if not data:
                    return
        except OSError:
            with self.cond:
                self.queue.append((time.monotonic(), None))
                self.cond.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue:
                        self.cond.wait()
                    due, data = self.queue.popleft()
                time.sleep(max(0.0, due - time.monotonic()))
                if data is None:  # the reader failed: the link broke
                    self.conn.close()
                    return
                if not data:  # an orderly end of this direction
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    self.conn.ended()
                    return
                self.dst.sendall(data)
                with self.cond:
                    self.queued -= len(data)
                    self.cond.notify_all()
        except OSError:
            self.conn.close()


class _Conn:
    def __init__(self, link: "Link", client: socket.socket, upstream: socket.socket) -> None:
        self.link, self.client, self.upstream = link, client, upstream
        self.closed = False
        self.open_ends = 2
        self.last_at = 0.0
        self.last_up: Optional[bool] = None
        self.lock = threading.Lock()

    def heard(self, up: bool, now: float, n: int) -> None:
        """Count a round trip when the client speaks after the server did and both were quiet."""
        with self.lock:
            quiet = now - self.last_at >= self.link.gap
            if n and up and self.last_up is not True and quiet:  # None: the first request
                self.link.count("round_trips")
            if n:
                self.last_at, self.last_up = now, up
                self.link.count("bytes_up" if up else "bytes_down", n)

    def ended(self) -> None:
        with self.lock:
            self.open_ends -= 1
            done = self.open_ends == 0
        if done:
            self.close()

    def close(self) -> None:
        self.closed = True
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class Link:
    """A TCP relay from `listen` to `target` that behaves like a slow network (see the module)."""

    def __init__(self, target: tuple, profile: Profile, listen: tuple = ("127.0.0.1", 0),
                 window: int = 512 * 1024) -> None:
        self.target, self.profile, self.window = target, profile, window
        self.gap = max(profile.delay / 2, 0.001)
        self.listener = socket.create_server(listen, reuse_port=False)
        self.address = self.listener.getsockname()[:2]
        self.conns: list[_Conn] = []
        self.stats = {"connections": 0, "round_trips": 0, "bytes_up": 0, "bytes_down": 0}
        self._lock = threading.Lock()
        self.down = False
        threading.Thread(target=self._accept, daemon=True, name="wan-accept").start()

    @property
    def port(self) -> int:
        return self.address[1]

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self.stats)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self, client, upstream)
            self.conns.append(conn)
            self.count("connections")
            self.count("round_trips")  # the TCP handshake
            not_before = time.monotonic() + 2 * self.profile.delay
            _Wire(self, conn, client, upstream, up=True).start(not_before)
            _Wire(self, conn, upstream, client, up=False).start(not_before)

    def close(self) -> None:
        self.down = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.conns:
            conn.close()


# --------------------------------------------------------------------------- the testbed's paths

REGISTRY_RELAY_PORT = 5050  # image names carry it: the same on both sides
CERTS_D = Path("/etc/docker/certs.d")


class Network:
    """The testbed seen through a profile: `.testbed` has the addresses to use. As a context
    manager it starts the relays (and Docker's trust of the relayed registry) and stops them."""

    def __init__(self, testbed: dict, profile: Profile) -> None:
        self.base, self.profile = testbed, profile
        self.links: dict[str, Link] = {}
        self.testbed = copy.deepcopy(testbed)
        self._made_certs: Optional[Path] = None

    def __enter__(self) -> "Network":
        if not self.profile.relayed:
            return self
        tb, s = self.testbed, self.base["ssh"]
        try:
            self.links["ssh"] = Link((s["host"], s["port"]), self.profile)
            reg_host, reg_port = self.base["registry"]["address"].rsplit(":", 1)
            self.links["registry"] = Link((reg_host, int(reg_port)), self.profile,
                                          listen=(reg_host, REGISTRY_RELAY_PORT))
            http = self.base["http"]
            self.links["http"] = Link((http["host"], http["port"]), self.profile)
        except BaseException:
            self.close()
            raise
        tb["ssh"].update(host="127.0.0.1", port=self.links["ssh"].port,
                         known_hosts_line=f"[127.0.0.1]:{self.links['ssh'].port} "
                                          + s["known_hosts_line"].split(" ", 1)[1])
        tb["registry"]["address"] = f"{reg_host}:{REGISTRY_RELAY_PORT}"
        tb["http"].update(host="127.0.0.1", port=self.links["http"].port)
        self._trust_registry(tb["registry"]["address"])
        return self

    def _trust_registry(self, address: str) -> None:
        """Docker trusts a registry by certs.d/<host:port>; the testbed server's engine reads the
        host's /etc/docker too. Made only when missing, removed again at the end."""
        folder = CERTS_D / address
        if not (folder / "ca.crt").exists():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.base["registry"]["ca_cert"], folder / "ca.crt")
            os.chmod(folder / "ca.crt", 0o644)
            self._made_certs = folder

    def round_trips(self) -> int:
        return sum(link.snapshot()["round_trips"] for link in self.links.values())

    def counts(self) -> dict:
        """{link: round trips} now, to subtract."""
        return {name: link.snapshot()["round_trips"] for name, link in self.links.items()}

    def since(self, before: dict) -> dict:
        now = self.counts()
        return {name: now[name] - before.get(name, 0) for name in now}

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()
        if self._made_certs is not None:
            shutil.rmtree(self._made_certs, ignore_errors=True)
            self._made_certs = None

    def __exit__(self, *exc) -> None:
        self.close()
