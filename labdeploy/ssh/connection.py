"""The SSH connection of a `Remote` and the commands run over it.

One paramiko transport per server, reused for everything: commands (one channel each), SFTP,
tunnels. It reconnects by itself after a drop, notices a silently dead link (keepalives that
want an answer), and explains every failure to connect in the researcher's words. Commands
are argv lists, quoted here; secrets travel on stdin, never on the command line.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Sequence, TypeVar, Union

import paramiko

from .. import names
from ..errors import (AuthenticationFailed, CommandFailed, CommandTimeout, ConnectionLost, ConnectTimeout, DNSFailure, HostUnreachable, LabdeployError, Remedy, RemoteError, ValidationError)
from .hostkeys import KnownHosts, RaiseOnUnknown, changed_key_error
from .jump import open_direct_tcpip, proxy_command_failed, start_proxy_command

LineCallback = Callable[[str, str], None]  # (line, stream) with stream "stdout" or "stderr"
ChunkCallback = Callable[[bytes], None]

C = TypeVar("C", bound="Connection")

STDERR_TAIL = 20  # lines of stderr quoted in a CommandFailed message


def _default_home() -> Path:
    return Path(os.path.expanduser("~"))


@dataclass
class Result:
    argv: list
    exit_status: int
    stdout_bytes: bytes
    stderr_bytes: bytes

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


# What OpenSSH's listener writes before closing a connection it won't serve: 9.8+ shuts out an
# address for a while after failed logins (PerSourcePenalties).
_REFUSALS = (b"Not allowed at this time",)


def _refused_early(greeting: bytes) -> bool:
    # Silence alone is no proof: a TLS or HTTP service also closes on an SSH greeting.
    return greeting.startswith(_REFUSALS)


class _CountingSocket:
    """Wraps the TCP socket to count bytes on the wire (for benchmarks and tests)."""

    def __init__(self, sock: socket.socket, stats: dict) -> None:
        self._sock = sock
        self._stats = stats
        self.first = b""  # the start of what the server sent, to tell why a greeting failed

    def send(self, data, *args):
        n = self._sock.send(data, *args)
        self._stats["bytes_sent"] += n
        return n

    def sendall(self, data, *args):
        self._sock.sendall(data, *args)
        self._stats["bytes_sent"] += len(data)

    def recv(self, n, *args):
        data = self._sock.recv(n, *args)
        self._stats["bytes_received"] += len(data)
        if len(self.first) < 256:
            self.first += data[:256]
        return data

    def __getattr__(self, name):
        return getattr(self._sock, name)


# AES-GCM needs no separate MAC pass: measured about 1.6x the throughput of paramiko's default
# aes128-ctr + HMAC on the testbed, which matters for exports and image transfers.
_GCM_FIRST = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _fast_transport(sock, **kwargs) -> paramiko.Transport:
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    options.ciphers = tuple(c for c in _GCM_FIRST if c in options.ciphers) + tuple(
        c for c in options.ciphers if c not in _GCM_FIRST)
    return transport


class Connection:
    """One server, reached over one reused SSH connection: settings, connecting, reconnecting.

    `jump` ("user@bastion[:port]", hops separated by commas, or "none") reaches the server
    through jump hosts like `ssh -J`; without it, ~/.ssh/config's ProxyJump or ProxyCommand
    for the host applies. A jump host is a Remote of its own (`via`): same known_hosts, its own
    host-key check; it logs in with its IdentityFile from ~/.ssh/config, else
    `jump_key_filename`, else the server's key, and the ssh-agent (never a password).
    """

    def __init__(self, host: str, port: Optional[int] = None, user: Optional[str] = None, *,
                 key_filename: Optional[Union[str, os.PathLike]] = None, passphrase: Optional[str] = None,
                 password: Optional[str] = None, known_hosts: Optional[Union[str, os.PathLike]] = None,
                 ssh_config: Optional[Union[str, os.PathLike]] = None, use_agent: bool = True,
                 connect_timeout: float = 10.0, keepalive: int = 15, jump: Optional[str] = None,
                 jump_key_filename: Optional[Union[str, os.PathLike]] = None,
                 _on_the_way_to: Optional[str] = None, _default_key: Optional[str] = None,
                 _seen: tuple = ()) -> None:
        home = _default_home()
        self.alias = host
        self.ssh_config = Path(ssh_config) if ssh_config else home / ".ssh" / "config"
        cfg = self._read_ssh_config(self.ssh_config, host)
        # ssh compares host names in lower case (and writes them so in known_hosts).
        self.host = names.host(cfg.get("hostname", host)).lower()
        self.port = names.port(port if port is not None else cfg.get("port", 22))
        self.user = names.user(user or cfg.get("user") or os.environ.get("USER") or "root")
        if key_filename is None and cfg.get("identityfile"):
            candidates = [os.path.expanduser(p) for p in cfg["identityfile"]]
            existing = [p for p in candidates if os.path.exists(p)]
            key_filename = existing[0] if existing else None
        if key_filename is None:
            key_filename = _default_key  # a jump host without a key of its own: the server's
        self.key_filename = str(key_filename) if key_filename else None
        self.known_hosts = Path(known_hosts) if known_hosts else home / ".ssh" / "known_hosts"
        self.use_agent = use_agent
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        # Kept only in memory, only for this object's life; never logged. (A jump host keeps the
        # server's passphrase only when it uses the same key file.)
        self._passphrase = passphrase if not _on_the_way_to or self.key_filename == _default_key else None
        self._password = password
        self._client: Optional[paramiko.SSHClient] = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self._lock = threading.RLock()
        self._sftp_lock = threading.RLock()
        self._home: Optional[str] = None
        self._stats_lock = threading.Lock()
        self.stats = {"connections": 0, "commands": 0, "bytes_sent": 0, "bytes_received": 0}
        # The way there: directly, through a jump host (`via`, a Remote of its own) or a ProxyCommand.
        self.role = "jump host" if _on_the_way_to else "server"
        self.on_the_way_to = _on_the_way_to
        self.jump: Optional[str] = None  # the ProxyJump chain in use (a setting or ~/.ssh/config's)
        self.via: Optional["Connection"] = None
        self.proxy_command: Optional[str] = None  # ~/.ssh/config's ProxyCommand (never a setting)
        self._proxy = None  # the running ProxyCommand of the latest connection attempt
        self._set_up_the_way(jump, cfg, jump_key_filename, _seen)

    def __repr__(self) -> str:
        return f"Remote({self.user}@{self.host}:{self.port}" + (f" via {self.jump}" if self.jump else "") + ")"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}" + ("" if self.port == 22 else f":{self.port}")

    # ------------------------------------------------------------------ config

    @staticmethod
    def _read_ssh_config(path: Path, host: str) -> dict:
        if not path.exists():
            return {}
        try:
            config = paramiko.SSHConfig.from_path(str(path))
        except Exception as exc:  # a broken ~/.ssh/config should say so, not crash oddly
            raise LabdeployError(f"Your SSH config file {path} could not be read: {exc}",
                                 "Fix the line it complains about, or move the file away to test.",
                                 code="ssh.config_unreadable") from exc
        return config.lookup(host)

    def _set_up_the_way(self, jump: Optional[str], cfg: dict, jump_key_filename, seen: tuple) -> None:
        """ProxyJump from `jump` (as `ssh -J`, it overrides ~/.ssh/config), else from ~/.ssh/config,
        else ~/.ssh/config's ProxyCommand. Every hop is validated like a host before any use."""
        if jump is not None:
            chain = names.jump(jump)
        elif cfg.get("proxyjump"):
            try:
                chain = names.jump(cfg["proxyjump"])
            except ValidationError as exc:
                raise ValidationError(f"The ProxyJump line for {self.alias} in {self.ssh_config} can't be used: "
                                      f"{exc.message}", exc.plain_hint, code="invalid.jump") from None
        else:
            chain = names.JUMP_NONE
            if cfg.get("proxycommand"):
                self.proxy_command = cfg["proxycommand"]
        hops = names.jump_hops(chain)
        if not hops:
            return
        self.jump = chain
        *before, (hop_user, hop_host, hop_port) = hops
        seen = seen + (self.alias,)
        # ~/.ssh/config can send a jump host through itself (a `Host *` block with ProxyJump);
        # a chain given as a setting is finite, and may name one host twice.
        circle = jump is None and hop_host in seen
        if circle or len(seen) + len(before) > names.JUMP_MAX_HOPS:
            raise LabdeployError(
                f"The jump hosts on the way to {self.alias} go round in a circle or are more than "
                f"{names.JUMP_MAX_HOPS} deep ({' -> '.join(seen + (hop_host,))}).",
                f"Check the ProxyJump lines in {self.ssh_config}: a `Host *` block with ProxyJump applies to the jump "
                "host too; add `ProxyJump none` to the jump host's own Host block.", code="ssh.jump.loop")
        default_key = str(jump_key_filename) if jump_key_filename else self.key_filename
        self.via = type(self)(
            hop_host, hop_port, hop_user, known_hosts=self.known_hosts, ssh_config=self.ssh_config, use_agent=True,
            connect_timeout=self.connect_timeout, keepalive=self.keepalive,
            # The passphrase goes with the key it was given for; a jump host that has an
            # IdentityFile of its own in ~/.ssh/config drops it (see __init__).
            passphrase=self._passphrase,
            jump=",".join(names.jump_hop_text(*hop) for hop in before) if before else None,
            jump_key_filename=jump_key_filename, _default_key=default_key,
            _on_the_way_to=self.host if self.port == 22 else f"{self.host}:{self.port}", _seen=seen)

    @property
    def _way(self) -> str:
        """' (the jump host on the way to lab.example.org)' in a jump host's messages, else ''."""
        return f" (the jump host on the way to {self.on_the_way_to})" if self.on_the_way_to else ""

    # ------------------------------------------------------------------ connecting

    def _open_socket(self):
        """The byte stream SSH runs over: a TCP connection, a channel through the jump host, or a
        ProxyCommand's stdin and stdout."""
        if self.via is not None:
            # Connects (or reconnects) the jump host first; its failures name it.
            return open_direct_tcpip(self.via._transport(), self.via.label, self.host, self.port,
                                     self.connect_timeout)
        if self.proxy_command:
            self._proxy = start_proxy_command(self.proxy_command, self.alias, str(self.ssh_config))
            return self._proxy
        noun = self.role
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except socket.gaierror as exc:
            raise DNSFailure(f"The {noun} name {self.host!r} could not be found ({exc.strerror}){self._way}.",
                             f"Check the spelling of the host name, or use the {noun}'s IP address.") from exc
        except ConnectionRefusedError as exc:
            raise HostUnreachable(f"{self.host} refused the connection on port {self.port}{self._way}.",
                                  f"Check the port (SSH normally uses 22) and that the {noun}'s SSH service runs.") from exc
        except (socket.timeout, TimeoutError) as exc:
            raise ConnectTimeout(f"No answer from {self.host}:{self.port} within {self.connect_timeout:.0f} s{self._way}.",
                                 f"Check the address and port, that the {noun} is up, and that no firewall blocks SSH.") from exc
        except OSError as exc:
            raise HostUnreachable(f"Can't reach {self.host}:{self.port}{self._way}: {exc.strerror or exc}.",
                                  f"Check your network connection and the {noun}'s address.") from exc
        return sock

    def connect(self: C) -> C:
        """Connect (or reconnect) if not connected. Idempotent and thread-safe."""
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return self
                self._drop()
            client = self._new_client()
            sock = _CountingSocket(self._open_socket(), self.stats)
            try:
                client.connect(
                    self.host, port=self.port, username=self.user, key_filename=self.key_filename,
                    passphrase=self._passphrase, password=self._password, sock=sock,
                    allow_agent=self.use_agent, look_for_keys=self.key_filename is None and self._password is None,
                    timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                    auth_timeout=self.connect_timeout, transport_factory=_fast_transport)
            except LabdeployError:  # UnknownHostKey, or a revoked key: refused before logging in
                client.close()
                raise
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise changed_key_error(self.host, self.port, self.known_hosts, exc.key, exc.expected_key, self.role,
                                        self.on_the_way_to) from None
            except (paramiko.SSHException, OSError, EOFError) as exc:  # EOFError: a ProxyCommand that ended
                raise self._login_failed(client, exc, sock.first) from exc
            transport = client.get_transport()
            transport.set_keepalive(self.keepalive)
            self._watch_liveness(transport)
            self._client = client
            self._count("connections")
        return self

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        # Into the client's in-memory key table (it has no file name, so paramiko never
        # writes known_hosts itself).
        known = client.get_host_keys()
        for name, by_type in KnownHosts(self.known_hosts).read().items():
            for key_type, key in by_type.items():
                known.add(name, key_type, key)
        client.set_missing_host_key_policy(RaiseOnUnknown(self.port, self.known_hosts, self.role, self.on_the_way_to))
        if self.key_filename and not os.access(self.key_filename, os.R_OK):
            raise AuthenticationFailed(f"The key file {self.key_filename} does not exist or can't be read.",
                                       code="ssh.key.missing", remedy=Remedy("ssh.key.make"))
        return client

    def _login_failed(self, client: paramiko.SSHClient, exc: BaseException, greeting: bytes = b"") -> LabdeployError:
        """Close the half-made connection and say why logging in failed, in the user's words.
        `greeting`: the start of what the server sent."""
        transport = client.get_transport()
        spoke_ssh = bool(transport is not None and getattr(transport, "remote_version", ""))
        client.close()
        way, noun = self._way, self.role
        if isinstance(exc, paramiko.PasswordRequiredException):
            return AuthenticationFailed(
                f"The key {self.key_filename} is protected by a passphrase{way}.",
                "Give the passphrase, or add the key to your ssh-agent first (`ssh-add KEY`).")
        if isinstance(exc, paramiko.AuthenticationException):
            how = "password" if self._password else "key"
            if self.on_the_way_to:
                return AuthenticationFailed(
                    f"The jump host {self.host} refused to log in {self.user} with your key or ssh-agent{way}.",
                    f"Check the user name for the jump host (user@{self.host}) and that your public key is in "
                    f"~/.ssh/authorized_keys there (`ssh-copy-id {self.user}@{self.host}`, or ask its administrator); "
                    "a jump host's own key can be named with IdentityFile in ~/.ssh/config. labdeploy logs in to jump "
                    "hosts with a key or the ssh-agent only.", code="ssh.jump.auth")
            return AuthenticationFailed(
                f"The server {self.host} refused to log in {self.user} with that {how}.",
                "" if how == "key" else "Check the user name and password (passwords are case-sensitive).",
                remedy=Remedy("ssh.key.copy", host=self.host, user=self.user) if how == "key" else None)
        if self._proxy is not None and not spoke_ssh:
            return proxy_command_failed(self._proxy, self.alias, str(self.ssh_config), self.host, self.port, exc)
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return ConnectTimeout(f"{self.host}:{self.port}{way} accepted the connection but did not answer in time.",
                                  f"The {noun} may be overloaded; try again in a minute.")
        if isinstance(exc, OSError):
            return HostUnreachable(f"The connection to {self.host}:{self.port}{way} broke while logging in: {exc}.",
                                   "Check your network connection and try again.")
        if "no authentication methods available" in str(exc).lower():
            return AuthenticationFailed(
                f"No way to log in to {self.host}{way} as {self.user}: no key, no ssh-agent and no password "
                "was given.", code="ssh.auth.no_method", remedy=Remedy("ssh.login_method"))
        if _refused_early(greeting) and not isinstance(exc, (socket.timeout, TimeoutError)):
            said = greeting.decode("ascii", "replace").strip()
            return HostUnreachable(
                f"{self.host}:{self.port}{way} closed the connection before the SSH greeting (it said: {said!r}).",
                "The SSH server is refusing new connections from your address for now: OpenSSH 9.8 and "
                "later do this for a while after failed logins. Wait a few minutes and try again; if it "
                "persists, ask the server's administrator.",
                code="ssh.refused_early")
        if "banner" in str(exc).lower() or not spoke_ssh:
            return HostUnreachable(
                f"Something answers on {self.host}:{self.port}{way}, but it is not an SSH server.",
                "Check the port number: SSH normally uses 22.")
        return RemoteError(f"SSH to {self.host}:{self.port}{way} failed: {exc}",
                           f"Try again; if it persists, check the {noun}'s SSH service.", code="ssh.failed")

    KEEPALIVE_MISSES = 3  # like ssh's ServerAliveCountMax

    def _watch_liveness(self, transport: paramiko.Transport) -> None:
        """Every `keepalive` seconds ask the server for an answer (like ssh's ServerAliveInterval).
        paramiko's own keepalive wants no answer, so a connection that died silently would hang
        a running command for as long as TCP keeps retrying; after KEEPALIVE_MISSES intervals
        without an answer the connection is closed, and the command raises ConnectionLost."""
        if not self.keepalive:
            return

        def ask(answered: threading.Event) -> None:
            with contextlib.suppress(Exception):
                transport.global_request("keepalive@openssh.com", wait=True)
            answered.set()

        def watch() -> None:
            while transport.is_active():
                time.sleep(self.keepalive)
                if not transport.is_active():
                    return
                answered = threading.Event()
                threading.Thread(target=ask, args=(answered,), daemon=True,
                                 name="labdeploy-keepalive-ask").start()
                if not answered.wait(self.keepalive * self.KEEPALIVE_MISSES):
                    with contextlib.suppress(Exception):
                        transport.close()
                    return

        threading.Thread(target=watch, daemon=True, name=f"labdeploy-keepalive-{self.host}").start()

    def _drop(self) -> None:
        with contextlib.suppress(Exception):
            if self._sftp is not None:
                self._sftp.close()
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.close()
        self._sftp = None
        self._client = None
        if self.via is not None:  # the jump host serves only this connection: a reconnect goes through it anew
            with contextlib.suppress(Exception):
                self.via.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self: C) -> C:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        client = self._client
        transport = client.get_transport() if client else None
        return bool(transport and transport.is_active())

    def _transport(self) -> paramiko.Transport:
        with self._lock:  # connect and read the client together: another thread may drop it
            self.connect()
            transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"The connection to {self.host} is closed.", "Try again.")
        return transport

    def _reconnect_after(self, dead: paramiko.Transport) -> paramiko.Transport:
        """Reconnect after `dead` failed, unless another thread has already replaced it (then
        its fresh connection is used: dropping it would break that thread's commands)."""
        with self._lock:
            current = self._client.get_transport() if self._client else None
            if current is dead:
                self._drop()
            return self._transport()

    @staticmethod
    def _died(transport: paramiko.Transport, wait: float = 2.0) -> bool:
        """True when the transport is dead, or dies within `wait` seconds. paramiko closes the
        channels of a dying transport a moment before it marks the transport inactive."""
        deadline = time.monotonic() + wait
        while transport.is_active():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n


