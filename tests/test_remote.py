"""The SSH layer against the testbed's real sshd (no mocks).

Every test works in its own folder under ~/labdeploy-tests/ on the server, so engineers
running the suite at the same time do not collide.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shlex
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from labdeploy.errors import (AuthenticationFailed, ChangedHostKey, CommandFailed, CommandTimeout, ConnectionLost, DNSFailure, HostUnreachable, LabdeployError, UnknownHostKey)
from labdeploy.remote import Remote

# The sshd process that serves *this* session: walk up from the shell to the nearest `sshd`.
# Killing it (it runs as the test user) drops exactly this one connection; sshd itself lives on.
# The user's own sshd process of this connection: `sshd` up to OpenSSH 9, `sshd-session` from 10.
FIND_MY_SSHD = ('p=$$; while :; do case "$(cat /proc/$p/comm)" in sshd|sshd-session) break;; esac; '
                'p=$(cut -d" " -f4 /proc/$p/stat); done; echo $p')


def make_remote(testbed, known_hosts, **kw) -> Remote:
    s = testbed["ssh"]
    kw.setdefault("key_filename", s["key"])
    kw.setdefault("use_agent", False)
    return Remote(s["host"], s["port"], kw.pop("user", s["user"]), known_hosts=known_hosts, **kw)


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "not-authorized", "-f", str(path)],
                   check=True)
    return path


def wait_until(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"gave up waiting for {what}")


@pytest.fixture
def scratch(remote):
    """A fresh folder on the server (relative to the login home), removed afterwards."""
    path = f"labdeploy-tests/test_remote/{uuid.uuid4().hex[:10]}"
    remote.makedirs(path)
    yield path
    remote.run(["rm", "-rf", path], check=False)


# ------------------------------------------------------------------ run

WEIRD = ["a;b", "$(id)", "`id`", "'single'", '"double"', "a b  c", "", "*", "~", "\\n", "x\ny", "-n", "é ü",
         "$HOME", "a|b&c>d<e", "#comment"]


def test_argv_with_shell_metacharacters_arrives_verbatim(remote):
    script = "import json, sys; print(json.dumps(sys.argv[1:]))"
    res = remote.run(["python3", "-c", script, *WEIRD])
    assert json.loads(res.stdout) == WEIRD
    assert res.exit_status == 0 and res.ok and res.stderr == ""
    assert remote.run(["printf", "%s|", *WEIRD]).stdout == "|".join(WEIRD) + "|"


def test_on_line_streams_stdout_and_stderr_incrementally(remote):
    """The command waits for stdin that the test only sends after it has *received* the first
    lines through on_line: this deadlocks (and times out) unless lines arrive as they are made."""
    seen: list = []
    both_seen = threading.Event()

    def on_line(line, stream):
        seen.append((line, stream))
        if ("first", "stdout") in seen and ("oops", "stderr") in seen:
            both_seen.set()

    class GatedStdin(io.RawIOBase):
        sent = False

        def read(self, n=-1):
            if self.sent:
                return b""
            if not both_seen.wait(30):
                return b""
            self.sent = True
            return b"go\n"

    script = 'echo first; echo oops >&2; read x; echo "got $x"; printf "no newline at end"'
    res = remote.run(["sh", "-c", script], stdin=GatedStdin(), on_line=on_line, timeout=60)
    assert both_seen.is_set()
    assert [l for l, s in seen if s == "stdout"] == ["first", "got go", "no newline at end"]
    assert [l for l, s in seen if s == "stderr"] == ["oops"]
    assert res.stdout == "first\ngot go\nno newline at end" and res.stderr == "oops\n"


def test_on_stdout_receives_raw_chunks(remote):
    chunks: list = []
    res = remote.run(["head", "-c", "200000", "/dev/zero"], on_stdout=chunks.append)
    assert sum(len(c) for c in chunks) == 200000 and set(b"".join(chunks)) == {0}
    assert res.stdout_bytes == b""


def test_stdin_bytes(remote):
    data = os.urandom(3 * 1024 * 1024 + 17)
    res = remote.run(["sha256sum"], stdin=data)
    assert res.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert remote.run(["cat"], stdin="text é").stdout == "text é"
    assert remote.run(["cat"], stdin=b"").stdout == ""


def test_stdin_file_like(remote, tmp_path):
    data = os.urandom(700_000)
    f = tmp_path / "in.bin"
    f.write_bytes(data)
    with open(f, "rb") as fh:
        res = remote.run(["sha256sum"], stdin=fh)
    assert res.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert remote.run(["wc", "-c"], stdin=io.BytesIO(b"12345")).stdout.strip() == "5"


def test_stdin_text_file_like(remote):
    assert remote.run(["cat"], stdin=io.StringIO("é\n" * 50000)).stdout == "é\n" * 50000


def test_failing_stdin_stops_the_command_instead_of_ending_its_input(remote, scratch):
    class Broken(io.RawIOBase):
        calls = 0

        def read(self, n=-1):
            self.calls += 1
            if self.calls == 1:
                return b"partial input\n"
            raise OSError("the local disk went away")

    with pytest.raises(OSError, match="local disk went away"):
        remote.run(["sh", "-c", "cat > got; touch finished"], cwd=scratch, stdin=Broken(), timeout=60)
    assert not remote.exists(f"{scratch}/finished")  # it did not carry on with half its input
    assert remote.stats["connections"] == 1


def test_command_killed_by_a_signal_is_a_failure_not_a_lost_connection(remote):
    with pytest.raises(CommandFailed, match="killed by a signal") as info:
        remote.run(["sh", "-c", "echo bye >&2; kill -9 $$"])
    assert info.value.exit_status == -1 and "bye" in str(info.value)
    assert remote.run(["true"]).ok and remote.stats["connections"] == 1


def test_without_stdin_the_command_sees_eof(remote):
    assert remote.run(["cat"], timeout=30).stdout == ""


def test_timeout_raises_and_stops_the_remote_command(remote):
    marker = f"{uuid.uuid4().int % 1000}.{uuid.uuid4().int % 100000}"
    with pytest.raises(CommandTimeout) as info:
        remote.run(["sleep", f"3{marker}"], timeout=1)
    assert "longer than" in str(info.value) and info.value.hint
    # The command does not linger on the server...
    wait_until(lambda: remote.run(["pgrep", "-f", f"sleep 3{marker}"], check=False).exit_status == 1,
               "the timed-out command to stop")
    # ...and the connection is still the same, still usable.
    assert remote.run(["echo", "still here"]).stdout == "still here\n"
    assert remote.stats["connections"] == 1


def test_non_zero_exit_raises_with_stderr_tail(remote):
    script = 'for i in $(seq 1 50); do echo "err line $i" >&2; done; echo out; exit 3'
    with pytest.raises(CommandFailed) as info:
        remote.run(["sh", "-c", script])
    err = info.value
    assert err.exit_status == 3 and err.argv == ["sh", "-c", script]
    assert err.stdout == "out\n" and err.stderr.count("\n") == 50
    lines = str(err).splitlines()
    assert "err line 50" in lines and "err line 31" in lines
    assert "err line 30" not in lines and "err line 1" not in lines  # only the tail
    assert "exit status 3" in str(err) and err.hint


def test_command_failed_without_stderr_quotes_stdout(remote):
    with pytest.raises(CommandFailed, match="the reason is here"):
        remote.run(["sh", "-c", "echo the reason is here; exit 1"])


def test_check_false_returns_the_status(remote):
    res = remote.run(["sh", "-c", "echo o; echo e >&2; exit 7"], check=False)
    assert (res.exit_status, res.stdout, res.stderr, res.ok) == (7, "o\n", "e\n", False)
    assert remote.run(["false"], check=False).exit_status == 1


def test_missing_program(remote):
    with pytest.raises(CommandFailed) as info:
        remote.run(["no-such-program-labdeploy"])
    assert info.value.exit_status == 127


def test_cwd_is_relative_to_home_and_quoted(remote, scratch):
    odd = f"{scratch}/a b;c $(x)"
    remote.makedirs(odd)
    assert remote.run(["pwd"], cwd=odd).stdout.strip() == f"{remote.home}/{odd}"
    assert remote.run(["pwd"], cwd=f"{remote.home}/{scratch}").stdout.strip() == f"{remote.home}/{scratch}"
    with pytest.raises(CommandFailed):
        remote.run(["pwd"], cwd=f"{scratch}/missing")


def test_one_connection_for_many_commands_and_files(remote, scratch):
    before = remote.stats["commands"]
    for i in range(20):
        assert remote.run(["echo", str(i)]).stdout == f"{i}\n"
    remote.put_bytes(f"{scratch}/f", b"x")
    assert remote.get_bytes(f"{scratch}/f") == b"x"
    assert remote.stats["connections"] == 1
    assert remote.stats["commands"] == before + 20
    assert remote.stats["bytes_sent"] > 0 and remote.stats["bytes_received"] > 0
    # connect() is idempotent
    remote.connect()
    assert remote.stats["connections"] == 1 and remote.connected


def test_concurrent_commands_from_threads(remote, scratch):
    results: dict = {}
    errors: list = []

    def work(n):
        try:
            for i in range(5):
                out = remote.run(["sh", "-c", f"sleep 0.2; echo {n}-{i}"]).stdout
                results[(n, i)] = out
            remote.put_bytes(f"{scratch}/t{n}", str(n).encode())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == {(n, i): f"{n}-{i}\n" for n in range(10) for i in range(5)}
    assert remote.listdir(scratch) == sorted(f"t{n}" for n in range(10))
    assert remote.stats["connections"] == 1
    assert remote.stats["commands"] >= 50


def test_more_commands_at_once_than_the_server_allows_sessions(testbed, known_hosts):
    """The testbed's sshd allows 64 sessions per connection (OpenSSH's default is 10): 80
    commands at once from a fresh Remote wait for a slot instead of failing, on one connection."""
    r = make_remote(testbed, known_hosts)
    outs: dict = {}
    errors: list = []

    def work(n):
        try:
            outs[n] = r.run(["sh", "-c", f"sleep 1; echo {n}"], timeout=120).stdout
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(80)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors[:3]
        assert outs == {n: f"{n}\n" for n in range(80)}
        assert r.stats["connections"] == 1 and r.stats["commands"] == 80
    finally:
        r.close()


# ------------------------------------------------------------------ files

def remote_mode(remote, path) -> str:
    return remote.run(["stat", "-c", "%a", path]).stdout.strip()


def test_put_bytes_mode_and_atomic(remote, scratch):
    path = f"{scratch}/secrets.env"
    remote.put_bytes(path, b"A=1\n", mode=0o600)
    assert remote_mode(remote, path) == "600"
    assert remote.get_bytes(path) == b"A=1\n"
    remote.put_bytes(path, "B=2\n", mode=0o640)  # replaces the old file
    assert remote.get_bytes(path) == b"B=2\n" and remote_mode(remote, path) == "640"
    assert remote.listdir(scratch) == ["secrets.env"]  # no temp file left
    # A failed upload leaves nothing behind and keeps the old target.
    remote.makedirs(f"{scratch}/adir")
    remote.put_bytes(f"{scratch}/adir/x", b"1")
    with pytest.raises(LabdeployError) as info:
        remote.put_bytes(f"{scratch}/adir", b"over a directory")
    assert not isinstance(info.value, ConnectionLost)  # the server said no; the connection is fine
    assert remote.listdir(scratch) == ["adir", "secrets.env"]


READER_PY = r"""
import hashlib, sys, time
old, new, path = sys.argv[1:4]
bad, n, seen_new = set(), 0, False
print("ready", flush=True)
deadline = time.time() + 120
while time.time() < deadline:
    try:
        with open(path, "rb") as f:
            h = hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        bad.add("missing")
        continue
    n += 1
    if h == new:
        seen_new = True
        break
    if h != old:
        bad.add("partial")
