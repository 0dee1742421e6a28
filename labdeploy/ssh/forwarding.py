"""Port forwarding over the connection (`ssh -L`): a local port whose every connection becomes
a "direct-tcpip" channel to a host and port as seen from the server.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Callable, Iterator, Optional

import paramiko

from ..errors import LabdeployError

ChannelOpener = Callable[[tuple], paramiko.Channel]  # (origin address) -> a channel to the target


def _relay(client: socket.socket, chan: paramiko.Channel, closing: threading.Event) -> None:
    """Copy both ways until both ends are done or the tunnel closes. Each direction ends on its
    own (half-close), as with `ssh -L`: a client may send its request, shut down its side, and
    still read the whole answer."""
    upstream, downstream = True, True
    while not closing.is_set() and (upstream or downstream):
        watch = ([client] if upstream else []) + ([chan] if downstream else [])
        readable, _, _ = select.select(watch, [], [], 0.5)
        if client in readable:
            data = client.recv(65536)
            if data:
                chan.sendall(data)
            else:
                upstream = False
                chan.shutdown_write()
        if chan in readable:
            data = chan.recv(65536)
            if data:
                client.sendall(data)
            else:
                downstream = False
                client.shutdown(socket.SHUT_WR)
                if chan.closed:
                    return


def _listen(local_port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", local_port))
    except OSError as exc:
        listener.close()
        raise LabdeployError(f"The local port {local_port} can't be used for the tunnel: {exc.strerror or exc}.",
                             "Choose another local port, or leave it out to get a free one.",
                             code="tunnel.port_unusable") from exc
    listener.listen(16)
    return listener


class Tunnel:
    """A listening local port and its threads: one acceptor, one relay per connection."""

    def __init__(self, listener: socket.socket, open_channel: ChannelOpener) -> None:
        self.listener = listener
        self.port: int = listener.getsockname()[1]
        self._open_channel = open_channel
        self._closing = threading.Event()
        self._relays: list[threading.Thread] = []
        self._channels: list[paramiko.Channel] = []
        self._acceptor: Optional[threading.Thread] = None

    def start(self) -> "Tunnel":
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"labdeploy-forward-{self.port}")
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close every channel; waits up to 2 s per thread (they are daemons)."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout=2)
        for chan in self._channels:
            with contextlib.suppress(Exception):
                chan.close()
        for t in self._relays:
            t.join(timeout=2)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                readable, _, _ = select.select([self.listener], [], [], 0.2)
                if not readable:
                    continue
                client, _ = self.listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            t.start()
            self._relays.append(t)

    def _serve(self, client: socket.socket) -> None:
        try:
            chan = self._open_channel(client.getpeername())
        except Exception:  # target refused, connection gone: this client just gets closed
            client.close()
            return
        self._channels.append(chan)
        try:
            _relay(client, chan, self._closing)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            with contextlib.suppress(Exception):
                chan.close()
            with contextlib.suppress(Exception):
                client.close()


class Forwarding:
    """The tunnel part of `Remote` (uses `Connection._transport`)."""

    def open_tcp_channel(self, host: str, port: int, origin: tuple = ("127.0.0.1", 0),
                         timeout: Optional[float] = None) -> paramiko.Channel:
        """One "direct-tcpip" channel to host:port as seen from the server (what each forwarded
        connection uses). Raises paramiko.ChannelException when the server refuses it."""
        return self._transport().open_channel("direct-tcpip", (host, int(port)), origin, timeout=timeout)

    @contextlib.contextmanager
    def forward(self, remote_host: str, remote_port: int, local_port: int = 0) -> Iterator[int]:
        """Forward a local port to remote_host:remote_port as seen from the server.

        Yields the local port (on 127.0.0.1). Every connection to it becomes a channel on the
        one SSH transport.
        """
        self._transport()
        tunnel = Tunnel(_listen(local_port), lambda origin: self.open_tcp_channel(remote_host, remote_port, origin))
        tunnel.start()
        try:
            yield tunnel.port
        finally:
            tunnel.stop()