class Commands:
    """Running commands on the connection (a mixin of `Remote`; uses `Connection`'s
    `_transport`, `_reconnect_after`, `_died` and `_count`)."""

    @staticmethod
    def quote(argv: Sequence[str]) -> str:
        return shlex.join([str(a) for a in argv])

    def run(self, argv: Sequence[str], *, stdin: Union[bytes, str, BinaryIO, None] = None,
            timeout: Optional[float] = None, on_line: Optional[LineCallback] = None,
            on_stdout: Optional[ChunkCallback] = None, check: bool = True,
            cwd: Optional[str] = None, stop: Optional[threading.Event] = None) -> Result:
        """Run a command given as an argv list. Output lines go to `on_line` as they arrive;
        with `on_stdout`, raw stdout chunks go there instead of being kept.

        `stop` (an Event) ends a long-running command early, e.g. a log follow.
        """
        if isinstance(argv, str):
            raise TypeError("run() takes an argv list; use ['sh', '-c', script] for a shell script")
        command = self.quote(argv)
        if cwd:
            command = f"cd {shlex.quote(cwd)} && {command}"
        if isinstance(stdin, str):
            stdin = stdin.encode()
        chan = self._open_session(argv)
        transport = chan.get_transport()
        self._count("commands")
        stdin_failure: list = []
        try:
            self._exec(chan, transport, command, argv)
            feeder = None
            if stdin is not None:
                feeder = threading.Thread(target=self._feed_stdin, args=(chan, stdin, stdin_failure), daemon=True)
                feeder.start()
            else:
                chan.shutdown_write()
            try:
                out, err = self._pump(chan, argv, timeout, on_line, on_stdout, stop)
            except (EOFError, OSError, paramiko.SSHException) as exc:
                # paramiko's recv() can itself fail on a dead link (it may answer with a window
                # adjust): that is a dropped connection, said as such.
                if self._died(transport, 2.0):
                    raise self._lost(argv) from exc
                raise
            if stop is not None and stop.is_set() and not chan.exit_status_ready():
                status = -1
            else:
                status = chan.recv_exit_status()
            if feeder is not None:
                feeder.join(timeout=1)
        finally:
            if not chan.exit_status_ready():
                # Interrupted here (timeout, stop, Ctrl-C, a callback raised): stop it there too.
                self._stop_remote(chan)
            chan.close()
        if stdin_failure:
            raise stdin_failure[0]  # reading our own input failed; the command was stopped
        stopped = stop is not None and stop.is_set()
        if status == -1 and not stopped:
            # No exit status: either the connection died, or a signal killed the command (the
            # server then closes the channel properly, with an EOF first).
            if self._died(transport, 0.0 if chan.eof_received else 2.0):
                raise self._lost(argv)
        result = Result(list(argv), status, out, err)
        if check and status != 0 and not stopped:
            tail = "\n".join(result.stderr.strip().splitlines()[-STDERR_TAIL:]) or result.stdout.strip()[-2000:]
            how = "it was killed by a signal" if status == -1 else f"exit status {status}"
            raise CommandFailed(
                f"`{self._short(argv)}` failed on {self.host} ({how}):\n{tail}",
                "Read the error above; it comes from the server.",
                argv=list(argv), exit_status=status, stdout=result.stdout, stderr=result.stderr)
        return result

    def _lost(self, argv) -> ConnectionLost:
        return ConnectionLost(f"The connection to {self.host} dropped while running `{self._short(argv)}`.",
                              "Check the network and run it again; labdeploy reconnects by itself.")

    SESSION_WAIT = 30.0  # how long a command waits for a free session slot on the server

    def _open_session(self, argv) -> paramiko.Channel:
        transport = self._transport()
        reconnected = False
        delay, deadline = 0.05, time.monotonic() + self.SESSION_WAIT
        while True:
            try:
                return transport.open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if "timeout" in str(exc).lower() and transport.is_active():
                    # No answer at all within connect_timeout: the connection is silently dead
                    # (network changed, laptop slept, NAT forgot it). Close it and reconnect.
                    with contextlib.suppress(Exception):
                        transport.close()
                if not self._died(transport, 0.5):
                    # The connection is fine but the server refuses one more session at a time
                    # (sshd's MaxSessions, 10 by default): wait for a running command to end.
                    # (paramiko keeps one "last error" per connection, so under concurrency the
                    # refusal may arrive as a plain SSHException rather than a ChannelException.)
                    if time.monotonic() > deadline:
                        raise RemoteError(
                            f"The server {self.host} refused to start `{self._short(argv)}`: {exc}.",
                            "Too many commands run at once on this connection (sshd's MaxSessions); "
                            "wait for some to finish, or raise MaxSessions in the server's sshd_config.",
                            code="ssh.max_sessions") from exc
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                if reconnected:
                    raise ConnectionLost(f"Could not open a session on {self.host}: {exc}",
                                         "Check the network and try again.") from exc
                # The connection died since it was last used (nothing ran yet): reconnect once.
                transport = self._reconnect_after(transport)
                reconnected = True

    def _exec(self, chan: paramiko.Channel, transport: paramiko.Transport, command: str, argv) -> None:
        """chan.exec_command, bounded: paramiko waits for the server's answer without a time limit,
        so a connection that silently died right after the session opened would hang here."""
        watchdog = threading.Timer(self.connect_timeout, transport.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if self._died(transport, 0.5):
                raise ConnectionLost(
                    f"The connection to {self.host} dropped while starting `{self._short(argv)}`.",
                    "Check the network and run it again; labdeploy reconnects by itself.") from exc
            raise RemoteError(f"The server {self.host} refused to run `{self._short(argv)}`: {exc}",
                              "Check the server's sshd configuration (e.g. a ForceCommand).",
                              code="remote.command.refused") from exc
        finally:
            watchdog.cancel()

    @staticmethod
    def _signal(chan: paramiko.Channel, name: str) -> None:
        """Send a signal to the command's process group (RFC 4254 "signal"; OpenSSH >= 7.9
        delivers it with killpg, so children of `sh -c` get it too)."""
        with contextlib.suppress(Exception):
            m = paramiko.Message()
            m.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
            m.add_int(chan.remote_chanid)
            m.add_string("signal")
            m.add_boolean(False)
            m.add_string(name)
            chan.get_transport()._send_user_message(m)

    @classmethod
    def _stop_remote(cls, chan: paramiko.Channel, grace: float = 2.0) -> None:
        if chan.closed or not chan.get_transport().is_active():
            return
        cls._signal(chan, "TERM")
        if not chan.status_event.wait(grace):
            cls._signal(chan, "KILL")
            chan.status_event.wait(grace)

    @staticmethod
    def _short(argv: Sequence[str], limit: int = 120) -> str:
        text = shlex.join([str(a) for a in argv])
        return text if len(text) <= limit else text[: limit - 3] + "..."

    @staticmethod
    def _send_all(chan: paramiko.Channel, data) -> None:
        """sendall that waits for window space, and stops when the channel closes. (The channel is
        blocking now; the socket.timeout branch stays as a guard should it ever be non-blocking.)"""
        view = memoryview(data)
        while view:
            try:
                sent = chan.send(view)
            except socket.timeout:
                if chan.closed or not chan.get_transport().is_active():
                    raise EOFError("channel closed") from None
                time.sleep(0.002)
                continue
            if sent == 0:  # the channel was closed
                raise EOFError("channel closed")
            view = view[sent:]

    @classmethod
    def _feed_stdin(cls, chan: paramiko.Channel, stdin, failure: Optional[list] = None) -> None:
        """Send stdin, then EOF. If reading the *local* input fails, the command is stopped
        instead of getting an EOF: it must not finish its work on half of its input."""
        if isinstance(stdin, (bytes, bytearray, memoryview)):
            view = memoryview(stdin)
            chunks = (view[i:i + 32768] for i in range(0, len(view), 32768))
        else:
            def read_chunks():
                while True:
                    chunk = stdin.read(65536)
                    if not chunk:
                        return
                    yield chunk.encode() if isinstance(chunk, str) else chunk
            chunks = read_chunks()
        try:
            while True:
                try:
                    chunk = next(chunks, None)
                except BaseException as exc:
                    if failure is not None:
                        failure.append(exc)
                    cls._signal(chan, "TERM")
                    return
                if chunk is None:
                    break
                cls._send_all(chan, chunk)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the command stopped reading; its exit status tells the story
        with contextlib.suppress(Exception):
            chan.shutdown_write()


    def _pump(self, chan: paramiko.Channel, argv, timeout, on_line, on_stdout, stop):
        output = _Output(on_line, on_stdout)
        deadline = time.monotonic() + timeout if timeout else None
        # The channel stays blocking: recv() is only called when data is ready, and the stdin
        # feeder thread needs send() to wait for window space.
        while True:
            got = output.drain(chan)
            if chan.closed or (chan.eof_received and chan.exit_status_ready()
                               and not chan.recv_ready() and not chan.recv_stderr_ready()):
                break
            if not chan.get_transport().is_active():
                break
            if stop is not None and stop.is_set():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise CommandTimeout(f"`{self._short(argv)}` took longer than {timeout:.0f} s on {self.host}.",
                                     "It was stopped. Try again, or allow more time if the work is large.")
            if not got:
                select.select([chan], [], [], 0.05)
        output.drain(chan)  # whatever is still buffered after the close
        return output.finish()


class _Output:
    """A command's output as it arrives: kept (stdout goes to `on_stdout` instead when given),
    and cut into lines for `on_line`."""

    def __init__(self, on_line: Optional[LineCallback], on_stdout: Optional[ChunkCallback]) -> None:
        self.on_line, self.on_stdout = on_line, on_stdout
        self.chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self.partial = {"stdout": b"", "stderr": b""}  # a line not ended yet

    def drain(self, chan: paramiko.Channel) -> bool:
        """Take what the channel has ready now; True if there was anything."""
        got = False
        while chan.recv_ready():
            data = chan.recv(65536)
            if not data:
                break
            got = True
            if self.on_stdout is not None:
                self.on_stdout(data)
            else:
                self._add("stdout", data)
        while chan.recv_stderr_ready():
            data = chan.recv_stderr(65536)
            if not data:
                break
            got = True
            self._add("stderr", data)
        return got

    def _add(self, stream: str, data: bytes) -> None:
        self.chunks[stream].append(data)
        self._lines(stream, data)

    def _lines(self, stream: str, data: bytes, final: bool = False) -> None:
        if self.on_line is None:
            return
        *lines, rest = (self.partial[stream] + data).split(b"\n")
        if final and rest:
            lines.append(rest)
            rest = b""
        self.partial[stream] = rest
        for line in lines:
            self.on_line(line.rstrip(b"\r").decode("utf-8", "replace"), stream)

    def finish(self) -> tuple[bytes, bytes]:
        """(stdout, stderr) as kept; the last unended lines go to `on_line`."""
        if self.on_stdout is None:
            self._lines("stdout", b"", final=True)
        self._lines("stderr", b"", final=True)
        return b"".join(self.chunks["stdout"]), b"".join(self.chunks["stderr"])