print(n, seen_new, ",".join(sorted(bad)) or "-", flush=True)
"""


@pytest.mark.parametrize("how", ["put_bytes", "put_file"])
def test_readers_never_see_a_half_written_file(remote, scratch, tmp_path, how):
    """A reader on the server reads the file in a loop while it is replaced: it sees the old
    content, then the new one, never a partial or missing file."""
    path = f"{scratch}/data.bin"
    old, new = os.urandom(6 * 1024 * 1024), os.urandom(6 * 1024 * 1024)
    remote.put_bytes(path, old)
    remote.put_bytes(f"{scratch}/reader.py", READER_PY)
    ready, out = threading.Event(), []

    def read_loop():
        out.append(remote.run(["python3", f"{scratch}/reader.py", hashlib.sha256(old).hexdigest(),
                               hashlib.sha256(new).hexdigest(), path],
                              on_line=lambda line, stream: ready.set() if line == "ready" else None,
                              timeout=180).stdout)

    reader = threading.Thread(target=read_loop)
    reader.start()
    assert ready.wait(60)
    if how == "put_bytes":
        remote.put_bytes(path, new)
    else:
        local = tmp_path / "new.bin"
        local.write_bytes(new)
        remote.put_file(local, path)
    reader.join(180)
    reads, seen_new, bad = out[0].split()[-3:]
    assert seen_new == "True" and bad == "-", out[0]
    assert int(reads) >= 1


def test_put_file_get_file_with_progress(remote, scratch, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 5)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    local.chmod(0o640)
    ups: list = []
    remote.put_file(local, f"{scratch}/up.bin", on_progress=lambda d, t: ups.append((d, t)))
    assert remote_mode(remote, f"{scratch}/up.bin") == "640"  # mode follows the local file
    assert ups and ups[-1] == (len(data), len(data))
    assert [d for d, _ in ups] == sorted(d for d, _ in ups)
    remote.put_file(local, f"{scratch}/up600.bin", mode=0o600)
    assert remote_mode(remote, f"{scratch}/up600.bin") == "600"
    downs: list = []
    back = tmp_path / "sub" / "down.bin"
    remote.get_file(f"{scratch}/up.bin", back, on_progress=lambda d, t: downs.append((d, t)))
    assert back.read_bytes() == data
    assert downs and downs[-1] == (len(data), len(data))
    assert remote.listdir(scratch) == ["up.bin", "up600.bin"]  # no temp files
    assert sorted(p.name for p in back.parent.iterdir()) == ["down.bin"]


def test_get_file_is_atomic_locally(remote, scratch, tmp_path):
    folder = tmp_path / "local"
    folder.mkdir()
    target = folder / "keep.txt"
    target.write_text("old")
    with pytest.raises(FileNotFoundError):
        remote.get_file(f"{scratch}/missing", target)
    assert target.read_text() == "old"
    # A download that breaks half way (the progress callback raises) leaves the old file and no part file.

    def boom(done, total):
        if done > 0:
            raise RuntimeError("interrupted")

    remote.put_bytes(f"{scratch}/big", os.urandom(2 * 1024 * 1024))
    with pytest.raises(RuntimeError, match="interrupted"):
        remote.get_file(f"{scratch}/big", target, on_progress=boom)
    assert target.read_text() == "old"
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    # The connection survives an exception raised by our own callback.
    assert remote.get_bytes(f"{scratch}/big")[:0] == b""


def test_makedirs_exists_listdir_remove(remote, scratch):
    nested = f"{scratch}/a/b/c"
    assert not remote.exists(nested)
    remote.makedirs(nested, mode=0o700)
    remote.makedirs(nested, mode=0o700)  # again: fine
    assert remote.exists(nested) and remote_mode(remote, nested) == "700"
    assert remote.listdir(f"{scratch}/a") == ["b"]
    assert remote.listdir(f"{scratch}/nope") == []
    remote.put_bytes(f"{scratch}/a/f.txt", b"1")
    assert remote.listdir(f"{scratch}/a") == ["b", "f.txt"]
    assert remote.exists(f"{remote.home}/{scratch}/a/f.txt")  # absolute paths work too
    remote.remove(f"{scratch}/a/f.txt")
    remote.remove(f"{scratch}/a/f.txt")  # already gone: fine
    assert not remote.exists(f"{scratch}/a/f.txt")
    assert remote.home == f"/home/{remote.user}"
    with pytest.raises(FileNotFoundError):
        remote.get_bytes(f"{scratch}/a/f.txt")


def test_sftp_error_that_is_not_a_dropped_connection(remote, scratch):
    """A server-side failure (here: removing a folder with remove()) is not reported as a lost connection."""
    remote.makedirs(f"{scratch}/d/e")
    with pytest.raises(LabdeployError) as info:
        remote.remove(f"{scratch}/d")
    assert not isinstance(info.value, ConnectionLost)
    assert remote.exists(f"{scratch}/d/e")
    assert remote.stats["connections"] == 1


# ------------------------------------------------------------------ tunnels

SERVER_PY = r'''
import http.server, os, sys, threading
barrier = threading.Barrier(5, timeout=30)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200
        if self.path.startswith("/together"):
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                code = 500
        body = ("hello " + self.path).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
'''


@pytest.fixture
def server_http(remote, scratch):
    """A small HTTP server on the server's own 127.0.0.1 (not reachable from here directly)."""
    remote.put_bytes(f"{scratch}/srv.py", SERVER_PY)
    portfile = f"{scratch}/port"
    pid = remote.run(["sh", "-c", f"cd {shlex.quote(scratch)} && nohup python3 srv.py port "
                      ">/dev/null 2>&1 </dev/null & echo $!"]).stdout.strip()
    try:
        wait_until(lambda: remote.exists(portfile), "the HTTP server on the server")
        yield int(remote.get_bytes(portfile))
    finally:
        remote.run(["kill", pid], check=False)


