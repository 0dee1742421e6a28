"""The benchmarks' slow network (bench/wan.py) on this computer alone: what passes arrives
whole and in order, a request and its answer cost at least a round trip of delay, and the
relay counts exchanges, not packets."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import wan  # noqa: E402


@pytest.fixture
def echo():
    """A local server: answers each line with the line, and `bulk N` with N bytes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                if line.startswith(b"bulk "):
                    conn.sendall(os.urandom(int(line.split()[1])))
                else:
                    conn.sendall(line)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()
    server.close()


def ask(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    got = b""
    while not got.endswith(b"\n"):
        got += sock.recv(65536)
    return got


def test_what_passes_arrives_whole_and_in_order_and_a_round_trip_costs_two_delays(echo):
    link = wan.Link(echo, wan.Profile("test", delay=0.02, rate=50e6))
    try:
        with socket.create_connection(("127.0.0.1", link.port)) as sock:
            t0 = time.monotonic()
            assert ask(sock, b"one\n") == b"one\n"
            assert time.monotonic() - t0 >= 4 * 0.02  # the handshake's round trip, then the request's
            payload = b"".join(b"%06d\n" % i for i in range(50_000))  # 350 KB up, in order
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += sock.recv(65536)
            assert got == payload
            t0 = time.monotonic()
            assert ask(sock, b"two\n") == b"two\n"
            assert time.monotonic() - t0 >= 2 * 0.02
    finally:
        link.close()
    assert link.stats["connections"] == 1


def test_round_trips_are_exchanges_not_chunks(echo):
    link = wan.Link(echo, wan.Profile("test", delay=0.02))
    try:
        with socket.create_connection(("127.0.0.1", link.port)) as sock:
            for i in range(3):
                ask(sock, b"ping %d\n" % i)
            sock.sendall(b"bulk 2000000\n")  # one request, an answer in many chunks: one exchange
            n = 0
            while n < 2_000_000:
                n += len(sock.recv(65536))
        assert link.snapshot()["round_trips"] == 1 + 3 + 1  # the handshake, three pings, the bulk
        assert link.snapshot()["bytes_down"] >= 2_000_000
    finally:
        link.close()


def test_the_bandwidth_cap_holds_a_transfer_back(echo):
    link = wan.Link(echo, wan.Profile("test", delay=0.001, rate=8e6))  # 1 MB/s
    try:
        with socket.create_connection(("127.0.0.1", link.port)) as sock:
            t0 = time.monotonic()
            sock.sendall(b"bulk 500000\n")
            n = 0
            while n < 500_000:
                n += len(sock.recv(65536))
            assert time.monotonic() - t0 >= 0.45  # 500 KB at 1 MB/s, never faster
    finally:
        link.close()


def test_a_closed_link_takes_no_connection_and_the_lan_profile_relays_nothing(echo):
    link = wan.Link(echo, wan.Profile("test", delay=0.01))
    link.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", link.port), timeout=2).recv(1)
    tb = {"ssh": {"host": "h", "port": 22}, "registry": {"address": "r:5000"}, "http": {"host": "h", "port": 80}}
    with wan.Network(tb, wan.PROFILES["lan"]) as net:
        assert net.testbed == tb and net.links == {}
    assert [p.name for p in wan.profiles("lan,wan")] == ["lan", "wan"]
    with pytest.raises(SystemExit):
        wan.profiles("moon")
