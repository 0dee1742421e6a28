"""Servers behind a jump host: the socket a `Remote` talks SSH over when it can't connect directly.

* ProxyJump (a server setting, `Server.jump`, or `ProxyJump` in ~/.ssh/config): the jump host
  is a `Remote` of its own (its own host-key check against the same known_hosts, its own
  login, keepalives and errors); the server's connection runs inside one `direct-tcpip`
  channel of it, like `ssh -J`. Chains (`a,b`) are a jump host that has a jump host itself.
* ProxyCommand (from ~/.ssh/config only, never a setting): a local command whose stdin and
  stdout are the connection, run without a shell (see `ProxyCommandSocket`).

Each failure says which hop failed and what to do.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import shlex
import socket
import subprocess
import threading
from typing import Optional

import paramiko

from ..errors import ConnectTimeout, HostUnreachable, LabdeployError, RemoteError

# RFC 4254 section 5.1: why an SSH server refused to open a channel.
_PROHIBITED, _CONNECT_FAILED = 1, 2


def open_direct_tcpip(transport: paramiko.Transport, jump_label: str, host: str, port: int,
                      timeout: float) -> paramiko.Channel:
    """A channel from the jump host (`transport`) to host:port, as `ssh -J` opens it: the jump
    host makes the TCP connection, so host names resolve there (internal names work)."""
    try:
        return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
    except paramiko.ChannelException as exc:
        why = (exc.text or "").strip() or "no reason given"
        if exc.code == _PROHIBITED:
            raise RemoteError(
                f"The jump host {jump_label} refused to forward a connection to {host}:{port} ({why}).",
                "Its sshd does not allow TCP forwarding for your account (AllowTcpForwarding, PermitOpen): ask "
                "its administrator, or use another jump host.", code="ssh.jump.forwarding_refused") from None
        raise HostUnreachable(
            f"The jump host {jump_label} could not reach {host}:{port} ({why}).",
            "Check the server's address and SSH port as the jump host sees them (names resolve on the jump "
            "host; use the address the server has inside its network), and that the server's SSH service "
            "runs.", code="ssh.jump.target_unreachable") from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if "timeout" in str(exc).lower() or isinstance(exc, (socket.timeout, TimeoutError)):
            raise ConnectTimeout(
                f"The jump host {jump_label} did not connect to {host}:{port} within {timeout:.0f} s.",
                "Check the server's address and SSH port as the jump host sees them, that the server is up, and "
                "that no firewall between the jump host and the server blocks SSH.",
                code="ssh.jump.target_timeout") from None
        raise HostUnreachable(
            f"The connection to the jump host {jump_label} broke while opening the way to {host}:{port}: "
            f"{exc or type(exc).__name__}.", "Check your network connection and try again.") from None


class ProxyCommandSocket(paramiko.ProxyCommand):
    """`ProxyCommand` from ~/.ssh/config: the command's stdin and stdout are the connection.

    paramiko's own class, with three fixes: the command's end is an end of the connection
    (paramiko's keeps reading an ended command until the time runs out), its stderr is kept
    (the last lines go into the error) instead of filling a pipe nobody reads, and closing
    waits for it. Like paramiko's, it runs the command without a shell: the line is split
    as a shell would split words, but pipes, `&&`, redirections and variables are not
    interpreted (wrap the line in `sh -c '...'` for those); `%h`, `%p`, `%r` and `~` are
    expanded by paramiko's config reader.
    """

    STDERR_LINES = 10

    def __init__(self, command_line: str) -> None:  # noqa: super().__init__ would start the command its own way
        self.cmd = shlex.split(command_line)
        self.timeout = None
        self.stderr_tail: collections.deque = collections.deque(maxlen=self.STDERR_LINES)
        self.process = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, bufsize=0)
        self._stderr_reader = threading.Thread(target=self._keep_stderr, daemon=True,
                                               name="labdeploy-proxycommand-stderr")
        self._stderr_reader.start()

    def _keep_stderr(self) -> None:
        with contextlib.suppress(Exception):
            for line in self.process.stderr:
                self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    def send(self, content) -> int:
        try:
            written = self.process.stdin.write(content)
        except (OSError, ValueError) as exc:  # the command ended: the connection is gone
            raise EOFError(f"the ProxyCommand ended ({exc})") from None
        return len(content) if written is None else written

    def recv(self, size: int) -> bytes:
        fd = self.process.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], self.timeout)
        if not ready:
            raise socket.timeout()
        return os.read(fd, size)  # b"" when the command ended: paramiko reads that as a closed connection

    def close(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(Exception):
                pipe.close()
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=2)

    def failure(self) -> str:
        """What the command said or how it ended ('' while it runs without a word)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)  # it is ending: let it finish saying why
        if self.process.poll() is not None:
            self._stderr_reader.join(timeout=1)
        said = " / ".join(line for line in self.stderr_tail if line)
        code = self.process.poll()
        ended = f"it exited with status {code}" if code is not None else ""
        return "; ".join(p for p in (ended, f"it said: {said}" if said else "") if p)


def start_proxy_command(command_line: str, alias: str, config: str) -> ProxyCommandSocket:
    try:
        return ProxyCommandSocket(command_line)
    except (OSError, ValueError) as exc:
        raise HostUnreachable(
            f"The ProxyCommand for {alias} in {config} could not be started ({exc}): {command_line}",
            "Check that line in your SSH config: labdeploy runs the command without a shell, so a pipe, '&&' or "
            "a redirection needs `sh -c '...'` around it.", code="ssh.proxy_command.failed") from None


def proxy_command_failed(sock: ProxyCommandSocket, alias: str, config: str, host: str, port: int,
                         exc: BaseException) -> LabdeployError:
    """The error for a ProxyCommand connection that ended before SSH was set up."""
    said = sock.failure()
    return HostUnreachable(
        f"The ProxyCommand for {alias} in {config} did not lead to an SSH server at {host}:{port}"
        + (f" ({said})." if said else f" ({exc or type(exc).__name__})."),
        f"Run the command by hand to see what it does: {shlex.join(sock.cmd)}. labdeploy runs it without a "
        "shell (a pipe, '&&' or a redirection needs `sh -c '...'`).", code="ssh.proxy_command.failed")