def test_forward_to_a_service_on_the_server(remote, server_http, testbed):
    with socket.socket() as s:  # not reachable from here without the tunnel
        assert s.connect_ex((testbed["ssh"]["host"], server_http)) != 0
    with remote.forward("127.0.0.1", server_http) as port:
        assert isinstance(port, int) and port > 0
        for i in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/x{i}", timeout=30) as resp:
                assert resp.status == 200 and resp.read() == f"hello /x{i}".encode()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # the local port is closed again
    assert remote.stats["connections"] == 1


def test_several_connections_through_one_tunnel_at_once(remote, server_http):
    """Five requests that the server only answers once all five have arrived."""
    codes: list = []

    def get(port, i):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/together{i}", timeout=60) as resp:
                codes.append((resp.status, resp.read()))
        except Exception as exc:
            codes.append((repr(exc), b""))

    with remote.forward("127.0.0.1", server_http) as port:
        threads = [threading.Thread(target=get, args=(port, i)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    assert sorted(codes) == [(200, f"hello /together{i}".encode()) for i in range(5)]
    assert remote.stats["connections"] == 1


def test_forward_on_a_busy_local_port(remote):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(LabdeployError, match="local port"):
            with remote.forward("127.0.0.1", 22, local_port=busy.getsockname()[1]):
                pass


def test_forward_to_a_closed_port_closes_the_client(remote):
    with remote.forward("127.0.0.1", 1) as port:
        for _ in range(2):  # the listener stays usable after a failed channel
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.settimeout(30)
                assert s.recv(10) == b""
    # The server's own sshd, as seen from the server, answers through the same kind of tunnel.
    with remote.forward(remote.host, 22) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.settimeout(30)
            assert s.recv(4) == b"SSH-"


# ------------------------------------------------------------------ dropped connections

def test_command_running_during_a_drop_raises_connection_lost_then_reconnects(remote):
    assert remote.stats["connections"] == 1
    with pytest.raises(ConnectionLost) as info:
        remote.run(["sh", "-c", f"echo started; kill -9 $({FIND_MY_SSHD}); sleep 30"], timeout=60)
    assert "dropped" in str(info.value)
    assert remote.run(["echo", "back"]).stdout == "back\n"
    assert remote.stats["connections"] == 2


def test_next_command_reconnects_transparently_after_a_drop(remote, testbed, known_hosts, scratch):
    victim = make_remote(testbed, known_hosts)
    try:
        pid = victim.run(["sh", "-c", FIND_MY_SSHD]).stdout.strip()
        assert victim.exists(scratch)
        remote.run(["kill", "-9", pid])  # from the other connection, while `victim` is idle
        assert victim.run(["echo", "ok"]).stdout == "ok\n"  # no error: a new connection
        assert victim.stats["connections"] == 2
        # SFTP recovers as well.
        pid = victim.run(["sh", "-c", FIND_MY_SSHD]).stdout.strip()
        remote.run(["kill", "-9", pid])
        assert victim.exists(scratch)
        assert victim.stats["connections"] == 3
    finally:
        victim.close()


class FreezableProxy:
    """A TCP relay on 127.0.0.1 to the testbed's sshd whose existing connections can be frozen:
    bytes stop flowing but nothing is closed, like a network that silently went away."""

    def __init__(self, target):
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.frozen: set = set()
        self.socks: list = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.listener.settimeout(0.2)
        n = 0
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            n += 1
            upstream = socket.create_connection(self.target, timeout=10)
            self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(n, a, b), daemon=True).start()

    def _relay(self, n, src, dst):
        src.settimeout(0.2)
        while not self.stop.is_set():
            if n in self.frozen:
                time.sleep(0.1)
                continue
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if n in self.frozen:
                continue  # frozen while we waited: these bytes are lost, as on a dead network
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            with contextlib.suppress(OSError):
                dst.sendall(data)

    def freeze_existing(self):
        self.frozen.update(range(1, len(self.socks) // 2 + 1))

    def close(self):
        self.stop.set()
        self.listener.close()
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()


def test_silently_dead_connection_is_replaced(testbed, tmp_path):
    s = testbed["ssh"]
    proxy = FreezableProxy((s["host"], s["port"]))
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{proxy.port} {' '.join(s['host_key'].split()[:2])}\n")
    r = Remote("127.0.0.1", proxy.port, s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False,
               connect_timeout=3)
    try:
        assert r.run(["echo", "a"]).stdout == "a\n"
        proxy.freeze_existing()
        assert r.run(["echo", "b"]).stdout == "b\n"  # no answer on the old one: a new connection
        assert r.stats["connections"] == 2
    finally:
        r.close()
        proxy.close()


def test_connection_dying_silently_while_a_command_starts(testbed, tmp_path):
    """The relay freezes right after the session opened: starting the command must not hang."""
    s = testbed["ssh"]
    proxy = FreezableProxy((s["host"], s["port"]))
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{proxy.port} {' '.join(s['host_key'].split()[:2])}\n")
    r = Remote("127.0.0.1", proxy.port, s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False,
               connect_timeout=3)
    open_session = r._open_session

    def open_then_freeze(argv):  # a hook for the timing only; the server and the relay are real
        chan = open_session(argv)
        proxy.freeze_existing()
        return chan

    try:
        assert r.run(["echo", "a"]).stdout == "a\n"
        r._open_session = open_then_freeze
        with pytest.raises(ConnectionLost):
            r.run(["echo", "b"], timeout=30)
        r._open_session = open_session
        assert r.run(["echo", "c"]).stdout == "c\n"
        assert r.stats["connections"] == 2
    finally:
        r.close()
        proxy.close()


def test_sftp_on_a_silently_dead_connection_reconnects(testbed, tmp_path):
    s = testbed["ssh"]
    proxy = FreezableProxy((s["host"], s["port"]))
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{proxy.port} {' '.join(s['host_key'].split()[:2])}\n")
    r = Remote("127.0.0.1", proxy.port, s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False,
               connect_timeout=3)
    r.SFTP_TIMEOUT = 3
    try:
        assert r.exists(".") and r.listdir("/") != []
        proxy.freeze_existing()
        assert r.exists(".")  # the request went unanswered: a new connection answered it
        assert r.stats["connections"] == 2
    finally:
        r.close()
        proxy.close()


def test_running_command_on_a_silently_dead_connection_raises(testbed, tmp_path):
    """Keepalives that want an answer notice the dead connection: the command does not hang."""
    s = testbed["ssh"]
    proxy = FreezableProxy((s["host"], s["port"]))
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{proxy.port} {' '.join(s['host_key'].split()[:2])}\n")
    r = Remote("127.0.0.1", proxy.port, s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False,
               connect_timeout=3, keepalive=1)

    def on_line(line, stream):
        if line == "started":
            proxy.freeze_existing()

    try:
        with pytest.raises(ConnectionLost):
            r.run(["sh", "-c", "echo started; sleep 60"], on_line=on_line)  # no timeout given
        assert r.run(["echo", "again"]).stdout == "again\n"
        assert r.stats["connections"] == 2
    finally:
        r.close()
        proxy.close()


def test_keepalives_are_sent_while_idle(testbed, known_hosts):
    r = make_remote(testbed, known_hosts, keepalive=1)
    try:
        r.connect()
        sent = r.stats["bytes_sent"]
        wait_until(lambda: r.stats["bytes_sent"] > sent, "a keepalive packet", timeout=15)
        assert r.stats["commands"] == 0
    finally:
        r.close()


# ------------------------------------------------------------------ config, agent

def test_ssh_config_alias(testbed, home):
    s = testbed["ssh"]
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    key = ssh / "id_testbed"
    key.write_bytes(Path(s["key"]).read_bytes())
    key.chmod(0o600)
    (ssh / "config").write_text(f"Host tb\n  HostName {s['host']}\n  Port {s['port']}\n  User {s['user']}\n"
                                f"  IdentityFile ~/.ssh/id_testbed\n")
    (ssh / "known_hosts").write_text(s["known_hosts_line"] + "\n")
    r = Remote("tb", use_agent=False)
    try:
        assert (r.host, r.port, r.user, r.key_filename) == (s["host"], s["port"], s["user"], str(key))
        assert r.run(["whoami"]).stdout.strip() == s["user"]
    finally:
        r.close()


def test_ssh_agent(testbed, known_hosts, home, tmp_path, monkeypatch):
    s = testbed["ssh"]
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, "the ssh-agent socket")
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        subprocess.run(["ssh-add", "-q", s["key"]], env=env, check=True, capture_output=True)
        # Without the agent (and no key, no password) the login is refused...
        with pytest.raises(AuthenticationFailed):
            Remote(s["host"], s["port"], s["user"], known_hosts=known_hosts, use_agent=True).connect()
        # ...with the agent it works.
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        r = Remote(s["host"], s["port"], s["user"], known_hosts=known_hosts)
        assert r.key_filename is None
        try:
            assert r.run(["whoami"]).stdout.strip() == s["user"]
        finally:
            r.close()
        with pytest.raises(AuthenticationFailed):
            Remote(s["host"], s["port"], s["user"], known_hosts=known_hosts, use_agent=False).connect()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)


# ------------------------------------------------------------------ host keys

def test_unknown_host_key_carries_the_exact_fingerprint(testbed, tmp_path):
    kh = tmp_path / "kh"
    r = make_remote(testbed, kh)
    with pytest.raises(UnknownHostKey) as info:
        r.connect()
    err = info.value
    assert err.fingerprint == testbed["ssh"]["host_key_fingerprint"]
    assert err.key_type == "ssh-ed25519" and err.host == testbed["ssh"]["host"] and err.port == 22
    assert testbed["ssh"]["host_key_fingerprint"] in str(err) and err.hint
    assert not kh.exists() and r.stats["connections"] == 0 and not r.connected
    assert r.fetch_host_key() == ("ssh-ed25519", testbed["ssh"]["host_key_fingerprint"])
    with pytest.raises(UnknownHostKey):  # still not accepted: fetching is not trusting
        r.run(["true"])


def test_trust_with_a_wrong_fingerprint_is_refused(testbed, tmp_path):
    kh = tmp_path / "kh"
    kh.write_text("# mine\n")
    r = make_remote(testbed, kh)
    wrong = "SHA256:" + "A" * 43
    with pytest.raises(LabdeployError) as info:
        r.trust_host_key(wrong)
    assert wrong in str(info.value) and testbed["ssh"]["host_key_fingerprint"] in str(info.value)
    assert kh.read_text() == "# mine\n"
    with pytest.raises(UnknownHostKey):
        r.connect()


def test_trust_stores_the_key_and_keeps_existing_lines(testbed, tmp_path):
    kh = tmp_path / "ssh" / "known_hosts"
    kh.parent.mkdir()
    other = "other.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJf7f/WMdrR6qqbpARlxeDRBzNOGPK0HPnTNtELAqjKy"
    kh.write_text("# my comment\n" + other)  # no final newline on purpose
    kh.chmod(0o600)
    r = make_remote(testbed, kh)
    fp = testbed["ssh"]["host_key_fingerprint"]
    r.trust_host_key(fp)
    lines = kh.read_text().splitlines()
    assert lines[:2] == ["# my comment", other]
    assert lines[2] == testbed["ssh"]["known_hosts_line"] and len(lines) == 3
    assert stat.S_IMODE(kh.stat().st_mode) == 0o600
    r.trust_host_key(fp)  # again: no duplicate
    assert len(kh.read_text().splitlines()) == 3
    assert r.run(["whoami"]).stdout.strip() == testbed["ssh"]["user"]
    r.close()
    # ssh itself accepts the file labdeploy wrote.
    s = testbed["ssh"]
    out = subprocess.run(["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                          "-o", f"UserKnownHostsFile={kh}", "-o", "GlobalKnownHostsFile=/dev/null",
                          "-i", s["key"], "-p", str(s["port"]), f"{s['user']}@{s['host']}", "echo", "ssh-ok"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ssh-ok", out.stderr


def test_trust_creates_a_private_file(testbed, home):
    r = make_remote(testbed, None)
    assert r.known_hosts == home / ".ssh" / "known_hosts"
    r.trust_host_key(testbed["ssh"]["host_key_fingerprint"])
    assert stat.S_IMODE(r.known_hosts.stat().st_mode) == 0o600
    assert stat.S_IMODE(r.known_hosts.parent.stat().st_mode) == 0o700
    assert r.run(["true"]).ok
    r.close()


def wrong_key_known_hosts(testbed, tmp_path) -> tuple[Path, str]:
    key = keygen(tmp_path / "fake_host_key")
    pub = " ".join((tmp_path / "fake_host_key.pub").read_text().split()[:2])
    fp = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "fake_host_key.pub")],
                        capture_output=True, text=True, check=True).stdout.split()[1]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"# comment\nother.example.org {pub}\n{testbed['ssh']['host']} {pub}\n"
                  f"[{testbed['ssh']['host']}]:2222 {pub}\n")
    del key
    return kh, fp


def test_changed_host_key_is_refused_with_an_explanation(testbed, tmp_path):
    kh, stored_fp = wrong_key_known_hosts(testbed, tmp_path)
    before = kh.read_text()
    r = make_remote(testbed, kh)
    with pytest.raises(ChangedHostKey) as info:
        r.connect()
    err = info.value
    assert err.fingerprint == testbed["ssh"]["host_key_fingerprint"] and err.expected_fingerprint == stored_fp
    text = str(err)
    assert "rebuilt" in text and "forget_host_key" in text and "refuses" in text
    assert r.stats["connections"] == 0 and kh.read_text() == before
    # trust_host_key does not overwrite a stored key either, even with the right fingerprint.
    with pytest.raises(ChangedHostKey):
        r.trust_host_key(testbed["ssh"]["host_key_fingerprint"])
    assert kh.read_text() == before


def test_forget_then_trust_after_a_rebuild(testbed, tmp_path):
    kh, _ = wrong_key_known_hosts(testbed, tmp_path)
    lines = kh.read_text().splitlines()
    r = make_remote(testbed, kh)
    assert r.forget_host_key() == 1
    assert kh.read_text().splitlines() == [lines[0], lines[1], lines[3]]  # only that host:port line went
    with pytest.raises(UnknownHostKey):
        r.connect()
    r.trust_host_key(testbed["ssh"]["host_key_fingerprint"])
    assert r.run(["true"]).ok
    r.close()


def test_hashed_known_hosts_entry_is_honoured(testbed, tmp_path):
    kh = tmp_path / "kh"
    kh.write_text(testbed["ssh"]["known_hosts_line"] + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True, capture_output=True)
    assert kh.read_text().startswith("|1|")
    r = make_remote(testbed, kh)
    assert r.run(["true"]).ok
    r.close()
    assert r.forget_host_key() == 1
    with pytest.raises(UnknownHostKey):
        make_remote(testbed, kh).connect()


@pytest.mark.parametrize("patterns", ["*", "10.250.*", "other.example.org,{host}"])
def test_revoked_host_key_is_refused(testbed, tmp_path, patterns):
    patterns = patterns.format(host=testbed["ssh"]["host"])
    kh = tmp_path / "kh"
    blob = " ".join(testbed["ssh"]["host_key"].split()[:2])
    kh.write_text(f"@revoked {patterns} {blob}\n")
    before = kh.read_text()
    r = make_remote(testbed, kh)
    with pytest.raises(LabdeployError, match="revoked") as info:
        r.connect()
    assert not isinstance(info.value, UnknownHostKey)
    assert r.stats["connections"] == 0
    with pytest.raises(LabdeployError, match="revoked"):  # and it can't be trusted anew
        r.trust_host_key(testbed["ssh"]["host_key_fingerprint"])
    assert kh.read_text() == before


def test_revoked_line_for_another_key_or_host_changes_nothing(testbed, tmp_path):
    kh, _ = wrong_key_known_hosts(testbed, tmp_path)
    fake = " ".join((tmp_path / "fake_host_key.pub").read_text().split()[:2])
    real = " ".join(testbed["ssh"]["host_key"].split()[:2])
    kh.write_text(f"@revoked * {fake}\n@revoked elsewhere.example.org {real}\n@revoked garbage\n")
    r = make_remote(testbed, kh)
    with pytest.raises(UnknownHostKey):
        r.connect()
    r.trust_host_key(testbed["ssh"]["host_key_fingerprint"])
    assert r.run(["true"]).ok
    r.close()


# ------------------------------------------------------------------ refused logins

def test_unauthorized_key_is_refused(testbed, known_hosts, home, tmp_path):
    key = keygen(tmp_path / "id_fresh")
    r = make_remote(testbed, known_hosts, key_filename=key)
    with pytest.raises(AuthenticationFailed) as info:
        r.connect()
    assert testbed["ssh"]["user"] in str(info.value) and info.value.hint
    assert r.stats["connections"] == 0


def test_missing_key_file_is_an_authentication_problem(testbed, known_hosts, home, tmp_path):
    r = make_remote(testbed, known_hosts, key_filename=tmp_path / "no_such_key")
    with pytest.raises(AuthenticationFailed, match="no_such_key"):
        r.connect()


def test_key_with_a_passphrase(testbed, known_hosts, home, tmp_path):
    key = tmp_path / "id_locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-f", str(key)], check=True)
    with pytest.raises(AuthenticationFailed, match="passphrase"):
        make_remote(testbed, known_hosts, key_filename=key).connect()
    # With its passphrase the key is read, and then refused: it is not authorized on the server.
    with pytest.raises(AuthenticationFailed) as info:
        make_remote(testbed, known_hosts, key_filename=key, passphrase="s3cret").connect()
    assert "s3cret" not in str(info.value)


def test_password_login_and_wrong_password(testbed, known_hosts, home):
    s = testbed["ssh"]
    ok = make_remote(testbed, known_hosts, key_filename=None, password=s["password"])
    try:
        assert ok.run(["whoami"]).stdout.strip() == s["user"]
    finally:
        ok.close()
    bad = make_remote(testbed, known_hosts, key_filename=None, password=s["password"] + "x")
    with pytest.raises(AuthenticationFailed) as info:
        bad.connect()
    assert "password" in str(info.value)
    assert s["password"] not in str(info.value)


def test_other_testbed_users_log_in(testbed, known_hosts):
    for user in (testbed["ssh"]["user_nodocker"], testbed["ssh"]["user_bare"]):
        r = make_remote(testbed, known_hosts, user=user)
        try:
            assert r.run(["whoami"]).stdout.strip() == user
        finally:
            r.close()


# ------------------------------------------------------------------ unreachable servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_port_is_host_unreachable(testbed, known_hosts):
    r = Remote("127.0.0.1", free_port(), "labdeploy", known_hosts=known_hosts, use_agent=False)
    with pytest.raises(HostUnreachable, match="refused"):
        r.connect()
    r = Remote(testbed["ssh"]["host"], 2, "labdeploy", known_hosts=known_hosts, use_agent=False)
    with pytest.raises(HostUnreachable):
        r.run(["true"])


def test_unreachable_host(known_hosts):
    # An address on the testbed's network where no machine answers: the kernel says "no route".
    r = Remote("10.250.0.77", 22, "labdeploy", known_hosts=known_hosts, use_agent=False, connect_timeout=20)
    with pytest.raises(HostUnreachable) as info:
        r.connect()
    assert info.value.hint


def test_dns_failure(known_hosts):
    r = Remote("no-such-server.invalid", 22, "labdeploy", known_hosts=known_hosts, use_agent=False)
    with pytest.raises(DNSFailure) as info:
        r.connect()
    assert "no-such-server.invalid" in str(info.value) and info.value.hint


def test_non_ssh_port_registry(testbed, known_hosts):
    host, port = testbed["registry"]["address"].split(":")
    r = Remote(host, int(port), "labdeploy", known_hosts=known_hosts, use_agent=False, connect_timeout=10)
    with pytest.raises(HostUnreachable, match="not an SSH server"):
        r.connect()
    with pytest.raises(HostUnreachable, match="not an SSH server"):
        r.fetch_host_key()
    with pytest.raises(HostUnreachable, match="not an SSH server"):
        r.trust_host_key("SHA256:" + "A" * 43)


@pytest.mark.parametrize("greeting", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b""])
def test_non_ssh_port_local_socket(known_hosts, greeting):
    """A listening socket that answers something else (or nothing at all) is not an SSH server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()
    conns: list = []

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = listener.accept()
            except OSError:
                continue
            conns.append(c)
            if greeting:
                c.sendall(greeting)
                c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = Remote("127.0.0.1", listener.getsockname()[1], "labdeploy", known_hosts=known_hosts,
                   use_agent=False, connect_timeout=3)
        with pytest.raises(HostUnreachable, match="not an SSH server"):
            r.connect()
    finally:
        stop.set()
        t.join(5)
        for c in conns:
            c.close()
        listener.close()


def test_connection_prefers_aes_gcm(remote):
    # GCM first: faster bulk transfers (exports, image layers) than paramiko's CTR + HMAC default.
    remote.run(["true"])
    assert remote._client.get_transport().remote_cipher == "aes128-gcm@openssh.com"


def test_key_exchange_is_a_modern_one_the_server_offers(testbed, known_hosts, caplog):
    # OpenSSH 10 puts the post-quantum mlkem768x25519-sha256 first; a paramiko that lacks it must
    # still agree on curve25519 (which OpenSSH 9 and 10 both offer), never fail or fall to old DH.
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    r = make_remote(testbed, known_hosts)
    try:
        r.connect()
        agreed = [rec.getMessage().split(": ", 1)[1] for rec in caplog.records if rec.getMessage().startswith("Kex: ")]
        offered = next(rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("kex algos:"))
    finally:
        r.close()
    assert agreed and agreed[0] in ("mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org")
    assert agreed[0] in offered
    if testbed["flavour"] == "trixie":  # OpenSSH 10.0
        assert offered.split(": ", 1)[1].startswith("mlkem768x25519-sha256")


class _FromAddress(Remote):
    """A Remote whose connections leave from another of this machine's addresses: the testbed
    exempts its usual one from OpenSSH's penalties (tests fail logins on purpose)."""

    source = ""

    def _open_socket(self):
        return socket.create_connection((self.host, self.port), timeout=self.connect_timeout,
                                        source_address=(self.source, 0))


def _outward_address() -> str:
    """This machine's address towards the outside (not NATed on the way to the testbed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # a UDP "connect" sends nothing; it only picks the route
        except OSError:
            pytest.skip("this machine has no outward address to log in from")
        return s.getsockname()[0]


def test_a_server_that_shuts_out_the_address_after_failed_logins_is_explained(testbed, known_hosts):
    if testbed["flavour"] != "trixie":
        pytest.skip("OpenSSH 9.8 and later penalise failed logins; the bookworm server has 9.2")
    s = testbed["ssh"]
    _FromAddress.source = _outward_address()
    refused = None
    for _ in range(12):  # each failed login adds 5 s of penalty; it is enforced from 15 s
        r = _FromAddress(s["host"], s["port"], s["user"], password="not-the-password", known_hosts=known_hosts,
                         use_agent=False, connect_timeout=10)
        try:
            r.connect()
        except AuthenticationFailed:
            continue
        except HostUnreachable as exc:
            refused = exc
            break
        finally:
            r.close()
    assert refused is not None, "the server never shut the address out"
    assert refused.code == "ssh.refused_early"
    assert "closed the connection before the SSH greeting" in refused.message
    assert "Wait a few minutes" in refused.hint and "not an SSH server" not in str(refused)
